"""extract_members: the pure, safe, streaming tar.gz extraction (no HTTP, archives built in memory)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from lsvq_assets.sources.extract import CorruptArchive, MemberResult, extract_members


def tar_gz(*members: tuple[str, bytes | None, bytes, str]) -> bytes:
    """A .tar.gz of (name, data, type, linkname) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, type_, linkname in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = type_, linkname, 0o644
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue(), mtime=0)


def reg(name: str, data: bytes) -> tuple[str, bytes | None, bytes, str]:
    return name, data, tarfile.REGTYPE, ""


def special(name: str, type_: bytes, linkname: str = "") -> tuple[str, bytes | None, bytes, str]:
    return name, None, type_, linkname


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()) if root.exists() else []


def extract(data: bytes, names: list[str], root: Path, **kw: object) -> dict[str, MemberResult]:
    return extract_members(io.BytesIO(data), {n: root / n for n in names}, root, **kw)  # type: ignore[arg-type]


def test_writes_only_the_wanted_members_with_their_hashes(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    data = tar_gz(reg("f/a.mp4", b"a" * 3000), reg("./f/b.mp4", b"bee"), reg("f/other.mp4", b"not wanted"))
    out = extract(data, ["f/a.mp4", "f/b.mp4", "f/absent.mp4"], root)
    assert out == {
        "f/a.mp4": MemberResult(True, hashlib.sha256(b"a" * 3000).hexdigest(), 3000),
        "f/b.mp4": MemberResult(True, hashlib.sha256(b"bee").hexdigest(), 3),
        "f/absent.mp4": MemberResult(False, reason="missing-from-archive"),
    }
    assert files_under(root) == ["f/a.mp4", "f/b.mp4"]
    assert (root / "f/b.mp4").read_bytes() == b"bee"


def test_the_last_of_two_members_with_one_name_wins_and_empty_members_fail(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    data = tar_gz(reg("f/a.mp4", b"first"), reg("f/a.mp4", b"second"), reg("f/empty.mp4", b""))
    out = extract(data, ["f/a.mp4", "f/empty.mp4"], root)
    assert out["f/a.mp4"].ok and (root / "f/a.mp4").read_bytes() == b"second"
    assert out["f/empty.mp4"] == MemberResult(False, reason="empty-body")
    assert files_under(root) == ["f/a.mp4"]


@pytest.mark.parametrize(
    ("member", "wanted", "reason"),
    [
        (reg("/f/a.mp4", b"x"), "f/a.mp4", "absolute-path"),
        (reg("f/../f/a.mp4", b"x"), "f/a.mp4", "path-traversal"),
        (special("f/a.mp4", tarfile.SYMTYPE, "/etc/passwd"), "f/a.mp4", "symlink"),
        (special("f/a.mp4", tarfile.LNKTYPE, "f/b.mp4"), "f/a.mp4", "hardlink"),
        (special("f/a.mp4", tarfile.CHRTYPE), "f/a.mp4", "device"),
        (special("f/a.mp4", tarfile.BLKTYPE), "f/a.mp4", "device"),
        (special("f/a.mp4", tarfile.FIFOTYPE), "f/a.mp4", "fifo"),
        (reg("f/a.mp4", b"x" * 101), "f/a.mp4", "too-large: 101 bytes > max_member_bytes 100"),
    ],
)
def test_unsafe_members_are_refused_and_blamed_on_the_name_they_claim(
    tmp_path: Path, member: tuple[str, bytes | None, bytes, str], wanted: str, reason: str
) -> None:
    root = tmp_path / "clips"
    out = extract(tar_gz(member), [wanted], root, max_member_bytes=100)
    assert out == {wanted: MemberResult(False, reason=f"unsafe-archive-member: {reason}")}
    assert files_under(tmp_path) == []


def test_a_refused_member_spoils_a_regular_one_of_the_same_name(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    data = tar_gz(special("f/a.mp4", tarfile.SYMTYPE, "/etc/passwd"), reg("f/a.mp4", b"innocent"))
    assert extract(data, ["f/a.mp4"], root)["f/a.mp4"].reason == "unsafe-archive-member: symlink"
    assert files_under(tmp_path) == []


def test_a_destination_outside_the_clips_root_is_never_written(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    data = tar_gz(reg("f/a.mp4", b"x"), reg("f/b.mp4", b"y"))
    wanted = {"f/a.mp4": root / ".." / "escape.mp4", "f/b.mp4": tmp_path / "elsewhere" / "b.mp4"}
    out = extract_members(io.BytesIO(data), wanted, root)
    assert {k: v.reason for k, v in out.items()} == {
        "f/a.mp4": "unsafe-archive-member: outside-clips-dir",
        "f/b.mp4": "unsafe-archive-member: outside-clips-dir",
    }
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "bad-crc", "not-gzip"])
def test_a_corrupt_gzip_raises_and_leaves_nothing(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "clips"
    data = bytearray(tar_gz(reg("f/a.mp4", b"a" * 5000), reg("f/b.mp4", b"b" * 5000)))
    if damage == "truncated":
        data = data[: len(data) - 12]
    elif damage == "bad-crc":
        data[-8] ^= 0xFF
    else:
        data = bytearray(b"<html>not an archive</html>")
    with pytest.raises(CorruptArchive):
        extract(bytes(data), ["f/a.mp4", "f/b.mp4"], root)
    assert files_under(tmp_path) == []  # no clip, no temp file


def test_a_broken_tar_in_a_valid_gzip_keeps_what_came_before(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, size in (("f/a.mp4", 1000), ("f/b.mp4", 5000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"z" * size))
    cut = gzip.compress(buf.getvalue()[: 512 + 1024 + 512 + 2048], mtime=0)  # ends inside b
    out = extract(cut, ["f/a.mp4", "f/b.mp4", "f/c.mp4"], root)
    assert out["f/a.mp4"].ok
    assert out["f/b.mp4"].reason == out["f/c.mp4"].reason == "bad-archive: ReadError: unexpected end of data"
    assert files_under(root) == ["f/a.mp4"]


def test_it_streams_from_any_file_object_read_in_small_pieces(tmp_path: Path) -> None:
    """No seek, no tell, no size: a pipe-like reader that returns a few bytes at a time is enough."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data, self._pos = data, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            chunk = self._data[self._pos : self._pos + min(n if n >= 0 else 1 << 30, 7)]
            self._pos += len(chunk)
            return chunk

    root = tmp_path / "clips"
    payload = bytes(range(256)) * 40
    out = extract_members(Trickle(tar_gz(reg("f/a.mp4", payload))), {"f/a.mp4": root / "f/a.mp4"}, root)  # type: ignore[arg-type]
    assert out["f/a.mp4"] == MemberResult(True, hashlib.sha256(payload).hexdigest(), len(payload))
