"""Generated LSVQ label files of every public shape, for tests.

The real files (PatchVQ CSVs, the re-saved 5-column CSV, FAST-VQA/DOVER ``labels.txt``) are
never read by tests; these functions write files of the same shapes into a temporary
directory: 51 folders ``yfcc-batch1..25``, ``ia-batch1..24``, ``backup``, ``backup2``; names
``<folder>/<stem>`` with dots (``St._Charles``), runs of dots (``From_a_purple_vortex...``,
``Presents..._Mary_Poppins``) and stems that end in ``.mp4``; quoted list columns like
``"[15, 527, 421, 709, 0, 200]"``; MOS on the 0-100 scale; optional CRLF and BOM.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

FOLDERS: tuple[str, ...] = (
    *(f"yfcc-batch{i}" for i in range(1, 26)),
    *(f"ia-batch{i}" for i in range(1, 25)),
    "backup",
    "backup2",
)

_BOX = ("left", "right", "top", "bottom", "start", "end")
PATCHVQ_38: tuple[str, ...] = (
    "name", "p1", "p2", "p3", "height", "width", "mos_p1", "mos_p2", "mos_p3", "mos",
    "frame_number", "fn_last_frame",
    *(f"{b}_p{p}" for p in (1, 2, 3) for b in _BOX),
    "top_vid", "left_vid", "bottom_vid", "right_vid", "start_vid", "end_vid",
    "is_test", "is_valid",
)  # fmt: skip
PATCHVQ_37: tuple[str, ...] = tuple(c for c in PATCHVQ_38 if c != "is_test")
PATCHVQ_5: tuple[str, ...] = ("name", "height", "width", "mos", "frame_number")
HEADERS: dict[int, tuple[str, ...]] = {38: PATCHVQ_38, 37: PATCHVQ_37, 5: PATCHVQ_5}

# Stems of the awkward kinds the real files hold; ``{k}`` keeps them distinct.
_IA_STEMS = (
    "Around_Towne_-_Summit_High_School_Presents..._Mary_Poppins_{k}",
    "St._Charles_Parade_{k}",
    "Your_World...Bringing_it_Home_-_Needham_Community_Farm_{k}",
    "spanishrevolution-Acampada_Sol_Comisiones-IwyMSILW9Xo{k}.mp4",
    "100........_2019{k:02d}",
    "Darlene_Carman_Presents..._Etiquette_For_Young_Adults_{k}",
    "From_a_purple_vortex{k}...",
    "Election_Night_2008_-_Part_{k}",
)


def folder_stem(folder: str, k: int) -> str:
    """A realistic stem for the ``k``-th clip of ``folder`` (distinct per ``(folder, k)``)."""
    if folder.startswith("ia-batch") and k % 3 == 0:
        return _IA_STEMS[(k // 3) % len(_IA_STEMS)].format(k=k)
    if folder.startswith("yfcc") and k % 11 == 5:
        return f"{7000 + k}.mp4"  # a name ending in .mp4: its file is <name>.mp4.mp4
    return str(700 + k)


def realistic_names(n_rows: int, folders: Sequence[str] = FOLDERS) -> list[str]:
    """``n_rows`` distinct ``<folder>/<stem>`` names, each folder a contiguous block, in folder order.

    An empty folder string gives flat names (no ``/``).
    """
    names: list[str] = []
    for i, folder in enumerate(folders):
        count = n_rows * (i + 1) // len(folders) - n_rows * i // len(folders)
        for k in range(count):
            stem = folder_stem(folder or "flat", k)
            names.append(f"{folder}/{stem}" if folder else stem)
    return names


def mos_text(rng: random.Random) -> str:
    """A MOS as the real files spell it: ``76``, ``67.75``, ``52.5151515151515``."""
    value = rng.uniform(2.45, 91.42)
    return str(int(value)) if rng.random() < 0.1 else repr(round(value, rng.choice((2, 13, 14))))


def _box(rng: random.Random, w: int, h: int, frames: int) -> list[int]:
    x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
    s0 = rng.randrange(0, max(1, frames // 2))
    return [x0, x0 + w // 2, y0, y0 + h // 2, s0, frames]


def patchvq_record(name: str, mos: str, columns: int, rng: random.Random) -> list[str]:
    """One data row of a PatchVQ CSV with ``columns`` (38, 37 or 5) fields."""
    h, w = rng.choice(((720, 1280), (480, 640), (1080, 1920), (360, 480), (320, 568)))
    frames = rng.randrange(0, 300) if rng.random() > 0.002 else 0
    if columns == 5:
        return [name, str(h), str(w), mos, str(frames)]
    boxes = [_box(rng, w, h, frames) for _ in range(3)]
    rec = [name, *(str(b) for b in boxes), str(h), str(w)]  # str(list) -> "[15, 527, 421, 709, 0, 200]"
    rec += [repr(rng.uniform(20, 90)) for _ in range(3)] + [mos, str(frames), f"{name}/image_{frames:05d}"]
    rec += [str(v) for b in boxes for v in b]
    rec += ["0", "0", str(h), str(w), "0", str(frames)]
    rec += (["True"] if columns == 38 else []) + [rng.choice(("True", "False"))]
    assert len(rec) == columns
    return rec


def _encode(text: str, bom: bool) -> bytes:
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")


def _csv_text(header: Sequence[str] | None, rows: Iterable[Sequence[object]], crlf: bool) -> str:
    rows = [list(map(str, r)) for r in rows]
    buf = io.StringIO(newline="")
    # Python 3.11's writer leaves a lone "\r" unquoted when lines end in "\n": quote all fields then.
    quoting = csv.QUOTE_ALL if not crlf and any("\r" in f for r in rows for f in r) else csv.QUOTE_MINIMAL
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=quoting)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_patchvq_csv(
    path: Path,
    n_rows: int,
    folders: Sequence[str] = FOLDERS,
    columns: int = 38,
    crlf: bool = False,
    bom: bool = False,
    extra_rows: Sequence[tuple[str, object]] = (),
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Write a PatchVQ-shaped CSV; return its ``(name, mos)`` data rows in file order.

    ``names`` overrides the generated names (``n_rows`` is then ignored); ``extra_rows`` are
    ``(name, mos)`` pairs appended as they are (junk allowed: the MOS is written with ``str``).
    """
    rng = random.Random(seed)
    names = list(names) if names is not None else realistic_names(n_rows, folders)
    pairs = [(n, mos_text(rng)) for n in names] + [(n, str(m)) for n, m in extra_rows]
    rows = [patchvq_record(n, m, columns, rng) for n, m in pairs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode(_csv_text(HEADERS[columns], rows, crlf), bom))
    return pairs


def labels_line(name: str, mos: object) -> str:
    return f"{name}, -1, -1, {mos}"


def write_labels_txt(path: Path, names_and_mos: Iterable[tuple[str, object]], crlf: bool = False, bom: bool = False) -> list[tuple[str, str]]:
    """Write a FAST-VQA/DOVER labels file (no header): ``yfcc-batch1/725.mp4, -1, -1, 76.84375``."""
    pairs = [(n, str(m)) for n, m in names_and_mos]
    eol = "\r\n" if crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode("".join(labels_line(n, m) + eol for n, m in pairs), bom))
    return pairs


def labels_pairs(n_rows: int, folders: Sequence[str] = FOLDERS, seed: int = 0) -> list[tuple[str, str]]:
    """Realistic labels entries: the clip file names (``<folder>/<stem>.mp4``) and MOS values."""
    rng = random.Random(seed)
    return [(n + ".mp4", mos_text(rng)) for n in realistic_names(n_rows, folders)]


def write_alias_csv(
    path: Path,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    crlf: bool = False,
    bom: bool = False,
) -> None:
    """Write a CSV with any header (the seed's alias spellings) and rows, via ``csv.writer``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode(_csv_text(header, ([str(v) for v in r] for r in rows), crlf), bom))
