"""Where a profiled CLI run spent its samples: ``python -m benchmarks.profile_summary PROFILE``.

Reads a py-spy ``--format raw`` file (collapsed stacks, ``--threads --subprocesses``) or a cProfile
``.pstats`` file. For py-spy, each sample goes to one **cost** (the first rule that matches):

* ``imports``: any frame is importlib's ``_find_and_load`` (module execution at import included);
* else the leaf-most frame that says what the work is: sha256 / gzip+tar / fsync / file writes (read
  from the source line of a frame in this repository: ``.update(``, ``fsync``, ``decompress``...),
  SQLite (``sqlite3``, SQLAlchemy), HTTP (requests, urllib3, http.client, socket, ssl), PyAV probe
  (``av``, ``probing/``), parquet/pandas (pyarrow, pandas), JSON, logging, ``tarfile``/``gzip``;
* else Dagster's code (a ``dagster/`` frame) or the project's (``lsvq_assets/``), leaf-most first.

and to one **owner**: the leaf-most frame under ``lsvq_assets/`` or ``dagster/`` (stdlib and other
libraries are charged to whichever called them), imports apart. Samples of idle threads are not
recorded (py-spy without ``--idle``), so a sample is a thread on CPU or holding the GIL, and two
threads can be sampled at once: seconds = samples / rate, summed over threads and processes.
"""

from __future__ import annotations

import argparse
import json
import linecache
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (cost, test on the file path or function) -- leaf-most match wins
LIB_RULES: tuple[tuple[str, str], ...] = (
    ("sha256", "hashlib"),
    ("gzip / tar", "gzip.py"),
    ("gzip / tar", "zlib"),
    ("gzip / tar", "tarfile.py"),
    ("SQLite", "sqlite3"),
    ("SQLite", "sqlalchemy/"),
    ("HTTP", "requests/"),
    ("HTTP", "urllib3/"),
    ("HTTP", "http/client.py"),
    ("HTTP", "socket.py"),
    ("HTTP", "ssl.py"),
    ("PyAV probe", "av/"),
    ("PyAV probe", "lsvq_assets/probing/"),
    ("parquet / pandas", "pyarrow/"),
    ("parquet / pandas", "pandas/"),
    ("JSON", "json/"),
    ("logging", "logging/"),
    ("subprocess (compute-log tail)", "subprocess.py"),
    ("pydantic", "pydantic"),
)
LINE_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("fsync", re.compile(r"fsync")),
    ("sha256", re.compile(r"\.update\(|sha256|hexdigest")),
    ("gzip / tar", re.compile(r"decompress|zlib|tarfile|\.extractfile|_next\(")),
    ("file write / rename", re.compile(r"\.write\(|os\.replace|os\.rename|\.rename\(|shutil\.copy")),
    ("file create / mkdir / stat / unlink", re.compile(r"mkstemp|mkdir|\.stat\(|unlink|os\.close|fchmod")),
)


def parse_raw(path: Path) -> list[tuple[str, list[str], int]]:
    """(process label, frames root -> leaf, count) per collapsed stack."""
    records: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("process ") or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line  # a command line with newlines
    out = []
    for rec in records:
        head, _, count = rec.rpartition(" ")
        if not count.isdigit():
            continue
        parts = head.split(";")
        proc = parts[0]
        frames = [p for p in parts[1:] if not p.startswith("thread (")]
        out.append((proc, frames, int(count)))
    return out


def _frame(f: str) -> tuple[str, str, int]:
    m = _FRAME.match(f)
    if not m:
        return f, "", 0
    return m["func"], m["file"], int(m["line"] or 0)


def _source_line(file: str, line: int) -> str:
    for base in (REPO, Path(sys.prefix) / "lib"):
        p = base / file
        if p.exists():
            return linecache.getline(str(p), line)
    return ""


def cost_of(frames: list[str]) -> str:
    if not frames:
        return "process idle / not Python"
    if any(f.startswith("_find_and_load ") for f in frames):
        return "imports"
    for f in reversed(frames):
        func, file, line = _frame(f)
        if file.startswith("lsvq_assets/") or "/lsvq_assets/" in file:
            text = _source_line(file[file.index("lsvq_assets/") :], line)
            for name, rx in LINE_RULES:
                if rx.search(text) or rx.search(func):
                    return name
        if "fsync" in func:
            return "fsync"
        if file.endswith("lsvq_assets/core/store.py"):
            return "SQLite (the project's clip-state store)"
        for name, needle in LIB_RULES:
            if needle in file:
                return name
    for f in reversed(frames):
        _, file, _ = _frame(f)
        if "dagster/" in file or file.startswith("dagster"):
            return "Dagster (other)"
        if "lsvq_assets/" in file:
            return "lsvq_assets (other)"
    return "other (stdlib, interpreter)"


