"""The seed's ingestion loop, as the baseline the project is measured against.

What ``ai/scripts/lsvq_to_corpus_jsonl.py`` does per clip (see the seed documents and
``reference/seed-behaviour.md``), with the same external costs and in the same order:

1. one ``curl --location --fail --silent --show-error --max-time T -o <dest>.part <url>``
   process (Debian's curl, an argument list, no shell), renamed onto ``<dest>`` on success and
   deleted on failure;
2. the progress file ``.download-progress.json`` (sorted keys, indent 2, temp file + replace),
   flushed every 50 changes and at the end;
3. a separate sha256 pass over the downloaded file;
4. one ``ffprobe -v error -select_streams v:0 -show_entries stream=... -show_entries
   format=duration -of json <path>`` process;
5. the row (``json.dumps(row, sort_keys=True)``, basename ``src``, one timestamp per run), deduped
   on sha256, appended to the output; the summary line at the end.

Sequential: one clip at a time. The only departure: the seed takes each clip's URL from the
manifest's URL column; a PatchVQ CSV has none, so the URL comes from the same template the
project is given (``{name}`` / ``{suffix}`` percent-encoded the same way), which costs nothing.
The replay manifest sidecar is not written (one small file per run, not a per-clip cost).

Run alone: ``python -m benchmarks.seed_baseline --manifest-csv X --lsvq-dir Y --url-template Z``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

FFPROBE_ARGS = [
    "-v", "error",
    "-select_streams", "v:0",
    "-show_entries", "stream=width,height,r_frame_rate,avg_frame_rate,duration,pix_fmt,codec_name",
    "-show_entries", "format=duration",
    "-of", "json",
]  # fmt: skip
ALIASES = {
    "name": ("name", "video_name", "filename", "file_name"),
    "url": ("url", "download_url", "video_url"),
    "mos": ("mos", "mos_score"),
    "sd": ("sd", "mos_std", "mos_std_dev", "sd_mos"),
    "n": ("n", "ratings", "num_ratings", "n_ratings"),
}
FLUSH_EVERY = 50


class Missing(RuntimeError):
    """curl or ffprobe is not installed: the baseline cannot run."""


def find_tools(curl_bin: str | None = None, ffprobe_bin: str | None = None) -> tuple[str, str]:
    """Absolute paths of curl and ffprobe (the seed's $CURL_BIN / $FFPROBE_BIN, else the plain names)."""
    curl = shutil.which(curl_bin or os.environ.get("CURL_BIN") or "curl")
    ffprobe = shutil.which(ffprobe_bin or os.environ.get("FFPROBE_BIN") or "ffprobe")
    missing = [n for n, p in (("curl", curl), ("ffprobe", ffprobe)) if p is None]
    if missing:
        raise Missing(
            f"{' and '.join(missing)} not found on PATH: the seed baseline needs Debian's binaries "
            f"(apt-get install {' '.join('ffmpeg' if m == 'ffprobe' else m for m in missing)})"
        )
    return curl, ffprobe  # type: ignore[return-value]


@dataclass
class SeedResult:
    rows_attempted: int = 0
    written: int = 0
    skipped_download: int = 0
    skipped_broken: int = 0
    dedups: int = 0
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=lambda: {"download": 0.0, "hash": 0.0, "probe": 0.0, "other": 0.0})
    bytes: int = 0
    summary: str = ""


def _pick(header: list[str], logical: str) -> int | None:
    lower = [h.strip().lower() for h in header]
    for alias in ALIASES[logical]:
        if alias in lower:
            return lower.index(alias)
    return None


def read_rows(path: Path, max_rows: int) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        cols = {k: _pick(header, k) for k in ALIASES}
        rows = []
        for rec in reader:
            get = lambda k: rec[cols[k]].strip() if cols[k] is not None and cols[k] < len(rec) else ""  # noqa: E731
            name = get("name")
            try:
                mos = float(get("mos"))
            except ValueError:
                continue
            if not name or not math.isfinite(mos):
                continue
            sd = float(get("sd") or 0.0)
            n = int(float(get("n") or 0))
            rows.append({"name": name, "url": get("url"), "mos": mos, "sd": sd, "n": n})
    return rows[:max_rows] if max_rows > 0 else rows


