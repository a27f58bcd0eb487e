"""A small generated LSVQ-like corpus: real clips in folders, a PatchVQ-style CSV, known outcomes."""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from lsvq_assets_tests.clipgen import ClipSpec


@dataclass(frozen=True)
class CorpusClip:
    name: str  # as in the CSV, without suffix
    mos: float
    kind: str  # "ok" | "broken" | "missing" | "dup"
    spec: ClipSpec | None = None

    @property
    def src(self) -> str:
        return self.name + ".mp4"


@dataclass
class Corpus:
    root: Path  # served tree: <folder>/<stem>.mp4
    csv: Path
    clips: list[CorpusClip] = field(default_factory=list)

    def by_kind(self, kind: str) -> list[CorpusClip]:
        return [c for c in self.clips if c.kind == kind]

    def sha256(self, clip: CorpusClip) -> str:
        return hashlib.sha256((self.root / clip.src).read_bytes()).hexdigest()

    def expected_row_fields(self, clip: CorpusClip) -> dict:
        """What a row for ``clip`` must hold, from the clip's bytes and its generating spec."""
        spec = clip.spec
        data = (self.root / clip.src).read_bytes()
        return {
            "src": clip.src,
            "src_sha256": hashlib.sha256(data).hexdigest(),
            "src_size_bytes": len(data),
            "width": spec.width,
            "height": spec.height,
            "framerate": float(Fraction(spec.rate)),
            "pix_fmt": spec.pix_fmt,
            "encoder_upstream": spec.codec,
            "mos": clip.mos,
            "mos_std_dev": 0.0,
            "n_ratings": 0,
            "corpus": "lsvq",
            "corpus_version": "lsvq-2021",
        }


DEFAULT_CLIPS = [
    CorpusClip("yfcc-batch1/725", 76.84375, "ok", ClipSpec(seed=1)),
    CorpusClip("yfcc-batch1/St._Charles_Bridge", 52.5, "ok", ClipSpec(seed=2, width=48, height=64)),
    CorpusClip("yfcc-batch1/From_a_purple_vortex...", 64.0, "ok", ClipSpec(codec="vp9", seed=3)),
    CorpusClip("yfcc-batch1/clip.mp4", 37.5, "ok", ClipSpec(codec="mpeg4", rate="30000/1001", seed=4)),
    CorpusClip("ia-batch2/alpha", 12.25, "ok", ClipSpec(codec="hevc", seed=5)),
    CorpusClip("ia-batch2/broken", 40.0, "broken"),
    CorpusClip("ia-batch2/gone", 50.0, "missing"),
    CorpusClip("ia-batch2/copy_of_725", 70.0, "dup"),
]


def build_corpus(
    base: Path,
    clip_factory: Callable[[ClipSpec], Path],
    broken_factory: Callable[[str], Path],
    clips: list[CorpusClip] | None = None,
) -> Corpus:
    """Write the served tree and the CSV under ``base``; "dup" copies the first ok clip's bytes."""
    clips = list(DEFAULT_CLIPS if clips is None else clips)
    root = base / "served"
    first_ok = next(c for c in clips if c.kind == "ok")
    for clip in clips:
        dest = root / clip.src
        dest.parent.mkdir(parents=True, exist_ok=True)
        if clip.kind == "ok":
            shutil.copyfile(clip_factory(clip.spec), dest)
        elif clip.kind == "broken":
            shutil.copyfile(broken_factory("random"), dest)
        elif clip.kind == "dup":
            shutil.copyfile(clip_factory(first_ok.spec), dest)
    path = base / "LSVQ_whole_train.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "height", "width", "mos", "frame_number"])
        for clip in clips:
            writer.writerow([clip.name, 48, 64, clip.mos, 6])
    return Corpus(root=root, csv=path, clips=clips)