def owner_of(frames: list[str]) -> str:
    if any(f.startswith("_find_and_load ") for f in frames):
        return "imports"
    for f in reversed(frames):
        _, file, _ = _frame(f)
        if "lsvq_assets/" in file:
            return "lsvq_assets"
        if "dagster/" in file or file.startswith("dagster"):
            return "dagster"
    return "other"


def summarize_raw(path: Path, rate: float, partitions: int | None = None) -> dict:
    stacks = parse_raw(path)
    total = sum(c for _, _, c in stacks)
    costs: Counter = Counter()
    owners: Counter = Counter()
    procs: Counter = Counter()
    leaf: Counter = Counter()
    dagster_fn: Counter = Counter()
    cross: Counter = Counter()
    other_leaf: Counter = Counter()
    for proc, frames, c in stacks:
        cost, owner = cost_of(frames), owner_of(frames)
        costs[cost] += c
        owners[owner] += c
        cross[f"{cost} <- {owner}"] += c
        if cost in ("lsvq_assets (other)", "Dagster (other)", "other (stdlib, interpreter)") and frames:
            other_leaf[f"{cost}: {frames[-1]}"] += c
        procs[proc.split(":", 1)[1][:90] if ":" in proc else proc] += c
        if frames:
            leaf[frames[-1]] += c
        # Dagster's own time by the outermost dagster function under the project's code (or the run itself)
        if owner_of(frames) == "dagster":
            names = [f for f in frames if "dagster/" in _frame(f)[1]]
            key = next((f for f in reversed(names) if any(k in f for k in ("storage", "event_log", "instance", "compute_log"))), names[-1] if names else "?")
            dagster_fn[key] += c

    def secs(n: int) -> float:
        return round(n / rate, 2)

    res = {
        "profile": str(path),
        "rate_hz": rate,
        "samples": total,
        "sampled_s": secs(total),
        "cost_s": {k: secs(v) for k, v in costs.most_common()},
        "owner_s": {k: secs(v) for k, v in owners.most_common()},
        "cost_by_owner_s": {k: secs(v) for k, v in cross.most_common(20)},
        "top_unclassified_leaf_frames_s": {k: secs(v) for k, v in other_leaf.most_common(15)},
        "process_s": {k: secs(v) for k, v in procs.most_common(6)},
        "top_leaf_frames_s": {k: secs(v) for k, v in leaf.most_common(25)},
        "top_dagster_frames_s": {k: secs(v) for k, v in dagster_fn.most_common(15)},
    }
    if partitions:
        res["partitions"] = partitions
        res["dagster_s_per_partition"] = round(owners["dagster"] / rate / partitions, 3)
    return res


def summarize_pstats(path: Path, top: int = 30) -> str:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def print_summary(res: dict) -> None:
    print(f"{res['samples']} samples at {res['rate_hz']:g} Hz = {res['sampled_s']} s of threads on CPU (all processes)")
    for title, key in (("by cost", "cost_s"), ("by owner", "owner_s"), ("cost <- owner", "cost_by_owner_s"), ("by process", "process_s"),
                       ("unclassified leaf frames", "top_unclassified_leaf_frames_s"),
                       ("Dagster: where its own samples were", "top_dagster_frames_s"), ("leaf frames", "top_leaf_frames_s")):  # fmt: skip
        print(f"\n-- {title} (s) --")
        for k, v in res[key].items():
            print(f"{v:8.2f}  {k[:170]}")
    if "dagster_s_per_partition" in res:
        print(f"\nDagster's own code: {res['dagster_s_per_partition']} s per partition run ({res['partitions']} runs)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_summary", description=__doc__.splitlines()[0])
    p.add_argument("profile", type=Path, help="py-spy raw file (.txt) or cProfile .pstats")
    p.add_argument("--rate", type=float, default=50.0, help="py-spy sampling rate it was recorded at (default 50)")
    p.add_argument("--partitions", type=int, default=None, help="partition runs in the profiled run (for a per-partition figure)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = p.parse_args(argv)
    if args.profile.suffix == ".pstats":
        print(summarize_pstats(args.profile))
        return 0
    res = summarize_raw(args.profile, args.rate, args.partitions)
    print_summary(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
