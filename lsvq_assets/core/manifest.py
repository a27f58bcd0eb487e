"""LSVQ manifests as plain rows: PatchVQ CSVs, FAST-VQA/DOVER labels, the seed's aliases.

Every rule about a manifest lives here: which columns are which, how a name becomes a clip
path (the suffix rule), and which rows are dropped and why.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lsvq_assets.core.errors import LABELS_HINT, ManifestError
from lsvq_assets.core.urls import check_url

# Logical column -> header spellings, in priority order (the seed's aliases; matched case-insensitively).
ALIASES: dict[str, tuple[str, ...]] = {
    "name": ("name", "video_name", "filename", "file_name"),
    "url": ("url", "download_url", "video_url"),
    "mos": ("mos", "mos_score"),
    "sd": ("sd", "mos_std", "mos_std_dev", "sd_mos"),
    "n": ("n", "ratings", "num_ratings", "n_ratings"),
}
DEFAULT_SUFFIX = ".mp4"
MAX_COMPONENT_BYTES = 255
MAX_NAME_CHARS = 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # read whole into memory: refuse what cannot be a manifest


@dataclass(frozen=True)
class ManifestRow:
    """One valid manifest row. ``src`` is the clip's path relative to the clips directory."""

    index: int  # position among kept rows, i.e. manifest order
    line: int  # 1-based line of the row in the file
    name: str
    src: str
    folder: str  # first path component, "" for flat names
    mos: float
    mos_std_dev: float
    n_ratings: int
    url: str | None
    split: str = "train"  # the split (label file) the row comes from


@dataclass(frozen=True)
class DroppedRow:
    line: int
    name: str
    reason: str


@dataclass
class Manifest:
    """A parsed manifest: kept rows in file order, dropped rows with reasons, and what was defaulted."""

    path: Path
    format: str  # "csv" | "labels"
    columns: list[str]
    data_rows: int  # non-blank data rows in the file, before any drop or cap
    sha256: str
    rows: list[ManifestRow] = field(default_factory=list)
    dropped: list[DroppedRow] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)  # "mos_std_dev" / "n_ratings" when absent
    has_urls: bool = False

    def dropped_counts(self) -> dict[str, int]:
        """Dropped rows by reason, most frequent first."""
        return dict(Counter(d.reason.split(":")[0] for d in self.dropped).most_common())


def read_manifest(path: Path, clip_suffix: str = DEFAULT_SUFFIX, min_csv_rows: int = 0, split: str = "train") -> Manifest:
    """Parse the label file of ``split`` at ``path``. Raises ManifestError for a file that cannot be used at all."""
    text, digest = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        # rec[0] first: a data row's name field is rarely blank, so the generator is rarely built.
        records = [(reader.line_num, rec) for rec in reader if rec and (rec[0].strip() or any(f.strip() for f in rec))]
    except csv.Error as exc:
        raise ManifestError(f"{path}: line {reader.line_num}: not a readable CSV ({exc}).") from None
    if not records:
        raise ManifestError(f"{path} has no rows. {LABELS_HINT}")
    header = [f.strip().lstrip("\ufeff") for f in records[0][1]]
    columns = _find_columns(header)
    if columns.get("name") is not None and columns.get("mos") is not None:
        fmt, data, suffix = "csv", records[1:], clip_suffix
    elif columns or not _looks_like_labels(header):
        found = ", ".join(repr(h) for h in header[:40]) or "none"
        missing = " and ".join(k for k in ("name", "mos") if columns.get(k) is None)
        raise ManifestError(
            f"{path}: no {missing} column; found columns: {found}. "
            f"Expected a header with name|video_name|filename|file_name and mos|mos_score, "
            f"or a FAST-VQA/DOVER labels file. {LABELS_HINT}"
        )
    else:
        fmt, data, suffix = "labels", records, ""
        columns = {"name": [0], "mos": [-1]}
    if len(data) < min_csv_rows:
        raise ManifestError(
            f"{path} has {len(data)} data rows, fewer than min_csv_rows={min_csv_rows}: is this the "
            f"right file? The LSVQ splits have thousands of rows. Pass --min-csv-rows {len(data)} "
            f"to accept it anyway."
        )
    manifest = Manifest(path=path, format=fmt, columns=header if fmt == "csv" else [], data_rows=len(data), sha256=digest)
    manifest.defaulted = [k for c, k in (("sd", "mos_std_dev"), ("n", "n_ratings")) if not columns.get(c)]
    manifest.has_urls = bool(columns.get("url"))
    _collect_rows(manifest, data, columns, suffix, split)
    return manifest


