"""The benchmark harness: the seed's sequential loop against the project, end to end, on loopback.

One run (``make bench`` or ``python -m benchmarks``) does, on a generated corpus served from
127.0.0.1 with a configurable per-request latency:

1. for each latency: the seed baseline (``benchmarks/seed_baseline.py``: a curl and an ffprobe
   process per clip, a sha256 pass after each download, sequential), then the project through
   its CLI and Dagster (``python -m lsvq_assets --full --clip-url-template ...`` in a fresh
   working directory and DAGSTER_HOME, ``--repeat`` times, median reported), then the folder
   archive source on the same bytes (``--source archive``);
2. the memory case: one 1 GiB clip through the CLI, peak RSS of the process tree;
3. a 39k-row manifest parsed and sliced;

then prints clips/s, ratios, time per stage, Dagster's overhead, peak memory and PASS/FAIL per
target, writes ``benchmarks/results/<timestamp>.json`` (and ``latest.json``), and a plot.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import seed_baseline
from benchmarks.corpus import Corpus, CorpusSpec, build_archives, build_big_clip, build_corpus
from benchmarks.measure import RunDirs, run_measured

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

TARGETS = {
    "speedup_0ms": 8.0,  # x the baseline, 500 clips, bare loopback
    "speedup_100ms": 20.0,  # x the baseline, 500 clips, 100 ms per request
    "big_clip_peak_rss_mb": 300.0,  # one 1 GiB clip
    "dagster_overhead_pct_100ms": 10.0,  # of a 500-clip slice run's wall time, 100 ms latency
    "manifest_parse_s": 1.0,  # 39k rows parsed and sliced
    "archive_vs_url": 1.20,  # archive source wall / per-clip source wall, same bytes
    # 500 rows capped from a 1,000-row manifest whose rows cycle through 4 folders
    "interleaved_speedup_0ms": 10.0,
    "interleaved_speedup_100ms": 20.0,
}


def log(msg: str) -> None:
    print(msg, flush=True)


MAX_LOAD: float | None = None  # --max-load
MAX_LOAD_WAIT_S = 300.0


def settle() -> float:
    """Write out what the run before left dirty; with --max-load, wait (up to MAX_LOAD_WAIT_S) for the 1-minute load average to drop under it.

    On a shared machine other work inflates every wall time measured here; the load average at
    the start of each measured run is recorded either way. Returns it.
    """
    os.sync()  # what the run before left dirty is written out now, not during the next one
    load = os.getloadavg()[0]
    if MAX_LOAD is None or load < MAX_LOAD:
        return load
    deadline = time.monotonic() + MAX_LOAD_WAIT_S
    log(f"   (load average {load:.1f} >= --max-load {MAX_LOAD:g}: waiting up to {MAX_LOAD_WAIT_S:.0f}s)")
    while load >= MAX_LOAD and time.monotonic() < deadline:
        time.sleep(2)
        load = os.getloadavg()[0]
    return load


def clean_env(dagster_home: Path) -> dict:
    # PYTHONDONTWRITEBYTECODE off: the CLI's modules are compiled once, as an installed package's are.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSVQ_", "DAGSTER_", "PYTHONDONTWRITEBYTECODE"))}
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONUNBUFFERED"] = "1"
    # The CLI runs in its own working directory: without this, `-m lsvq_assets` would import whatever
    # copy the venv has installed (an editable install of another checkout), not this one.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


# An operator's instance settings that cut Dagster's cost per run on SQLite: one event database
# for all runs (the default creates, migrates and stamps a new SQLite file for every run) and no
# compute-log capture (the CLI prints its own log).
TUNED_YAML = """\
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {home}/history
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


def fresh_home(work: Path, tuned: bool = False) -> Path:
    """A new DAGSTER_HOME; telemetry off so a benchmark never writes or sends usage data."""
    home = work / "dagster_home"
    home.mkdir(parents=True)
    text = "telemetry:\n  enabled: false\n" + (TUNED_YAML.format(home=home) if tuned else "")
    (home / "dagster.yaml").write_text(text)
    return home


# --------------------------------------------------------------------------- the seed


