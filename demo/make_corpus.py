"""The demo's corpus: real tiny clips in LSVQ-style folders, a train and a test split, known failures.

``ensure_corpus(directory)`` writes (once) ``directory/served/<folder>/<stem>.mp4`` and two label
files drawing clips from the SAME four folders, as LSVQ's real splits do: the train split as a
PatchVQ-style ``LSVQ_whole_train.csv`` (names without an extension) and the test split as a
FAST-VQA/DOVER-style ``labels_test.txt`` (``<folder>/<stem>.mp4, -1, -1, <mos>``, no header).
About a quarter of the clips that play go to test, the rest to train. A later call with the same
generator version reuses them.

Clips are encoded with the test suite's helpers (``lsvq_assets_tests.clipgen``), so they are real
H.264 / HEVC / VP9 / MPEG-4 videos of a few frames (a few KB each). Within train, on purpose, some
rows have no file (the server answers 404), two files are not videos, and one is a byte copy of
another train clip (a dedup). No clip is in both splits, so the leakage check passes.

    python -m demo.make_corpus .demo/corpus
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lsvq_assets_tests.clipgen import ClipSpec, encode_clip, write_broken

GENERATOR_VERSION = 2  # bump when the plan below changes: an existing corpus is then rebuilt (2: train + test)
CSV_NAME = "LSVQ_whole_train.csv"  # the train split
TEST_LABELS_NAME = "labels_test.txt"  # the test split
LABEL_FILES = {"train": CSV_NAME, "test": TEST_LABELS_NAME}
STAMP_NAME = "corpus.json"

# Clips per folder, in generation order. Each folder is one partition (one Dagster partition key),
# holding that folder's rows of both splits.
FOLDERS = {"yfcc-batch1": 320, "yfcc-batch2": 260, "ia-batch1": 250, "backup": 194}
# Names as odd as the real ones: dots, runs of dots, a name that already ends in ".mp4".
SPECIAL_STEMS = {
    "ia-batch1": ["St._Charles_Bridge_at_dawn", "From_a_purple_vortex...", "Disney_Presents..._Mary_Poppins", "holiday.mp4"],
}
WORDS = ["harbour", "concert", "skate", "garden", "traffic", "lecture", "parade", "kitchen", "snow", "market"]
CODECS = {0: "vp9", 7: "mpeg4", 13: "hevc"}  # by row index % 20; the rest is h264
SIZES = [(64, 48), (48, 64), (80, 48)]  # landscape, portrait, wide
RATES = ["25", "30000/1001", "24"]
MISSING_EVERY, MISSING_AT = 85, 40  # rows whose clip the server does not have: HTTP 404
BROKEN = {"ia-batch1": ("truncated", 17), "backup": ("audio-only", 5)}  # folder -> (kind, row in folder)
DUPLICATE = ("backup", 11, "yfcc-batch1", 0)  # backup's row 11 is a byte copy of yfcc-batch1's row 0
TEST_EVERY, TEST_AT = 4, 3  # a clip that plays, at generation index n % 4 == 3, goes to the test split


@dataclass(frozen=True)
class DemoClip:
    name: str  # as in the CSV: <folder>/<stem>, no suffix
    mos: float  # 0-100, like real LSVQ
    kind: str  # "ok" | "missing" | "broken" | "dup"
    spec: ClipSpec
    broken_kind: str = ""
    copy_of: str = ""  # "dup": the name whose bytes it copies
    split: str = "train"  # "train" | "test"

    @property
    def src(self) -> str:
        return self.name + ".mp4"


@dataclass(frozen=True)
class DemoCorpus:
    directory: Path
    served: Path  # the tree the loopback server serves
    label_files: dict[str, Path]  # split -> label file: train (CSV), test (labels.txt)
    rows: dict[str, int]  # split -> rows
    kinds: dict[str, int]  # train's rows by kind (test holds only clips that play)

    @property
    def csv(self) -> Path:
        """The train split's CSV."""
        return self.label_files["train"]


def _stem(folder: str, i: int, rng: random.Random) -> str:
    specials = SPECIAL_STEMS.get(folder, [])
    if i < len(specials):
        return specials[i]
    if folder.startswith("yfcc"):
        return str(1000 + i * 37 + rng.randrange(30))  # numeric, like yfcc-batch1/725
    if folder.startswith("ia"):
        return f"{rng.choice(WORDS).title()}_{rng.choice(WORDS)}_{i:03d}"
    return f"{rng.getrandbits(40):010x}"


