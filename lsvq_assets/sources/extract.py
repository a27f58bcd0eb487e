"""Safe streaming extraction of wanted members from a ``.tar.gz`` (plain Python, no HTTP, no Dagster).

:func:`extract_members` reads the archive in one streaming pass with bounded memory, whatever the
archive or member size: the gzip layer is decompressed by :class:`Gunzip` in bounded steps (every
gzip member's CRC-32 and length trailer checked by zlib), the tar layer is read by :mod:`tarfile`
in stream mode. Only members named exactly like a wanted name (a leading ``./`` accepted) are
written, each to a hidden temp file beside its destination, hashed on the way; the temp files are
made durable together (one ``syncfs``, see :func:`~lsvq_assets.core.files.sync_files`) and renamed
into place only once the whole stream was read and verified, so a corrupt or truncated archive
(:class:`CorruptArchive`) never leaves a member behind. A gzip that checks out around a broken tar
is the archive as published: the members read before the damage are kept, the
other wanted ones fail with ``bad-archive: ...``.

Members that are absolute, hold ``..``, are links, devices or fifos, are larger than
``max_member_bytes`` or whose destination is not inside ``clips_root`` are never written; a wanted
name whose member is refused fails with ``unsafe-archive-member: <why>``, one absent from the
archive with ``missing-from-archive``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lsvq_assets.core.files import Writeback, sync_files, temp_beside
from lsvq_assets.net.stream import CHUNK_SIZE, write_all
from lsvq_assets.sources.gunzip import CorruptArchive, Gunzip

if TYPE_CHECKING:
    from _typeshed import SupportsRead

log = logging.getLogger(__name__)

__all__ = ["CorruptArchive", "Gunzip", "MemberResult", "extract_members"]


@dataclass(frozen=True)
class MemberResult:
    """What became of one wanted member: written (with its sha256 and size) or why not."""

    ok: bool
    sha256: str | None = None
    size: int | None = None
    reason: str | None = None


def member_problem(info: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why a member must not be written, or None."""
    name = info.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute-path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path-traversal"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    if not info.isreg():
        return f"not-a-regular-file (type {info.type!r})"
    if info.size > max_bytes:
        return f"too-large: {info.size} bytes > max_member_bytes {max_bytes}"
    return None


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _claimed_name(name: str) -> str:
    """The wanted name a (possibly hostile) member name points at, to blame a refusal on the right one."""
    parts: list[str] = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _inside(root: Path, dest: Path) -> bool:
    base = os.path.normpath(root)
    return os.path.normpath(dest).startswith(base + os.sep)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_member(member: BinaryIO, dest: Path, expected: int, made: set[Path]) -> tuple[str, str, int]:
    """Copy one member into a hidden temp file beside ``dest`` (synced later, with the others): (temp path, sha256, size).

    ``made``: the directories already made by this extraction.
    """
    if dest.parent not in made:
        dest.parent.mkdir(parents=True, exist_ok=True)
        made.add(dest.parent)
    fd, tmp = temp_beside(dest)
    done = False
    try:
        h = hashlib.sha256()
        size = 0
        writeback = Writeback(fd)
        while data := member.read(CHUNK_SIZE):
            h.update(data)
            write_all(fd, data)
            size += len(data)
            writeback.wrote(len(data))
        writeback.end()
        if size != expected:
            raise CorruptArchive(f"member {dest.name}: {size} of {expected} bytes")
        os.fchmod(fd, 0o644)
        done = True
        return tmp, h.hexdigest(), size
    finally:
        os.close(fd)
        if not done:
            _unlink(tmp)


def extract_members(
    fileobj: SupportsRead[bytes],
    wanted: Mapping[str, Path],
    clips_root: Path,
    *,
    max_member_bytes: int = 8 << 30,
    label: str = "archive",
) -> dict[str, MemberResult]:
    """Write the wanted members of the ``.tar.gz`` read from ``fileobj``: one result per wanted name.

    ``wanted`` maps a member name (``<folder>/<stem>.mp4``) to its destination, which must lie
    inside ``clips_root``. ``label`` names the archive in log lines. Raises
    :class:`CorruptArchive` when the gzip stream is not whole and valid, ``OSError`` for disk
    problems; in both cases nothing has been renamed into place.
    """
    staged: dict[str, tuple[str, Path, str, int]] = {}  # name -> (temp, dest, sha256, size)
    made: set[Path] = set()
    refused: dict[str, str] = {}
    tar_error: str | None = None
    try:
        gz = Gunzip(fileobj)
        try:
            with tarfile.open(fileobj=gz, mode="r|", bufsize=CHUNK_SIZE) as tar:  # type: ignore[call-overload]
                for info in tar:
                    if info.isdir():
                        continue
                    problem = member_problem(info, max_member_bytes)
                    if problem is not None:
                        claimed = _claimed_name(info.name)
                        if claimed in wanted:
                            refused[claimed] = f"unsafe-archive-member: {problem}"
                        log.warning("archive %s: refused member %r: %s", label, info.name, problem)
                        continue
                    name = _member_name(info.name)
                    dest = wanted.get(name)
                    if dest is None:
                        continue
                    if not _inside(clips_root, dest):
                        refused[name] = "unsafe-archive-member: outside-clips-dir"
                        continue
                    member = tar.extractfile(info)
                    assert member is not None  # a regular file
                    tmp, sha, size = _write_member(member, dest, info.size, made)
                    if name in staged:  # the same name twice: the last one wins, as with tar
                        _unlink(staged[name][0])
                    staged[name] = (tmp, dest, sha, size)
        except (tarfile.TarError, EOFError) as exc:
            # A broken tar inside a gzip that checks out is the archive as published (the bytes
            # arrived whole): permanent for the members not found before the damage. A gzip that
            # does not check out raises CorruptArchive from the drain below.
            tar_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        gz.drain()  # the end of the tar is not the end of the gzip: check its trailer too
        out: dict[str, MemberResult] = {}
        if tar_error is not None:
            log.warning("archive %s: the tar inside is broken (%s)", label, tar_error)
        for name, reason in refused.items():
            out[name] = MemberResult(False, reason=reason)
        sync_files(tmp for name, (tmp, _, _, size) in staged.items() if name not in refused and size)
        for name, (tmp, dest, sha, size) in staged.items():
            if name in refused:
                continue  # an unsafe member with this name too: write none of them
            if size == 0:
                out[name] = MemberResult(False, reason="empty-body")
                continue
            os.replace(tmp, dest)
            out[name] = MemberResult(True, sha, size)
        absent = "missing-from-archive" if tar_error is None else f"bad-archive: {tar_error}"[:300]
        for name in wanted:
            out.setdefault(name, MemberResult(False, reason=absent))
        return out
    finally:
        for tmp, *_ in staged.values():
            _unlink(tmp)