def run_seed(corpus: Corpus, base_url: str, work: Path, max_rows: int = 0) -> dict:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cmd = [
        PY, "-m", "benchmarks.seed_baseline",
        "--manifest-csv", str(corpus.csv),
        "--lsvq-dir", str(work),
        "--url-template", base_url + "/{name}{suffix}",
        "--max-rows", str(max_rows),
    ]  # fmt: skip
    load = settle()
    m = run_measured(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if m.returncode != 0:
        raise RuntimeError(f"seed baseline failed ({m.returncode}): {m.stderr[-2000:]}")
    detail = json.loads(m.stdout.strip().splitlines()[-1])
    return {
        "wall_s": m.wall_s,
        "loop_wall_s": detail["wall_s"],
        "stage_s": detail["stage_s"],
        "peak_rss_mb": m.peak_rss_mb,
        "summary": m.stdout.strip().splitlines()[0],
        "clips_per_s": (max_rows or len(corpus.names)) / m.wall_s,
        "rows": _rows(work / "lsvq.jsonl"),
        "load_avg": load,
    }


# --------------------------------------------------------------------------- the project


def cli_cmd(corpus: Corpus, work: Path, extra: list[str], max_rows: int = 0) -> list[str]:
    return [
        PY, "-m", "lsvq_assets", *(["--max-rows", str(max_rows)] if max_rows else ["--full"]),
        "--lsvq-dir", str(work / "lsvq"),
        "--manifest-csv", str(corpus.csv),
        "--min-csv-rows", "1",
        *extra,
    ]  # fmt: skip


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# The CLI as __main__ runs it, with gc.freeze() once its modules are imported and again before
# the interpreter exits: the ~150k objects Dagster & co. leave behind at import are never garbage,
# yet every full collection walks them (5 of those in a 500-clip run, ~0.35 s) and so does the
# collection at exit (~0.55 s). A proposed change to lsvq_assets/__main__.py (or cli.main),
# measured by the "proposed" variant.
GC_FREEZE_SHIM = (
    "import gc, sys\n"
    "import lsvq_assets.cli, lsvq_assets.runner, lsvq_assets.definitions\n"
    "gc.freeze()\n"
    "rc = lsvq_assets.cli.main(sys.argv[1:])\n"
    "gc.freeze()\n"
    "sys.exit(rc)\n"
)


def run_project(
    corpus: Corpus, work: Path, extra: list[str], hash_mb_s: float, tuned: bool = False, gc_freeze: bool = False,
    max_rows: int = 0,
) -> dict:
    """One CLI run in a fresh working directory and DAGSTER_HOME, and where its time went."""
    from benchmarks.dagster_stats import read_runs

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    home = fresh_home(work, tuned)
    load = settle()
    cmd = cli_cmd(corpus, work, extra, max_rows)
    if gc_freeze:
        assert cmd[1:3] == ["-m", "lsvq_assets"]
        cmd = [PY, "-c", GC_FREEZE_SHIM, *cmd[3:]]
    m = run_measured(cmd, env=clean_env(home), cwd=work)
    if m.returncode != 0:
        raise RuntimeError(f"CLI failed ({m.returncode}):\n{m.stdout[-1500:]}\n{m.stderr[-3000:]}")
    runs = read_runs(str(home))
    # Partition (slice) runs carry a partition key, the shard run(s) none; job names change with the redesign.
    slice_runs = [r for r in runs if r.partition is not None]
    shard_runs = [r for r in runs if r.partition is None]
    rows = _rows(find_shard(work))

    def body(key: str, rs: list) -> float:
        return sum(r.steps[key].body_s for r in rs if key in r.steps)

    def meta(key: str, name: str, rs: list) -> float:
        return sum(float(r.steps[key].metadata.get(name, 0) or 0) for r in rs if key in r.steps)

    slice_wall = sum(r.wall_s for r in slice_runs)
    slice_body = sum(r.body_s for r in slice_runs)
    shard_wall = sum(r.wall_s for r in shard_runs)
    shard_body = sum(r.body_s for r in shard_runs)
    bytes_fetched = meta("lsvq_clips", "bytes_fetched", slice_runs)
    fetch_s = meta("lsvq_clips", "fetch_s", slice_runs) or meta("lsvq_clips", "elapsed_s", slice_runs)
    clips_store = meta("lsvq_clips", "store_s", slice_runs)
    probe_wait = meta("lsvq_clips", "probe_ahead_wait_s", slice_runs)
    probes_probe, probes_store = meta("lsvq_probes", "probe_s", slice_runs), meta("lsvq_probes", "store_s", slice_runs)
    # The CLI's log lines (ms timestamps) split its wall time into startup, the slice runs as
    # execute_in_process saw them (plan, run creation, registration included) and the rest.
    marks = cli_marks(m.stderr)
    t_rows = marks.get("rows", m.started_at)
    t_slices = marks.get("slices_done", t_rows)
    startup = max(0.0, t_rows - m.started_at)
    slices_exec = max(slice_wall, t_slices - t_rows)
    after = max(0.0, m.wall_s - startup - slices_exec)
    stages = {
        "startup (interpreter, imports, manifest, instance)": startup,
        "manifest asset": body("lsvq_manifest", slice_runs),
        "download (hash while streaming, write, fsync)": fetch_s,
        "probe (what did not overlap the download)": probe_wait + probes_probe,
        "store (clip-state SQLite)": clips_store + probes_store,
        "other asset work (parquet, metadata)": max(0.0, body("lsvq_clips", slice_runs) - fetch_s - clips_store - probe_wait)
        + max(0.0, body("lsvq_probes", slice_runs) - probes_probe - probes_store),
        "rows asset": sum(r.steps[k].body_s for r in slice_runs for k in r.steps if k.startswith(("lsvq_rows_", "lsvq_shard_rows"))),
        "Dagster: inside slice runs": slice_wall - slice_body,
        "Dagster: around slice runs (plan, run creation)": slices_exec - slice_wall,
        "shard asset": shard_body,
        "Dagster: shard run (in and around it), exit": max(0.0, after - shard_body),
    }
    return {
        "wall_s": m.wall_s,
        "clips_per_s": (max_rows or len(corpus.names)) / m.wall_s,
        "peak_rss_mb": m.peak_rss_mb,
        "maxrss_mb": m.maxrss_mb,
        "tree_peak_mb": m.tree_peak_mb,
        "summary": next((l for l in m.stdout.splitlines() if l.startswith("wrote ")), ""),
        "runs": [
            {
                "job": r.job,
                "partition": r.partition,
                "status": r.status,
                "wall_s": r.wall_s,
                "body_s": r.body_s,
                "overhead_s": r.overhead_s,
                "events": r.events,
                "steps": {k: {"step_s": s.step_s, "body_s": s.body_s, "body_from": s.body_from} for k, s in r.steps.items()},
            }
            for r in runs
        ],
        "slice_run_wall_s": slice_wall,
        "slice_run_body_s": slice_body,
        "dagster_overhead_slice_s": slice_wall - slice_body,
        "dagster_overhead_slice_pct": 100 * (slice_wall - slice_body) / slice_wall if slice_wall else 0.0,
        "body_from": sorted({f"{k}:{s.body_from}" for r in runs for k, s in r.steps.items()}),
        "stage_s": stages,
        "hash_estimate_s": bytes_fetched / 1e6 / hash_mb_s if hash_mb_s else 0.0,
        "dagster_around_slice_runs_s": slices_exec - slice_wall,
        "dagster_overhead_slice_incl_around_pct": 100 * (slices_exec - slice_body) / slices_exec if slices_exec else 0.0,
        "cpu_s": m.cpu_s,
        "load_avg": load,
        "probed_ahead": meta("lsvq_clips", "probed_ahead", slice_runs),
        "bytes_fetched": bytes_fetched,
        "rows": len(rows),
        "_rows": rows,
    }


def find_shard(work: Path) -> Path:
    """The shard: ``<lsvq-dir>/lsvq.jsonl`` (one manifest), else the largest ``lsvq*.jsonl`` under ``work``."""
    first = work / "lsvq" / "lsvq.jsonl"
    if first.exists():
        return first
    found = sorted(work.rglob("lsvq*.jsonl"), key=lambda p: p.stat().st_size)
    return found[-1] if found else first


def cli_marks(stderr: str) -> dict[str, float]:
    """Epoch times of the CLI's headline ("... N of M partitions hold the rows under the cap") and of its last "partition i/n" line."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        when = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like the CLI's
        headline = "partitions hold the rows" in m["msg"] or (" rows in " in m["msg"] and re.search(r" (slices|partitions) from ", m["msg"]))
        if headline and "rows" not in out:
            out["rows"] = when
        elif _SLICE_DONE.match(m["msg"]):
            out["slices_done"] = when
    return out


_SLICE_DONE = re.compile(r"(slice|partition) \d+/\d+ ")
_LOG_LINE = re.compile(r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (?P<msg>.*)")


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["all_wall_s"] = [round(r["wall_s"], 3) for r in runs]
    return best


def rows_agree(seed_rows: list[dict], project_rows: list[dict]) -> tuple[bool, str]:
    """Same clips, same bytes, same probe values and MOS (src differs: basename vs folder path)."""
    keys = ("src_sha256", "src_size_bytes", "width", "height", "framerate", "duration_s", "pix_fmt", "encoder_upstream", "mos")
    a = sorted(tuple(r[k] for k in keys) for r in seed_rows)
    b = sorted(tuple(r[k] for k in keys) for r in project_rows)
    if a == b:
        return True, f"{len(a)} rows identical on {', '.join(keys)}"
    diff = len(set(a) ^ set(b))
    return False, f"seed {len(a)} rows, project {len(b)} rows, {diff} differ"


# --------------------------------------------------------------------------- small measurements


def hashlib_mb_s() -> float:
    data = os.urandom(64 << 20)
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return 64 * 1.048576 / (time.perf_counter() - t)


def startup_costs(work: Path) -> dict:
    """Process start + imports of the CLI's modules, and creating a fresh Dagster instance."""
    code = (
        "import time; t=time.perf_counter(); import lsvq_assets.cli, lsvq_assets.runner, lsvq_assets.definitions; "
        "i=time.perf_counter()-t; import dagster as dg; t=time.perf_counter(); dg.DagsterInstance.get().get_runs(); "
        "print(i, time.perf_counter()-t)"
    )
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    home = fresh_home(work)
    t = time.perf_counter()
    out = subprocess.run([PY, "-c", code], env=clean_env(home), capture_output=True, text=True, check=True)
    total = time.perf_counter() - t
    imports, instance = map(float, out.stdout.split())
    return {"process_s": total, "imports_s": imports, "fresh_instance_s": instance}


def manifest_parse(work: Path, rows: int, repeat: int = 3) -> dict:
    """A ``rows``-row PatchVQ CSV (51 folders, 38 columns) parsed and sliced, in a fresh process."""
    from lsvq_assets_tests.manifest_fixtures import labels_pairs, write_labels_txt, write_patchvq_csv

    work.mkdir(parents=True, exist_ok=True)
    csv_path, txt_path = work / f"LSVQ_whole_train-{rows}.csv", work / f"labels-{rows}.txt"
    if not csv_path.exists():
        write_patchvq_csv(csv_path, rows, columns=38)
    if not txt_path.exists():
        write_labels_txt(txt_path, labels_pairs(rows))
    code = (
        "import sys, time, json\nfrom pathlib import Path\n"
        "from lsvq_assets.core.manifest import read_manifest\n"
        "from lsvq_assets.core.partitioning import Plan, partition_rows\n"
        "out = {}\n"
        "for path in sys.argv[2:]:\n"
        "    times = []\n"
        f"    for _ in range({repeat}):\n"
        "        t = time.perf_counter(); m = read_manifest(Path(path)); plan = Plan({'train': m}, partition_rows([m.rows]), 0)\n"
        "        times.append(time.perf_counter() - t)\n"
        "    out[path] = {'times_s': times, 'rows': len(m.rows), 'slices': len(plan.partitions), 'format': m.format}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([PY, "-c", code, str(work), str(csv_path), str(txt_path)], capture_output=True, text=True, check=True, cwd=REPO)
    res = json.loads(done.stdout)
    by = {("csv" if p.endswith(".csv") else "labels"): v for p, v in res.items()}
    for v in by.values():
        v["first_s"], v["median_s"] = v["times_s"][0], statistics.median(v["times_s"])
    return by


def archive_available() -> tuple[bool, str]:
    try:
        from lsvq_assets.settings import SETTINGS
        from lsvq_assets.sources.archive import ArchiveClipSource  # noqa: F401
    except ImportError as exc:
        return False, f"sources/archive.py not importable ({exc})"
    # The settings table says which values a flag takes (argparse has no choices for it).
    source = next((s for s in SETTINGS if s.flag == "--source"), None)
    if source is None or "archive" not in str(source.rule).split("|"):
        return False, "the CLI has no --source archive"
    return True, ""


# --------------------------------------------------------------------------- report


def fmt_s(x: float) -> str:
    return f"{x:7.2f}s"


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


def evaluate(res: dict) -> list[dict]:
    """PASS/FAIL per target, for the default configuration and (where it applies) the proposed one."""
    out = []
    lat = res["latency"]
    n = res["config"]["clips"]

    cfg = res["config"]
    # The targets are defined on these sizes; other sizes are reported, not judged.
    sized = {
        "speedup_0ms": cfg["clips"] == 500,
        "speedup_100ms": cfg["clips"] == 500,
        "dagster_overhead_pct_100ms": cfg["clips"] == 500 and cfg["folders"] == 1,
        "big_clip_peak_rss_mb": cfg["big_mib"] >= 1024,
        "manifest_parse_s": cfg["manifest_rows"] >= 39000,
        "archive_vs_url": True,
    }
    il = res.get("interleaved")
    il_cfg = il["config"] if il else {}
    il_sized = (il_cfg.get("rows"), il_cfg.get("cap"), il_cfg.get("folders")) == (1000, 500, 4)
    sized["interleaved_speedup_0ms"] = sized["interleaved_speedup_100ms"] = il_sized

    def add(target: str, want: str, got: str, ok: bool | None, variant: str = "default") -> None:
        if ok is not None and not sized[target]:
            ok, got = None, got + " (target defined on the default sizes: not judged)"
        out.append({"target": target, "variant": variant, "want": want, "got": got, "ok": ok})

    for ms, name in ((0, "speedup_0ms"), (100, "speedup_100ms")):
        for variant in ("project", "tuned"):
            r = lat.get(str(ms), {}).get(variant)
            if variant == "tuned" and not r:
                continue
            ratio = r.get("speedup") if r else None
            add(name, f">= {TARGETS[name]:g}x the seed baseline ({n} clips, {ms} ms)", f"{ratio:.1f}x" if ratio else "not measured",
                None if ratio is None else ratio >= TARGETS[name], "default" if variant == "project" else "proposed")
    for variant in ("project", "tuned"):
        r = lat.get("100", {}).get(variant)
        if variant == "tuned" and not r:
            continue
        pct = r["dagster_overhead_slice_pct"] if r else None
        add("dagster_overhead_pct_100ms", f"<= {TARGETS['dagster_overhead_pct_100ms']:g}% of the slice run's wall time (100 ms)",
            f"{pct:.1f}% ({r['dagster_overhead_slice_s']:.2f}s of {r['slice_run_wall_s']:.2f}s)" if r else "not measured",
            None if pct is None else pct <= TARGETS["dagster_overhead_pct_100ms"], "default" if variant == "project" else "proposed")
    big = res.get("big_clip")
    add("big_clip_peak_rss_mb", f"<= {TARGETS['big_clip_peak_rss_mb']:g} MB peak RSS ingesting one {res['config']['big_mib']} MiB clip",
        f"{big['peak_rss_mb']:.0f} MB, {big['rows']} row" if big else "not measured",
        None if not big else big["peak_rss_mb"] <= TARGETS["big_clip_peak_rss_mb"] and big["rows"] == 1)
    man = res.get("manifest")
    worst = max(v["median_s"] for v in man.values()) if man else None
    add("manifest_parse_s", f"< {TARGETS['manifest_parse_s']:g}s to parse and slice {res['config']['manifest_rows']} rows",
        ", ".join(f"{k} {v['median_s']:.2f}s" for k, v in man.items()) if man else "not measured",
        None if worst is None else worst < TARGETS["manifest_parse_s"])
    if il:
        for ms, name in ((0, "interleaved_speedup_0ms"), (100, "interleaved_speedup_100ms")):
            r = il["latency"].get(str(ms), {}).get("project")
            ratio = r.get("speedup") if r else None
            add(name, f">= {TARGETS[name]:g}x the seed ({il_cfg['cap']} of {il_cfg['rows']} rows over {il_cfg['folders']} folders, interleaved, {ms} ms)",
                f"{ratio:.1f}x" if ratio else "not measured", None if ratio is None else ratio >= TARGETS[name])
    ratios = {ms: r["archive"]["vs_url"] for ms, r in lat.items() if r.get("archive")}
    add("archive_vs_url", f"archive source within {100 * (TARGETS['archive_vs_url'] - 1):.0f}% of the per-clip source (wall, same bytes)",
        ", ".join(f"{v:.2f}x at {ms} ms" for ms, v in ratios.items()) or res.get("archive_skipped", "not measured"),
        None if not ratios else all(v <= TARGETS["archive_vs_url"] for v in ratios.values()))
    return out


def describe_tuned(args: argparse.Namespace) -> str | None:
    if not args.tuned_concurrency:
        return None
    parts = [f"--concurrency {args.tuned_concurrency}"]
    if args.tuned_gc:
        parts.append("gc.freeze() after the CLI's imports and before exit (proposed __main__.py change)")
    if args.tuned_instance:
        parts.append("consolidated SQLite event storage and no compute-log capture (dagster.yaml)")
    return " + ".join(parts)


def print_report(res: dict) -> None:
    cfg = res["config"]
    log("")
    if not res["latency"]:
        log(f"(one-folder case not run); {res['machine']['cpus']} CPUs; load average {res['load_avg_start'][0]:.1f} at the start, "
            f"{res['load_avg_end'][0]:.1f} at the end")
    else:
        log(f"== {cfg['clips']} clips x {cfg['clip_kb']} KB ({cfg['corpus_mb']} MB) in {cfg['folders']} folder(s); "
            f"{res['machine']['cpus']} CPUs; load average {res['load_avg_start'][0]:.1f} at the start, {res['load_avg_end'][0]:.1f} at the end ==")
    log("default = the CLI as it is (concurrency " + str(cfg["concurrency"] or "default") + ")"
        + (f"; proposed = {cfg['proposed']}" if cfg.get("proposed") else ""))
    head = f"{'latency':>8} {'variant':>8} {'wall':>8} {'clips/s':>8} {'CPU':>7} {'vs seed':>8} {'Dagster':>8} {'% slice':>8} {'RSS MB':>7}"
    log(head)
    for ms, r in res["latency"].items():
        seed = r.get("seed")
        if seed:
            log(f"{ms + ' ms':>8} {'seed':>8} {seed['wall_s']:7.2f}s {seed['clips_per_s']:8.1f} {'':>7} {'1.0x':>8} {'':>8} {'':>8} {seed['peak_rss_mb']:7.0f}")
        for name in ("project", "tuned", "archive"):
            p = r.get(name)
            if not p:
                continue
            vs = f"{seed['wall_s'] / p['wall_s']:.1f}x" if seed else "-"
            label = {"project": "default", "tuned": "proposed", "archive": "archive"}[name]
            log(f"{ms + ' ms':>8} {label:>8} {p['wall_s']:7.2f}s {p['clips_per_s']:8.1f} {p['cpu_s']:6.1f}s {vs:>8} "
                f"{p['dagster_overhead_slice_s']:7.2f}s {p['dagster_overhead_slice_pct']:7.1f}% {p['peak_rss_mb']:7.0f}")
    for ms, r in res["latency"].items():
        for name in ("project", "tuned"):
            p = r.get(name)
            if not p:
                continue
            log(f"\n-- time per stage at {ms} ms, {'default' if name == 'project' else 'proposed'} (median run) --")
            for stage, v in p["stage_s"].items():
                log(f"   {stage:52s} {v:7.3f}s")
            log(f"   {'= CLI wall time':52s} {p['wall_s']:7.3f}s  (runs: {', '.join(f'{w:.2f}' for w in p['all_wall_s'])}s)")
            log(f"   sha256 inside the download ~{p['hash_estimate_s']:.3f}s; {p['probed_ahead']:.0f} clips probed while downloading; "
                f"Dagster {p['dagster_overhead_slice_s']:.3f}s = {p['dagster_overhead_slice_pct']:.1f}% of the slice run "
                f"({p['slice_run_wall_s']:.2f}s), {p['dagster_overhead_slice_incl_around_pct']:.1f}% with plan and run creation")
            if p.get("rows_agree"):
                log(f"   rows vs seed: {p['rows_agree']}")
        if r.get("seed"):
            log(f"   seed baseline: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["seed"]["stage_s"].items()))
        if r.get("archive"):
            log(f"   archive: {r['archive']['wall_s']:.2f}s = {r['archive']['vs_url']:.2f}x the per-clip source; {r['archive']['rows_agree_with_url']}")
    il = res.get("interleaved")
    if il:
        c = il["config"]
        log(f"\n-- {c['cap']} rows of a {c['rows']}-row manifest, rows cycling through {c['folders']} folders "
            f"(--max-rows {c['cap']}; {c['clip_kb']} KB clips) --")
        for ms, r in il["latency"].items():
            seed, p = r.get("seed"), r.get("project")
            if seed:
                log(f"{ms + ' ms':>8} {'seed':>8} {seed['wall_s']:7.2f}s {seed['clips_per_s']:8.1f}")
            if p:
                vs = f"{p['speedup']:.1f}x" if p.get("speedup") else "-"
                log(f"{ms + ' ms':>8} {'default':>8} {p['wall_s']:7.2f}s {p['clips_per_s']:8.1f} CPU {p['cpu_s']:5.1f}s {vs:>7} vs seed; "
                    f"{len(p['runs']) - 1} slice run(s), Dagster in slice runs {p['dagster_overhead_slice_s']:.2f}s, "
                    f"{p['clip_requests']} clip requests, {p['rows_written']} rows, peak RSS {p['peak_rss_mb']:.0f} MB "
                    f"(runs: {', '.join(f'{w:.2f}' for w in p['all_wall_s'])}s)")
                if p.get("rows_agree"):
                    log(f"         rows vs seed: {p['rows_agree']}")
    st = res.get("startup")
    if st:
        log(f"\nstartup, measured alone: interpreter + imports of the CLI's modules {st['imports_s']:.2f}s, "
            f"creating a fresh Dagster instance {st['fresh_instance_s']:.2f}s (process total {st['process_s']:.2f}s)")
    big = res.get("big_clip")
    if big:
        log(f"big clip: {cfg['big_mib']} MiB in {big['wall_s']:.1f}s, peak RSS {big['peak_rss_mb']:.0f} MB "
            f"(largest process {big['maxrss_mb']:.0f} MB, tree sampled {big['tree_peak_mb']:.0f} MB), rows {big['rows']}")
    man = res.get("manifest")
    if man:
        for k, v in man.items():
            log(f"manifest {k}: {v['rows']} rows, {v['slices']} slices, parse+slice median {v['median_s']:.3f}s (first {v['first_s']:.3f}s)")
    log("\n== targets ==")
    for t in res["targets"]:
        log(f"{verdict(t['ok']):4s}  {t['target']:28s} {t['variant']:8s} want {t['want']}; got {t['got']}")


# The stages in the order they happen, coloured by kind: grey = Python and Dagster start-up,
# blues/greens = the assets' work, reds = Dagster's own time.
STAGE_COLORS = {
    "startup (interpreter, imports, manifest, instance)": "#9e9e9e",
    "manifest asset": "#9ecae1",
    "download (hash while streaming, write, fsync)": "#1f77b4",
    "probe (what did not overlap the download)": "#17becf",
    "store (clip-state SQLite)": "#2ca02c",
    "other asset work (parquet, metadata)": "#98df8a",
    "rows asset": "#bcbd22",
    "Dagster: inside slice runs": "#d62728",
    "Dagster: around slice runs (plan, run creation)": "#ff9896",
    "shard asset": "#8c564b",
    "Dagster: shard run (in and around it), exit": "#e377c2",
}


def save_results(res: dict, results: Path, prefix: str, plot_fn: Callable[[dict, Path], str | None]) -> tuple[str, Path, str | None]:
    """Write ``res`` to ``results/<prefix><timestamp>.json`` and ``<prefix>latest.json``, and its plot beside.

    Returns the JSON text, the plot's path and why there is no plot (None: drawn).
    """
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{prefix}{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    text = json.dumps(res, indent=2, sort_keys=True, default=str) + "\n"
    out.write_text(text)
    (results / f"{prefix}latest.json").write_text(text)
    png = out.with_suffix(".png")
    why = plot_fn(res, png)
    log(f"\nresults -> {out}" + (f"\nplot -> {png}" if why is None else f"\n{why}"))
    return text, png, why


def plot(res: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): plot skipped"
    lat = res["latency"]
    keys = list(lat)
    if not keys:
        return "no one-folder case measured: plot skipped"
    proposed = f"--concurrency {res['config'].get('tuned_concurrency')}"
    if res["config"].get("tuned_gc"):
        proposed += " + gc.freeze()"
    if res["config"].get("tuned_instance"):
        proposed += " + tuned instance"
    series = [
        ("seed", "seed script: curl + ffprobe per clip, sequential", "#b0b0b0"),
        ("project", "project: CLI + Dagster, per-clip URLs", "#1f77b4"),
        ("tuned", f"project, proposed ({proposed})", "#2ca02c"),
        ("archive", "project, folder archives (--source archive)", "#7fb8e0"),
    ]
    series = [s for s in series if any(lat[k].get(s[0]) for k in keys)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6), gridspec_kw={"width_ratios": [1, 1.4]})
    ax = axes[0]
    w = 0.8 / len(series)
    for j, (name, label, color) in enumerate(series):
        xs = [i - 0.4 + w * (j + 0.5) for i in range(len(keys))]
        vals = [lat[k][name]["wall_s"] if lat[k].get(name) else 0 for k in keys]
        ax.bar(xs, vals, w, label=label, color=color)
        for x, k, v in zip(xs, keys, vals):
            seed = lat[k].get("seed")
            if v and seed and name != "seed":
                ax.annotate(f"{seed['wall_s'] / v:.0f}x", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)), [f"{k} ms per request" for k in keys])
    ax.set_ylabel("wall time, s (log scale; lower is better)")
    ax.set_yscale("log")
    ax.set_ylim(1, max(lat[k]["seed"]["wall_s"] for k in keys if lat[k].get("seed")) * 1.6 if any(lat[k].get("seed") for k in keys) else None)
    ax.set_title(f"{res['config']['clips']} clips x {res['config']['clip_kb']} KB from loopback (x = speedup)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    ax = axes[1]
    rows = [(k, v) for k in keys for v in ("project", "tuned") if lat[k].get(v)]
    present = set(lat[keys[0]]["project"]["stage_s"])
    stages = [st for st in STAGE_COLORS if st in present] + sorted(present - set(STAGE_COLORS))
    left = [0.0] * len(rows)
    for stage in stages:
        vals = [lat[k][v]["stage_s"].get(stage, 0.0) for k, v in rows]
        ax.barh(range(len(rows)), vals, left=left, label=stage, color=STAGE_COLORS.get(stage, "#999999"))
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(rows)), [f"{k} ms, {'default' if v == 'project' else 'proposed'}" for k, v in rows])
    ax.invert_yaxis()
    ax.set_xlabel("s: the project's CLI wall time by stage (median run)")
    ax.set_title("where the project's time goes")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    notes = []
    if res.get("big_clip"):
        notes.append(f"peak RSS ingesting one {res['config']['big_mib']} MiB clip: {res['big_clip']['peak_rss_mb']:.0f} MB")
    if res.get("manifest"):
        notes.append("39k-row manifest parsed + sliced: " + ", ".join(f"{k} {v['median_s']:.2f}s" for k, v in res["manifest"].items()))
    notes.append(f"{res['machine']['cpus']} CPUs, load average {res['load_avg_start'][0]:.1f}")
    fig.text(0.01, 0.01, "; ".join(notes), fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def run_interleaved(args: argparse.Namespace, work: Path, runs_dirs: RunDirs, hash_rate: float, extra_conc: list[str], seed_ok: bool) -> dict:
    """The first ``cap`` rows of a manifest whose rows cycle through ``folders`` folders: the seed and the CLI."""
    from lsvq_assets_tests.loopback import LoopbackServer

    spec = CorpusSpec(clips=args.interleaved_rows, clip_kb=args.clip_kb, folders=args.interleaved_folders, interleave=True)
    corpus = build_corpus(work / "corpus", spec, log)
    cap = args.interleaved_cap
    out: dict = {
        "config": {"rows": spec.clips, "cap": cap, "folders": spec.folders, "clip_kb": spec.clip_kb, "key": spec.key},
        "latency": {},
    }
    for ms in args.latency_ms:
        entry: dict = {}
        with LoopbackServer(corpus.root, latency_s=ms / 1000) as server:
            tpl = server.base_url + "/{name}{suffix}"
            if seed_ok and not args.no_baseline:
                log(f"[{ms} ms, interleaved] seed baseline: {cap} of {spec.clips} rows over {spec.folders} folders ...")
                entry["seed"] = run_seed(corpus, server.base_url, runs_dirs.new("il-seed"), max_rows=cap)
                log(f"[{ms} ms, interleaved] seed: {entry['seed']['wall_s']:.1f}s ({entry['seed']['clips_per_s']:.1f} clips/s)")
            runs = []
            for i in range(args.repeat):
                server.reset_log()
                r = run_project(corpus, runs_dirs.new("il-project"), ["--clip-url-template", tpl, *extra_conc], hash_rate, max_rows=cap)
                r["clip_requests"] = server.count()
                r["rows_written"] = r["rows"]
                log(f"[{ms} ms, interleaved] project run {i + 1}/{args.repeat}: {r['wall_s']:.2f}s ({r['clips_per_s']:.0f} clips/s, "
                    f"CPU {r['cpu_s']:.1f}s), {len(r['runs'])} Dagster runs, {r['clip_requests']} clip requests, "
                    f"{r['rows']} rows, peak RSS {r['peak_rss_mb']:.0f} MB, load {r['load_avg']:.1f}")
                runs.append(r)
            entry["project"] = median_run(runs)
        if entry.get("seed"):
            p = entry["project"]
            p["speedup"] = entry["seed"]["wall_s"] / p["wall_s"]
            ok, why = rows_agree(entry["seed"]["rows"], p["_rows"])
            p["rows_agree"] = why if ok else "MISMATCH: " + why
            entry["seed"].pop("rows", None)
        entry["project"].pop("_rows", None)
        out["latency"][str(ms)] = entry
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--clips", type=int, default=500, help="clips in the corpus (default 500)")
    a("--clip-kb", type=int, default=200, help="each clip padded to this size with a 'free' box (default 200; 0 = as encoded)")
    a("--folders", type=int, default=1, help="LSVQ folders (slices) the clips are spread over (default 1)")
    a("--latency-ms", type=int, nargs="+", default=[0, 100], help="per-request latencies to measure (default: 0 100)")
    a("--concurrency", type=int, default=None, help="passed to the CLI as --concurrency (default: the project's default)")
    a("--tuned-concurrency", type=int, default=0,
      help="also run a 'proposed' configuration with this --concurrency (0 = skip, the default: the CLI's own window already widens to 64 at latency)")
    a("--tuned-gc", action=argparse.BooleanOptionalAction, default=True,
      help="the proposed configuration calls gc.freeze() after the CLI's imports and before it exits (default: yes)")
    a("--tuned-instance", action="store_true",
      help="the proposed configuration also uses consolidated SQLite event storage and no compute-log capture")
    a("--repeat", type=int, default=3, help="project runs per latency; the median is reported (default 3)")
    a("--big-mib", type=int, default=1024, help="size of the memory-case clip in MiB (0 = skip; default 1024)")
    a("--manifest-rows", type=int, default=39000, help="rows of the generated manifest to parse (0 = skip)")
    a("--no-baseline", action="store_true", help="skip the seed baseline (no ratios)")
    a("--cases", nargs="+", choices=("one-folder", "interleaved"), default=["one-folder", "interleaved"],
      help="one-folder: --clips clips in --folders folder(s), --full (with the proposed and archive variants); "
           "interleaved: --interleaved-cap rows of an --interleaved-rows manifest cycling through --interleaved-folders folders "
           "(seed and default CLI). Default: both")
    a("--interleaved-rows", type=int, default=1000, help="rows of the interleaved case's manifest (default 1000)")
    a("--interleaved-cap", type=int, default=500, help="--max-rows of the interleaved case (default 500)")
    a("--interleaved-folders", type=int, default=4, help="folders the interleaved manifest cycles through (default 4)")
    a("--no-archive", action="store_true", help="skip the archive source")
    a("--work", type=Path, default=REPO / ".bench", help="corpus cache and working directories (default .bench/)")
    a("--results", type=Path, default=REPO / "benchmarks" / "results", help="where the JSON and PNG go")
    a("--max-load", type=float, default=None,
      help="before each measured run, wait (up to 5 min) for the 1-minute load average to drop under this (shared machines)")
    a("--replot", type=Path, default=None, help="only draw the plot again from a results JSON (to --results)")
    a("--publish", action="store_true", help="also write docs/benchmark.png and benchmarks/published.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        res = json.loads(args.replot.read_text())
        png = args.results / (args.replot.stem + ".png")
        why = plot(res, png)
        log(why or f"plot -> {png}")
        if why is None and args.publish:
            shutil.copyfile(png, REPO / "docs" / "benchmark.png")
            log("published -> docs/benchmark.png")
        return 0
    global MAX_LOAD
    MAX_LOAD = args.max_load
    from lsvq_assets_tests.loopback import LoopbackServer

    started = time.time()
    work = args.work.absolute()
    one_folder = "one-folder" in args.cases
    spec = CorpusSpec(clips=args.clips, clip_kb=args.clip_kb, folders=args.folders)
    corpus = build_corpus(work / "corpus", spec, log) if one_folder else None
    hash_rate = hashlib_mb_s()
    extra_conc = ["--concurrency", str(args.concurrency)] if args.concurrency else []
    res: dict = {
        "schema": "lsvq-bench-v1",
        "when_utc": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {
            "clips": args.clips,
            "clip_kb": args.clip_kb,
            "folders": args.folders,
            "corpus_mb": round(corpus.bytes / 1e6, 1) if corpus else None,
            "cases": list(args.cases),
            "concurrency": args.concurrency,
            "tuned_concurrency": args.tuned_concurrency,
            "tuned_gc": bool(args.tuned_concurrency and args.tuned_gc),
            "tuned_instance": TUNED_YAML if args.tuned_concurrency and args.tuned_instance else None,
            "proposed": describe_tuned(args),
            "repeat": args.repeat,
            "big_mib": args.big_mib,
            "manifest_rows": args.manifest_rows,
        },
        "hashlib_sha256_mb_s": round(hash_rate),
        "load_avg_start": os.getloadavg(),
        "latency": {},
    }
    tools_ok = True
    if not args.no_baseline:
        try:
            seed_baseline.find_tools()
        except seed_baseline.Missing as exc:
            log(f"seed baseline skipped: {exc}")
            res["baseline_skipped"] = str(exc)
            tools_ok = False
    arc_ok, arc_why = (False, "--no-archive") if args.no_archive else archive_available()
    if not arc_ok:
        log(f"archive source skipped: {arc_why}")
        res["archive_skipped"] = f"skipped: {arc_why}"
    archives = build_archives(corpus, work / "archives" / spec.key, log) if arc_ok and corpus else None
    runs_dirs = RunDirs(work / "run")  # each run in a directory of its own (see RunDirs)

    for ms in args.latency_ms if one_folder else []:
        entry: dict = {}
        with LoopbackServer(corpus.root, latency_s=ms / 1000) as server:
            tpl = server.base_url + "/{name}{suffix}"
            if tools_ok and not args.no_baseline:
                log(f"[{ms} ms] seed baseline: {len(corpus.names)} clips, one curl + one ffprobe each ...")
                entry["seed"] = run_seed(corpus, server.base_url, runs_dirs.new("seed"))
                log(f"[{ms} ms] seed: {entry['seed']['wall_s']:.1f}s ({entry['seed']['clips_per_s']:.1f} clips/s)")
            variants = {"project": (extra_conc, False, False)}
            if args.tuned_concurrency:
                variants["tuned"] = (["--concurrency", str(args.tuned_concurrency)], args.tuned_instance, args.tuned_gc)
            for name, (extra, tuned, gc_freeze) in variants.items():
                runs = []
                for i in range(args.repeat):
                    r = run_project(corpus, runs_dirs.new(name), ["--clip-url-template", tpl, *extra], hash_rate, tuned, gc_freeze)
                    log(f"[{ms} ms] {name} run {i + 1}/{args.repeat}: {r['wall_s']:.2f}s ({r['clips_per_s']:.0f} clips/s, "
                        f"CPU {r['cpu_s']:.1f}s), Dagster {r['dagster_overhead_slice_s']:.2f}s = "
                        f"{r['dagster_overhead_slice_pct']:.1f}% of the slice run, peak RSS {r['peak_rss_mb']:.0f} MB, load {r['load_avg']:.1f}")
                    runs.append(r)
                entry[name] = median_run(runs)
        if entry.get("seed"):
            for name in ("project", "tuned"):
                if name in entry:
                    entry[name]["speedup"] = entry["seed"]["wall_s"] / entry[name]["wall_s"]
                    ok, why = rows_agree(entry["seed"]["rows"], entry[name]["_rows"])
                    entry[name]["rows_agree"] = why if ok else "MISMATCH: " + why
            entry["speedup"] = entry["project"]["speedup"]
        if archives is not None:
            with LoopbackServer(archives, latency_s=ms / 1000) as server:
                extra = ["--source", "archive", "--archive-url-template", server.base_url + "/{folder}.tar.gz", *extra_conc]
                arcs = [run_project(corpus, runs_dirs.new("archive"), extra, hash_rate) for _ in range(args.repeat)]
            arc = median_run(arcs)
            ok, why = rows_agree(entry["project"]["_rows"], arc["_rows"])
            arc["vs_url"] = arc["wall_s"] / entry["project"]["wall_s"]
            arc["rows_agree_with_url"] = why if ok else "MISMATCH: " + why
            log(f"[{ms} ms] archive source: {arc['wall_s']:.2f}s ({arc['vs_url']:.2f}x the per-clip source)")
            entry["archive"] = arc
        for part in ("seed", "project", "tuned", "archive"):
            if part in entry:
                entry[part].pop("_rows", None)
                entry[part].pop("rows", None) if part == "seed" else None
        res["latency"][str(ms)] = entry

    if "interleaved" in args.cases:
        res["interleaved"] = run_interleaved(args, work, runs_dirs, hash_rate, extra_conc, tools_ok)
    res["startup"] = startup_costs(runs_dirs.new("startup"))
    if args.big_mib:
        big = build_big_clip(work / "corpus", args.big_mib << 20, log)
        with LoopbackServer(big.root) as server:
            log(f"memory case: one {args.big_mib} MiB clip through the CLI ...")
            r = run_project(big, big_dir := runs_dirs.new("big"), ["--clip-url-template", server.base_url + "/{name}{suffix}"], hash_rate)
        r.pop("_rows", None)
        res["big_clip"] = r
        shutil.rmtree(big_dir, ignore_errors=True)  # 1 GiB
    if args.manifest_rows:
        res["manifest"] = manifest_parse(work / "manifest", args.manifest_rows)
    runs_dirs.remove(keep=False)  # working copies of the clips; the corpus stays cached
    res["load_avg_end"] = os.getloadavg()
    res["targets"] = evaluate(res)
    res["elapsed_s"] = time.time() - started
    print_report(res)

    text, png, why = save_results(res, args.results, "", plot)
    if args.publish:
        (REPO / "benchmarks" / "published.json").write_text(text)
        if why is None:
            shutil.copyfile(png, REPO / "docs" / "benchmark.png")
        log("published -> benchmarks/published.json" + (", docs/benchmark.png" if why is None else ""))
    log(f"benchmark took {res['elapsed_s']:.0f}s")
    return 0