def plan() -> list[DemoClip]:
    """Every clip of the demo, in generation order, each with its split; deterministic."""
    rng = random.Random(20210)
    clips: list[DemoClip] = []
    n = 0
    for folder, count in FOLDERS.items():
        for i in range(count):
            width, height = SIZES[n % len(SIZES)]
            spec = ClipSpec(codec=CODECS.get(n % 20, "h264"), width=width, height=height, rate=RATES[n % len(RATES)], seed=n + 1)
            name = f"{folder}/{_stem(folder, i, rng)}"
            mos = round(rng.uniform(2.45, 91.42), 5)
            if BROKEN.get(folder, ("", -1))[1] == i:
                clips.append(DemoClip(name, mos, "broken", spec, broken_kind=BROKEN[folder][0]))
            elif (folder, i) == DUPLICATE[:2]:
                original = next(c for c in clips if c.name.startswith(DUPLICATE[2] + "/"))
                clips.append(DemoClip(name, mos, "dup", original.spec, copy_of=original.name))
            elif n % MISSING_EVERY == MISSING_AT:
                clips.append(DemoClip(name, mos, "missing", spec))
            else:
                split = "test" if n % TEST_EVERY == TEST_AT else "train"
                clips.append(DemoClip(name, mos, "ok", spec, split=split))
            n += 1
    return clips


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corpus(directory: Path, stamp: dict) -> DemoCorpus:
    files = {split: directory / name for split, name in LABEL_FILES.items()}
    return DemoCorpus(directory, directory / "served", files, stamp["rows"], stamp["kinds"])


def load_corpus(directory: Path) -> DemoCorpus | None:
    """The corpus already in ``directory`` if it is complete and of this generator version."""
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text())
        if stamp["version"] != GENERATOR_VERSION:
            return None
        if any(_sha256(directory / name) != stamp["label_sha256"][split] for split, name in LABEL_FILES.items()):
            return None
        return _corpus(directory, stamp)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(directory: Path, clips: list[DemoClip]) -> None:
    served = directory / "served"
    for clip in clips:
        dest = served / clip.src
        if clip.kind == "ok":
            encode_clip(dest, clip.spec)
        elif clip.kind == "broken":
            write_broken(dest, clip.broken_kind)
        elif clip.kind == "dup":
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(served / (clip.copy_of + ".mp4"), dest)
    # train: the shape of PatchVQ's LSVQ_whole_train.csv (CRLF, as some copies are); names
    # without an extension, the clip is name + ".mp4".
    with open(directory / CSV_NAME, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["name", "height", "width", "mos", "frame_number"])
        for clip in clips:
            if clip.split == "train":
                writer.writerow([clip.name, clip.spec.height, clip.spec.width, repr(clip.mos), clip.spec.frames])
    # test: the shape of FAST-VQA/DOVER's labels_test.txt; names carry the file's extension.
    with open(directory / TEST_LABELS_NAME, "w", newline="") as fh:
        for clip in clips:
            if clip.split == "test":
                fh.write(f"{clip.src}, -1, -1, {clip.mos!r}\n")


def ensure_corpus(directory: Path) -> tuple[DemoCorpus, bool]:
    """The demo corpus in ``directory``, generated unless a complete one is there; (corpus, generated)."""
    directory = Path(directory).absolute()
    existing = load_corpus(directory)
    if existing is not None:
        return existing, False
    clips = plan()
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _write(partial, clips)
    stamp = {
        "version": GENERATOR_VERSION,
        "rows": {split: sum(c.split == split for c in clips) for split in LABEL_FILES},
        "kinds": dict(Counter(c.kind for c in clips if c.split == "train")),
        "label_sha256": {split: _sha256(partial / name) for split, name in LABEL_FILES.items()},
    }
    (partial / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return _corpus(directory, stamp), True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m demo.make_corpus DIRECTORY", file=sys.stderr)
        return 2
    corpus, generated = ensure_corpus(Path(args[0]))
    for split, path in corpus.label_files.items():
        print(f"{'generated' if generated else 'reused'} {split}: {corpus.rows[split]} rows: {path}")
    print(f"train rows by kind: {corpus.kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