def _write_progress(path: Path, progress: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(progress, fh, sort_keys=True, indent=2)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _rate(text: str) -> float:
    num, _, den = text.partition("/")
    try:
        return 0.0 if den and float(den) == 0 else float(num) / float(den or 1)
    except ValueError:
        return 0.0


def run(
    manifest_csv: Path,
    lsvq_dir: Path,
    url_template: str,
    *,
    max_rows: int = 0,
    timeout_s: float = 120.0,
    suffix: str = ".mp4",
    curl_bin: str | None = None,
    ffprobe_bin: str | None = None,
) -> SeedResult:
    curl, ffprobe = find_tools(curl_bin, ffprobe_bin)
    started = time.monotonic()
    res = SeedResult()
    stage = res.stage_s
    clips = lsvq_dir / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    progress_path = lsvq_dir / ".download-progress.json"
    try:
        progress = json.loads(progress_path.read_text())
    except (OSError, ValueError):
        progress = {}
    out_path = lsvq_dir / "lsvq.jsonl"
    seen: set[str] = set()
    if out_path.exists():
        seen = {json.loads(line)["src_sha256"] for line in out_path.read_text().splitlines() if line}
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    rows = read_rows(manifest_csv, max_rows)
    res.rows_attempted = len(rows)
    changes = 0
    out_lines: list[str] = []
    for row in rows:
        name = row["name"]
        dest = clips / (name + suffix)
        state = progress.get(name, {}).get("state")
        if state == "failed":
            res.skipped_download += 1
            continue
        if state != "done" or not dest.exists():
            url = row["url"] or url_template.format(name=quote(name), suffix=quote(suffix))
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            t = time.monotonic()
            cmd = [curl, "--location", "--fail", "--silent", "--show-error", "--max-time", f"{timeout_s:g}", "-o", str(part), url]
            try:
                done = subprocess.run(cmd, capture_output=True, check=False)
                if done.returncode != 0:
                    reason = f"curl-rc={done.returncode}: {done.stderr.decode(errors='replace').strip()}"
                elif not part.exists() or part.stat().st_size == 0:
                    reason = "curl-empty-output"
                else:
                    reason = None
                    try:
                        os.replace(part, dest)
                    except OSError:
                        reason = "rename-failed"
            except OSError:
                reason = "curl-spawn-failed"
            stage["download"] += time.monotonic() - t
            if reason is not None:
                part.unlink(missing_ok=True)
                progress[name] = {"state": "failed", "reason": reason}
                res.skipped_download += 1
            else:
                progress[name] = {"state": "done"}
            changes += 1
            if changes % FLUSH_EVERY == 0:
                _write_progress(progress_path, progress)
            if reason is not None:
                continue
        t = time.monotonic()
        digest = _sha256(dest)
        size = dest.stat().st_size
        stage["hash"] += time.monotonic() - t
        res.bytes += size
        t = time.monotonic()
        done = subprocess.run([ffprobe, *FFPROBE_ARGS, str(dest.absolute())], capture_output=True, check=False)
        stage["probe"] += time.monotonic() - t
        try:
            doc = json.loads(done.stdout) if done.returncode == 0 else {}
            s = doc["streams"][0]
            width, height = int(s.get("width") or 0), int(s.get("height") or 0)
        except (ValueError, KeyError, IndexError, TypeError):
            width = height = 0
        if not width or not height:
            res.skipped_broken += 1
            continue
        if digest in seen:
            res.dedups += 1
            continue
        seen.add(digest)
        sdur, fdur = s.get("duration"), doc.get("format", {}).get("duration")
        duration = float(sdur) if sdur and float(sdur) > 0 else float(fdur or 0.0)
        out_lines.append(
            json.dumps(
                {
                    "src": dest.name,
                    "src_sha256": digest,
                    "src_size_bytes": size,
                    "width": width,
                    "height": height,
                    "framerate": _rate(s.get("avg_frame_rate") or s.get("r_frame_rate") or ""),
                    "duration_s": duration,
                    "pix_fmt": s.get("pix_fmt", "unknown"),
                    "encoder_upstream": s.get("codec_name", "unknown"),
                    "mos": row["mos"],
                    "mos_std_dev": row["sd"],
                    "n_ratings": row["n"],
                    "corpus": "lsvq",
                    "corpus_version": "lsvq-2021",
                    "ingested_at_utc": now,
                },
                sort_keys=True,
            )
        )
    _write_progress(progress_path, progress)
    with open(out_path, "a") as fh:
        fh.writelines(line + "\n" for line in out_lines)
    res.written = len(out_lines)
    res.wall_s = time.monotonic() - started
    stage["other"] = max(0.0, res.wall_s - stage["download"] - stage["hash"] - stage["probe"])
    res.summary = (
        f"wrote {res.written} rows, skipped {res.skipped_download} (download-failed), "
        f"{res.skipped_broken} (broken-clip), {res.dedups} dedups -> {out_path}"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest-csv", type=Path, required=True)
    p.add_argument("--lsvq-dir", type=Path, required=True)
    p.add_argument("--url-template", required=True, help="e.g. http://127.0.0.1:8000/{name}{suffix}")
    p.add_argument("--max-rows", type=int, default=500)
    p.add_argument("--download-timeout-s", type=float, default=120.0)
    args = p.parse_args(argv)
    try:
        res = run(args.manifest_csv, args.lsvq_dir, args.url_template, max_rows=args.max_rows, timeout_s=args.download_timeout_s)
    except Missing as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    print(res.summary)
    print(json.dumps({"wall_s": res.wall_s, "stage_s": res.stage_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
