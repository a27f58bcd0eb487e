"""The storage root: a local directory or an object store (``s3://bucket/prefix``), one set of operations.

A *location* is a ``Path`` (local) or a URL string (``s3://…``, through fsspec and s3fs, configured
by the standard ``AWS_*`` variables; ``AWS_ENDPOINT_URL`` for S3-compatible stores). Clips, the
partitions' outputs and their fetch state live under the root; everything written appears whole or
not at all: locally a temp file renamed into place, on an object store a single PUT (or a multipart
upload, completed in one call) of bytes that are already complete and checked.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.files import atomic_path, atomic_write_bytes, sha256_file

Location = Union[Path, str]  # noqa: UP007 - a runtime alias, also imported by Python 3.10
CHUNK = 1 << 20


def is_remote(loc: Location) -> bool:
    return isinstance(loc, str) and "://" in loc


def location(text: str | Path) -> Location:
    """A setting's value as a location: a URL stays a string, anything else a local absolute path."""
    if isinstance(text, str) and "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("s3", "file", "memory"):
            raise UserError(f"storage URL {text!r}: only s3:// (or a local path) is supported.")
        return text.rstrip("/")
    return Path(text).expanduser().absolute()


def join(base: Location, *parts: str) -> Location:
    """``base`` / parts; a part never climbs out of ``base`` (callers pass checked relative paths)."""
    for part in parts:
        if part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"{part!r} would leave {base}")
    if is_remote(base):
        return posixpath.join(str(base), *parts)
    return Path(base).joinpath(*parts)


@functools.lru_cache(maxsize=8)
def _fs(protocol: str) -> Any:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with dagster
        raise UserError("an object-store storage root needs fsspec and s3fs: pip install 'lsvq_assets[s3]'.") from None
    try:
        # No listing cache: another host (or run) may have added objects since the last listing.
        return fsspec.filesystem(protocol, use_listings_cache=False) if protocol == "s3" else fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise UserError(f"{protocol}:// storage needs its fsspec driver ({exc}): pip install 'lsvq_assets[s3]'.") from None


# A process forked by the CLI (a partition worker) makes its own: fsspec's async filesystems refuse to
# be used across a fork (their event loop thread stays in the parent), and fsspec resets itself then.
os.register_at_fork(after_in_child=_fs.cache_clear)


def filesystem(loc: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without scheme) of a URL."""
    protocol, _, path = loc.partition("://")
    return _fs(protocol.lower()), path


def read_bytes(loc: Location) -> bytes:
    """The whole object; FileNotFoundError when it is not there."""
    if not is_remote(loc):
        return Path(loc).read_bytes()
    fs, path = filesystem(str(loc))
    return fs.cat_file(path)


def write_bytes(loc: Location, data: bytes) -> None:
    """Replace the object whole (local: temp file, fsync, rename; object store: one PUT)."""
    if not is_remote(loc):
        atomic_write_bytes(Path(loc), data)
        return
    fs, path = filesystem(str(loc))
    fs.pipe_file(path, data)


def exists(loc: Location) -> bool:
    if not is_remote(loc):
        return Path(loc).exists()
    fs, path = filesystem(str(loc))
    return fs.exists(path)


def remove(loc: Location) -> None:
    """Remove the object if it is there."""
    if not is_remote(loc):
        Path(loc).unlink(missing_ok=True)
        return
    fs, path = filesystem(str(loc))
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def put_file(local: Path, loc: Location) -> None:
    """Move a complete, checked local file to ``loc``: a rename locally, a streamed (multipart)
    upload to an object store, where the object appears only when the upload completes."""
    if not is_remote(loc):
        dest = Path(loc)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, dest)
        return
    fs, path = filesystem(str(loc))
    fs.put_file(str(local), path)
    fs.invalidate_cache(posixpath.dirname(path))


def get_file(loc: Location, local: Path) -> None:
    """Copy ``loc`` to a local file (streamed)."""
    if not is_remote(loc):
        with atomic_path(local) as tmp:
            with open(loc, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
        return
    fs, path = filesystem(str(loc))
    local.parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(local))


def sha256(loc: Location) -> tuple[str, int]:
    """(sha256, size) read in chunks: memory does not grow with the object's size."""
    if not is_remote(loc):
        return sha256_file(Path(loc))
    fs, path = filesystem(str(loc))
    h, size = hashlib.sha256(), 0
    with fs.open(path, "rb", block_size=8 * CHUNK, cache_type="none") as fh:
        while chunk := fh.read(8 * CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def listing(directory: Location) -> dict[str, tuple[int, str]]:
    """Every object under ``directory`` (recursively) as {relative path: (size, version)}; one
    listing. The version changes when the object is replaced (mtime locally, the ETag remotely)."""
    if not is_remote(directory):
        base = Path(directory)
        out: dict[str, tuple[int, str]] = {}
        for root, _, files in os.walk(base):
            for name in files:
                p = Path(root) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                out[p.relative_to(base).as_posix()] = (st.st_size, str(st.st_mtime_ns))
        return out
    fs, path = filesystem(str(directory))
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    prefix = path.rstrip("/") + "/"
    return {
        k[len(prefix) :]: (int(v.get("size") or 0), str(v.get("ETag") or v.get("LastModified") or ""))
        for k, v in found.items()
        if k.startswith(prefix)
    }


def sizes(directory: Location) -> dict[str, int]:
    """Every object under ``directory`` (recursively) as {relative path: size}; one listing."""
    return {k: size for k, (size, _) in listing(directory).items()}


def open_read(loc: Location) -> IO[bytes]:
    if not is_remote(loc):
        return open(loc, "rb")
    fs, path = filesystem(str(loc))
    return fs.open(path, "rb")


@contextlib.contextmanager
def publish(loc: Location, scratch: Path) -> Iterator[Path]:
    """A local staging file for ``loc``: written and checked inside the block, published whole only
    when the block succeeds (local: renamed into place; object store: uploaded), else removed."""
    if not is_remote(loc):
        with atomic_path(Path(loc)) as staged:
            yield staged
        return
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".publish.", suffix=".part", dir=scratch)
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        put_file(staged, loc)
    finally:
        staged.unlink(missing_ok=True)


def iter_lines(loc: Location) -> Iterator[str]:
    yield from read_bytes(loc).decode().splitlines()