def _read_text(path: Path) -> tuple[str, str]:
    try:
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and st.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{path} is {st.st_size} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES} at most; "
                f"the LSVQ splits are a few MB): is it the right file? {LABELS_HINT}"
            )
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            # A device would be read forever; a pipe only once (every slice's run reads the file again).
            raise ManifestError(f"{path} is not a regular file (a device or a pipe?): save the manifest to a file and pass its path.")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"manifest not found: {path}. Put the LSVQ split CSV there or pass --manifest-csv (LSVQ_MANIFEST_CSV). {LABELS_HINT}"
        ) from None
    except IsADirectoryError:
        raise ManifestError(f"{path} is a directory, not a manifest file. Pass the CSV's path.") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}.") from None
    if not raw.strip():
        raise ManifestError(f"{path} is empty. {LABELS_HINT}")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ManifestError(f'{path} is UTF-16 text ("Unicode" in some editors): save the manifest as UTF-8.')
    if b"\x00" in raw:
        raise ManifestError(f"{path} is not a text file (it holds NUL bytes). {LABELS_HINT}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}). Save the manifest as UTF-8."
        ) from None
    return text, hashlib.sha256(raw).hexdigest()


def _find_columns(header: list[str]) -> dict[str, list[int]]:
    lowered = [h.lower() for h in header]
    found: dict[str, list[int]] = {}
    for logical, aliases in ALIASES.items():
        idx = [lowered.index(a) for a in aliases if a in lowered]
        if idx:
            found[logical] = idx
    return found


def _looks_like_labels(first: list[str]) -> bool:
    return len(first) >= 2 and bool(first[0]) and _finite(first[-1]) is not None and _finite(first[0]) is None


def _finite(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _first(rec: list[str], idx: list[int] | None) -> str:
    for i in idx or ():
        if -len(rec) <= i < len(rec) and rec[i].strip():
            return rec[i].strip()
    return ""


# A backslash, or a control character (C0 or DEL), anywhere in a name.
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")


def name_problem(name: str) -> str | None:
    """Why a clip name cannot be used as a path inside the clips directory, or None."""
    if not name:
        return "no-name"
    if len(name) > MAX_NAME_CHARS:
        return "name-too-long"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute-name"
    if _BAD_CHAR.search(name):
        return "bad-name"
    parts = name.split("/")
    if ".." in parts:
        return "path-traversal"
    if any(p in ("", ".") for p in parts):
        return "bad-name"
    # UTF-8 spends at most 4 bytes a character: only a longer component needs encoding to tell.
    if max(map(len, parts)) * 4 > MAX_COMPONENT_BYTES and any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        return "name-too-long"
    return None


def _collect_rows(manifest: Manifest, data: list[tuple[int, list[str]]], columns: dict[str, list[int]], suffix: str, split: str) -> None:
    seen: set[str] = set()
    rows, dropped = manifest.rows, manifest.dropped
    name_i, mos_i, url_i, sd_i, n_i = (columns.get(k) for k in ("name", "mos", "url", "sd", "n"))
    for line, rec in data:
        name = _first(rec, name_i)
        # The suffix lengthens the last component: check the file name too (255 bytes at most).
        problem = name_problem(name) or (name_problem(name + suffix) if suffix else None)
        if problem:
            dropped.append(DroppedRow(line, name[:200], problem))
            continue
        # A labels row needs a name and a MOS field: a lone field is not both.
        mos = _finite(_first(rec, mos_i)) if manifest.format == "csv" or len(rec) > 1 else None
        if mos is None:
            dropped.append(DroppedRow(line, name, "bad-mos"))
            continue
        src = name + suffix
        if src in seen:
            dropped.append(DroppedRow(line, name, "duplicate-name"))
            continue
        url = _first(rec, url_i) or None
        if url is not None and (bad := check_url(url)):
            dropped.append(DroppedRow(line, name, bad))
            continue
        seen.add(src)
        sd = _finite(_first(rec, sd_i)) or 0.0
        n = _finite(_first(rec, n_i))
        n = n if n is not None and abs(n) < 2**63 else None  # parquet's int64; junk like 1e30 -> 0
        folder = name.split("/", 1)[0] if "/" in name else ""
        rows.append(ManifestRow(len(rows), line, name, src, folder, mos, sd, int(n) if n else 0, url, split))
