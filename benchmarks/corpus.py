"""The benchmark's corpus: real encoded clips in LSVQ-like folders, a PatchVQ-shaped CSV, archives.

Every clip is a real video (encoded in-process with PyAV through ``lsvq_assets_tests.clipgen``,
a different seed per clip, codecs cycling h264 / hevc / vp9 / mpeg4). ``clip_kb`` pads a clip up
to that size with an ISO-BMFF ``free`` box appended after ``moov``: ffprobe and PyAV skip
``free`` boxes, so the clip still probes to the same values, its bytes (and sha256) are unique,
and the transfer / hashing / disk cost is that of a clip of that size.

The big clip (the memory case) is the same trick at 1 GiB: a small real mp4 followed by a 1 GiB
``free`` box whose payload is a hole in a sparse file, so it costs no disk space or time to make
on the serving side; the client still downloads, hashes and writes all 1 GiB.

The corpus is cached under its directory by a key of its parameters, so a second ``make bench``
does not encode again.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lsvq_assets_tests.clipgen import ClipSpec, encode_clip
from lsvq_assets_tests.manifest_fixtures import FOLDERS, realistic_names, write_patchvq_csv

CODECS = ("h264", "h264", "h264", "hevc", "vp9", "mpeg4")  # mostly h264, like the real corpus
FREE_HEADER = 8  # 32-bit size + b"free"
VERSION = 3  # bump when what is generated changes


@dataclass(frozen=True)
class CorpusSpec:
    clips: int = 500
    clip_kb: int = 200  # each clip padded up to this size (0: as encoded, ~2-6 KB)
    folders: int = 1  # clips spread over this many LSVQ folders (one slice each)
    width: int = 64
    height: int = 48
    frames: int = 6
    interleave: bool = False  # manifest rows cycle through the folders (row i in folder i % folders)

    @property
    def key(self) -> str:
        key = f"v{VERSION}-n{self.clips}-kb{self.clip_kb}-f{self.folders}-{self.width}x{self.height}x{self.frames}"
        return key + ("-il" if self.interleave else "")


@dataclass
class Corpus:
    root: Path  # served tree: <folder>/<stem>.mp4
    csv: Path  # PatchVQ-shaped CSV (38 columns), names without suffix
    names: list[str]
    bytes: int
    spec: CorpusSpec

    def srcs(self) -> list[str]:
        return [n + ".mp4" for n in self.names]


def free_box(payload: int) -> bytes:
    """The header of a ``free`` box holding ``payload`` bytes (32-bit size: payload < 4 GiB - 8)."""
    if payload + FREE_HEADER >= 1 << 32:
        raise ValueError("free box too large for a 32-bit size")
    return struct.pack(">I4s", payload + FREE_HEADER, b"free")


def _folders(n: int) -> tuple[str, ...]:
    # ia-batch folders first: their names carry dots, runs of dots and stems ending in ".mp4".
    order = [f for f in FOLDERS if f.startswith("ia-")] + [f for f in FOLDERS if not f.startswith("ia-")]
    if not 1 <= n <= len(order):
        raise ValueError(f"folders must be 1..{len(order)}")
    return tuple(order[:n])


def interleave(names: list[str]) -> list[str]:
    """Round-robin over the folders (in their first-seen order): a, b, c, a, b, c, ...; a short folder drops out."""
    by: dict[str, list[str]] = {}
    for n in names:
        by.setdefault(n.split("/", 1)[0], []).append(n)
    queues = list(by.values())
    out: list[str] = []
    for i in range(max(map(len, queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def build_corpus(base: Path, spec: CorpusSpec, log=print) -> Corpus:
    """Generate (or reuse) the corpus for ``spec`` under ``base/<spec.key>``."""
    where = base / spec.key
    done = where / "corpus.json"
    if done.exists():
        meta = json.loads(done.read_text())
        return Corpus(where / "served", where / "LSVQ_whole_train.csv", meta["names"], meta["bytes"], spec)
    if where.exists():
        shutil.rmtree(where)
    started = time.monotonic()
    root = where / "served"
    names = realistic_names(spec.clips, _folders(spec.folders))
    if spec.interleave:
        names = interleave(names)
    total = 0
    for i, name in enumerate(names):
        path = root / (name + ".mp4")
        clip = ClipSpec(
            codec=CODECS[i % len(CODECS)], width=spec.width, height=spec.height, frames=spec.frames, seed=i
        )
        encode_clip(path, clip)
        size = path.stat().st_size
        pad = spec.clip_kb * 1024 - size - FREE_HEADER
        if pad > 0:
            # Unique, incompressible padding: the clip index, then pseudo-random bytes.
            with open(path, "ab") as fh:
                fh.write(free_box(pad))
                fh.write(i.to_bytes(8, "big") + os.urandom(pad - 8) if pad >= 8 else os.urandom(pad))
            size += FREE_HEADER + pad
        total += size
    csv = where / "LSVQ_whole_train.csv"
    write_patchvq_csv(csv, 0, names=names, columns=38)
    done.write_text(json.dumps({"spec": asdict(spec), "names": names, "bytes": total}))
    log(f"corpus: {len(names)} clips, {total / 1e6:.1f} MB in {time.monotonic() - started:.1f}s -> {where}")
    return Corpus(root, csv, names, total, spec)


def build_big_clip(base: Path, size_bytes: int = 1 << 30, log=print) -> Corpus:
    """One real mp4 padded to ``size_bytes`` with a sparse ``free`` box (served from a hole)."""
    where = base / f"v{VERSION}-big-{size_bytes}"
    done = where / "corpus.json"
    name = "ia-batch1/big_clip"
    if not done.exists():
        if where.exists():
            shutil.rmtree(where)
        path = where / "served" / (name + ".mp4")
        encode_clip(path, ClipSpec(seed=424242, width=320, height=240, frames=30))
        head = path.stat().st_size
        payload = size_bytes - head - FREE_HEADER
        with open(path, "ab") as fh:
            fh.write(free_box(payload))
            fh.truncate(size_bytes)  # the payload is a hole: zeros, no disk blocks
        # The CLI refuses a manifest under --min-csv-rows (passed as 1 here).
        write_patchvq_csv(where / "LSVQ_whole_train.csv", 0, names=[name], columns=38)
        done.write_text(json.dumps({"names": [name], "bytes": size_bytes}))
    spec = CorpusSpec(clips=1, clip_kb=size_bytes // 1024, folders=1)
    return Corpus(where / "served", where / "LSVQ_whole_train.csv", [name], size_bytes, spec)


def build_archives(corpus: Corpus, dest: Path, log=print) -> Path:
    """``<folder>.tar.gz`` of each folder's clips (members ``<folder>/<stem>.mp4``, like the mirror)."""
    stamp = dest / ".built"
    if stamp.exists() and stamp.read_text() == corpus.spec.key:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    started = time.monotonic()
    by_folder: dict[str, list[str]] = {}
    for src in corpus.srcs():
        by_folder.setdefault(src.split("/", 1)[0], []).append(src)
    for folder, srcs in by_folder.items():
        # compresslevel 1: the padding is random (incompressible), level 9 only costs time here.
        with tarfile.open(dest / f"{folder}.tar.gz", "w:gz", compresslevel=1) as tar:
            for src in srcs:
                tar.add(corpus.root / src, arcname=src, recursive=False)
    stamp.write_text(corpus.spec.key)
    log(f"archives: {len(by_folder)} folder archive(s) in {time.monotonic() - started:.1f}s -> {dest}")
    return dest
