"""A local directory of already extracted clips (``<local_dir>/<folder>/<stem>.mp4``), no network.

Each clip is hashed and hard-linked into the clips directory when both are on the same file system
(no bytes copied: the clip and the file under ``local_dir`` are then the same inode, so editing
one edits the other), else copied through a hidden temp file, hashed on the way, fsynced and renamed
into place. Either way the clip appears whole or not at all.

Per clip: ``missing-from-local-dir`` (permanent) when absent, ``outside-local-dir`` when the path
resolves (through ``..`` or a symlink) outside ``local_dir``, ``not-a-regular-file`` for a directory,
fifo or device, ``empty-body`` for an empty file (as the URL source), ``unreadable-in-local-dir``
when permission is denied; other read or write errors are transient (``disk-error: ...``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.files import sha256_file, temp_beside
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.sources.base import ClipResult, ClipSource, OnResult

__all__ = ["LocalClipSource"]

_CHUNK = 1 << 20
# os.link failures after which a copy is the answer (other file system, no hard links there, ...).
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.ENOSYS})


class _ClipFailure(Exception):
    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.transient = reason, transient


def _os_failure(exc: OSError) -> _ClipFailure:
    text = exc.strerror or errno.errorcode.get(exc.errno or 0) or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _ClipFailure(f"unreadable-in-local-dir: {text}", transient=False)
    return _ClipFailure(f"disk-error: {text}", transient=True)


class LocalClipSource(ClipSource):
    """Clips from ``local_dir / row.src``. See the module docstring."""

    name = "local"

    def __init__(self, local_dir: Path, hardlink: bool = True, concurrency: int = 4) -> None:
        path = Path(local_dir).expanduser()
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise UserError(
                f"local clips directory {str(path)!r} {what}. With --source local, pass --local-clips DIR "
                f"(LSVQ_LOCAL_CLIPS) naming the directory that holds the extracted clips as <folder>/<stem>.mp4."
            )
        self.local_dir = path.absolute()
        self._root = path.resolve()
        self.hardlink = hardlink
        self.concurrency = max(1, concurrency)

    def fetch(self, rows: Sequence[ManifestRow], layout: Layout, on_result: OnResult) -> None:
        if self.concurrency == 1 or len(rows) < 2:
            for row in rows:
                self._one(row, layout, on_result)
            return
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="lsvq-local") as pool:
            for fut in [pool.submit(self._one, row, layout, on_result) for row in rows]:
                fut.result()

    def _one(self, row: ManifestRow, layout: Layout, on_result: OnResult) -> None:
        try:
            sha, size = self._place(row.src, layout)
        except _ClipFailure as exc:
            on_result(ClipResult(row.src, ok=False, reason=exc.reason, transient=exc.transient))
            return
        except OSError as exc:
            f = _os_failure(exc)
            on_result(ClipResult(row.src, ok=False, reason=f.reason, transient=f.transient))
            return
        on_result(ClipResult(row.src, ok=True, sha256=sha, size=size))

    def source_path(self, src: str) -> Path:
        """The resolved file for ``src`` under ``local_dir`` (raises _ClipFailure)."""
        path = self.local_dir / src
        try:
            resolved = path.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise _ClipFailure("missing-from-local-dir") from None
        except RuntimeError:  # Python < 3.13: a symlink loop
            raise _ClipFailure("not-a-regular-file: symlink loop") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _ClipFailure("not-a-regular-file: symlink loop") from None
            raise
        if not resolved.is_relative_to(self._root):
            raise _ClipFailure("outside-local-dir")
        return resolved

    def _place(self, src: str, layout: Layout) -> tuple[str, int]:
        try:
            dest = layout.clip_path(src)
        except ValueError:
            raise _ClipFailure("outside-clips-dir") from None
        source = self.source_path(src)
        st = source.stat()
        if not stat.S_ISREG(st.st_mode):
            raise _ClipFailure("not-a-regular-file")
        if st.st_size == 0:
            raise _ClipFailure("empty-body")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.hardlink:
            linked = self._link(source, dest)
            if linked is not None:
                return linked
        return self._copy(source, dest)

    @staticmethod
    def _link(source: Path, dest: Path) -> tuple[str, int] | None:
        """Hard-link ``source`` onto ``dest`` via a temp name; None when a copy is needed instead."""
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(source, dest):  # already linked (an earlier run)
                return sha256_file(dest)
        tmp = dest.with_name(f".{dest.name}.{os.urandom(6).hex()}.link")
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return None
            raise
        try:
            sha, size = sha256_file(tmp)  # the same inode as source: what lands is what is hashed
            if size == 0:
                raise _ClipFailure("empty-body")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return sha, size

    @staticmethod
    def _copy(source: Path, dest: Path) -> tuple[str, int]:
        fd, tmp = temp_beside(dest)
        done = False
        try:
            h = hashlib.sha256()
            size = 0
            with open(source, "rb") as src, os.fdopen(fd, "wb", closefd=False) as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                if size == 0:
                    raise _ClipFailure("empty-body")
                os.fchmod(fd, 0o644)
                os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
            done = True
            return h.hexdigest(), size
        finally:
            if fd >= 0:
                os.close(fd)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
