"""The CLI as a user runs it: ``main([...])`` in-process (``--dry-run``, errors, a real run), plus
``python -m lsvq_assets`` in a subprocess once (the entry point, exit codes, stderr as a terminal sees it)."""

from __future__ import annotations

import gc
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.manifest_fixtures import FOLDERS, labels_pairs, write_alias_csv, write_labels_txt, write_patchvq_csv

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LSVQ_", "DAGSTER_"))}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    base["DAGSTER_HOME"] = str(cwd / ".dagster-home-unused")
    return subprocess.run(
        [sys.executable, "-m", "lsvq_assets", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dry_run(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> dict:
    proc = run_cli(cwd, "--dry-run", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


@dataclass
class InProcess:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``lsvq_assets.cli.main`` in this process, with only the given LSVQ_* variables set."""
    for var in [v for v in os.environ if v.startswith(("LSVQ_", "DAGSTER_HOME", "FFPROBE_BIN", "HF_TOKEN"))]:
        monkeypatch.delenv(var)

    def call(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> InProcess:
        from lsvq_assets.cli import main

        with monkeypatch.context() as m:
            for var, value in (env or {}).items():
                m.setenv(var, value)
            if cwd is not None:
                m.chdir(cwd)
            capsys.readouterr()
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, an unknown flag
                code = int(exc.code or 0)
            finally:
                gc.unfreeze()  # main() freezes the collector for the rest of a CLI process
            captured = capsys.readouterr()
        return InProcess(code, captured.out, captured.err)

    return call


def in_dry_run(cli, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> dict:
    res = cli("--dry-run", *args, env=env, cwd=cwd)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    return json.loads(res.out)


def tree(path: Path) -> set[Path]:
    return {p.relative_to(path) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def labels_2000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "train_labels.txt"
    write_labels_txt(path, labels_pairs(2000))
    return path


def test_dry_run_full_labels(tmp_path: Path, labels_2000: Path, cli) -> None:
    before = tree(tmp_path)
    out = in_dry_run(cli, "--manifest-csv", str(labels_2000), "--full", cwd=tmp_path)
    label = out["label_files"]["train"]
    assert out["rows"] == 2000 and label["data_rows"] == 2000
    assert out["dropped"] == {}
    assert len(out["slices"]) == 51 and list(out["slices"]) == list(FOLDERS) and out["partitions"] == 51
    assert sum(out["slices"].values()) == 2000
    assert out["splits"] == {"train": {"rows": 2000, "partitions": 51}}
    assert label["format"] == "labels" and out["max_rows"] == 0
    assert label["path"] == str(labels_2000)
    assert label["defaulted"] == ["mos_std_dev", "n_ratings"]
    assert tree(tmp_path) == before  # a dry run writes nothing


def test_dry_run_default_cap_and_max_rows(tmp_path: Path, labels_2000: Path, cli) -> None:
    default = in_dry_run(cli, "--manifest-csv", str(labels_2000), cwd=tmp_path)
    ten = in_dry_run(cli, "--manifest-csv", str(labels_2000), "--max-rows", "10", cwd=tmp_path)
    assert default["rows"] == 500 and default["max_rows"] == 500 and default["label_files"]["train"]["data_rows"] == 2000
    assert default["partitions"] == 51  # every partition exists; the cap selects which run
    assert list(default["slices"]) == list(FOLDERS)[: len(default["slices"])]  # first rows, in order
    assert ten["rows"] == 10 and ten["slices"] == {FOLDERS[0]: len(labels_pairs(2000)) // 51} and ten["max_rows"] == 10


def test_capped_plan_lists_whole_partitions(tmp_path: Path, labels_2000: Path, cli) -> None:
    """What a partition holds never depends on the cap: the capped plan's partitions have the
    rows they have with --full, the last one included (the shard takes only the capped rows)."""
    full = in_dry_run(cli, "--manifest-csv", str(labels_2000), "--full", cwd=tmp_path)
    for cap in ("500", "1", "77"):
        capped = in_dry_run(cli, "--manifest-csv", str(labels_2000), "--max-rows", cap, cwd=tmp_path)
        assert capped["slices"] and capped["rows"] == int(cap)
        assert capped["slices"] == {k: full["slices"][k] for k in capped["slices"]}, cap
        assert sum(capped["slices"].values()) >= int(cap)


def test_dry_run_patchvq_csv(tmp_path: Path, cli) -> None:
    csv_path = tmp_path / "LSVQ_whole_test.csv"
    write_patchvq_csv(csv_path, 1500, columns=38, crlf=True, extra_rows=[("../escape", 50), ("a/x", "nan"), ("yfcc-batch1/700", 5)])
    out = in_dry_run(cli, "--manifest-csv", "LSVQ_whole_test.csv", "--full", cwd=tmp_path)  # relative to the cwd
    label = out["label_files"]["train"]
    assert label["format"] == "csv" and label["data_rows"] == 1503 and out["rows"] == 1500
    assert out["dropped"] == {"path-traversal": 1, "bad-mos": 1, "duplicate-name": 1}
    assert len(out["slices"]) == 51
    assert label["path"] == str(csv_path)


def test_min_csv_rows_flag_accepts_a_small_file(tmp_path: Path, cli) -> None:
    path = tmp_path / "small.csv"
    write_alias_csv(path, ["name", "mos"], [[f"a/{i}", "50"] for i in range(5)])
    refused = cli("--dry-run", "--manifest-csv", str(path), cwd=tmp_path)
    assert refused.code == 2 and "--min-csv-rows 5" in refused.err
    out = in_dry_run(cli, "--manifest-csv", str(path), "--min-csv-rows", "5", cwd=tmp_path)
    assert out["rows"] == 5 and out["slices"] == {"a": 5}


def test_two_splits_dry_run(tmp_path: Path, cli) -> None:
    train, test = tmp_path / "train_labels.txt", tmp_path / "labels_test.txt"
    write_labels_txt(train, labels_pairs(1200, FOLDERS[:3]))
    write_alias_csv(test, ["name", "mos"], [[f"{FOLDERS[1]}/t{i}", "50"] for i in range(4)] + [[f"zz/{i}", "40"] for i in range(3)])
    out = in_dry_run(cli, "--split", f"train={train}", "--split", f"test={test}", "--min-csv-rows", "1", "--full", cwd=tmp_path)
    assert out["splits"] == {"train": {"rows": 1200, "partitions": 3}, "test": {"rows": 7, "partitions": 2}}
    assert list(out["slices"]) == [*FOLDERS[:3], "zz"] and out["slices"][FOLDERS[1]] == 400 + 4  # both splits' rows
    assert {s: f["path"] for s, f in out["label_files"].items()} == {"train": str(train), "test": str(test)}
    # The same through LSVQ_SPLITS.
    env = {"LSVQ_SPLITS": f"train={train},test={test}", "LSVQ_MIN_CSV_ROWS": "1", "LSVQ_MAX_ROWS": "0"}
    assert in_dry_run(cli, env=env, cwd=tmp_path) == out


def _one_error_line(res: InProcess) -> str:
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert res.out == ""
    return lines[0]


def test_split_errors_name_the_split_and_the_file(tmp_path: Path, cli) -> None:
    good = tmp_path / "train.csv"
    write_alias_csv(good, ["name", "mos"], [[f"a/{i}", "50"] for i in range(5)])
    missing = tmp_path / "nope_test.csv"
    cases = {
        "bad-name": ((f"Test-1={good}",), ["Test-1", str(good)]),
        "missing": ((f"test={missing}",), ["test", str(missing), "not found"]),
        "twice": ((f"train={good}", f"train={missing}"), ["train", str(good), str(missing)]),
        "no-path": (("test",), ["test", "NAME=PATH"]),
    }
    for case, (specs, needles) in cases.items():
        args = [a for spec in specs for a in ("--split", spec)]
        line = _one_error_line(cli("--dry-run", *args, "--min-csv-rows", "1", cwd=tmp_path))
        assert all(n in line for n in needles), (case, line)
        env_line = _one_error_line(cli("--dry-run", "--min-csv-rows", "1", env={"LSVQ_SPLITS": ",".join(specs)}, cwd=tmp_path))
        assert all(n in env_line for n in needles), (case, env_line)


def test_output_names_one_shard_so_two_splits_refuse_it(tmp_path: Path, cli) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path, folder in ((a, "x"), (b, "y")):
        write_alias_csv(path, ["name", "mos"], [[f"{folder}/{i}", "50"] for i in range(5)])
    splits = ["--split", f"train={a}", "--split", f"test={b}", "--min-csv-rows", "1"]
    for extra, env in ((["--output", str(tmp_path / "o.jsonl")], None), ([], {"LSVQ_MANIFEST_OUT": str(tmp_path / "o.json")})):
        line = _one_error_line(cli("--dry-run", *splits, *extra, env=env, cwd=tmp_path))
        assert "--output" in line and "--output-dir" in line
    assert not any(tmp_path.glob("o.*"))
    # One split: --output is its shard.
    assert in_dry_run(cli, "--split", f"train={a}", "--min-csv-rows", "1", "--output", str(tmp_path / "o.jsonl"), cwd=tmp_path)["rows"] == 5


def _bad_values(s) -> list[str]:
    """Values a setting must refuse: not a number, out of its range, not one of its choices."""
    bad = []
    if s.kind in (int, float):
        bad.append("many")
    if s.kind is int:
        bad.append("2.5")
    if s.kind is bool:
        bad.append("maybe")
    bad += {"positive": ["0", "-3"], "non-negative": ["-1"], "fraction": ["1.5", "-0.1"]}.get(s.rule, [])
    if s.choices:
        bad += ["nope", s.choices[0].upper() + "x"]
    return bad


def _checked_settings():
    from lsvq_assets.settings import SETTINGS

    return [s for s in SETTINGS if s.rule or s.kind is not str]


def test_every_setting_refuses_a_bad_value_as_flag_and_as_variable(tmp_path: Path, cli) -> None:
    checked = _checked_settings()
    assert {s.var for s in checked} >= {"LSVQ_MAX_ROWS", "LSVQ_SOURCE", "LSVQ_PROBE_BACKEND", "LSVQ_KEEP_ARCHIVES", "LSVQ_MAX_RUNS_PER_TICK"}
    tried = 0
    for s in checked:
        for value in _bad_values(s):
            if s.flag and s.kind is not bool:  # a bool flag takes no value (--keep-archives)
                line = _one_error_line(cli("--dry-run", s.flag, value, cwd=tmp_path))
                assert s.flag in line and repr(value) in line and s.var not in line, line
                assert s.accepted in line, line
                tried += 1
            line = _one_error_line(cli("--dry-run", env={s.var: value}, cwd=tmp_path))
            assert s.var in line and repr(value) in line and s.accepted in line, line
            tried += 1
    assert tried >= 2 * len(checked)
    # A good value of each passes the check (the run then stops at the missing label file, a different error).
    for s in checked:
        good = {bool: "true", int: "1", float: "0.5"}.get(s.kind, s.choices[0] if s.choices else "x")
        line = _one_error_line(cli("--dry-run", env={s.var: good}, cwd=tmp_path))
        assert "manifest not found" in line, (s.var, line)


def test_one_subprocess_smoke_run(tmp_path: Path, labels_2000: Path) -> None:
    """The real entry point: exit codes, stdout JSON, one stderr line for a bad value."""
    assert dry_run(tmp_path, "--manifest-csv", str(labels_2000), "--max-rows", "10")["rows"] == 10
    bad = run_cli(tmp_path, "--dry-run", env={"LSVQ_MAX_ROWS": "lots"})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: LSVQ_MAX_ROWS='lots': not a whole number >= 0."]
    assert bad.stdout == ""
    helped = run_cli(tmp_path, "--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "exit codes:" in helped.stdout


def _error_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (CLI args, substrings of the error line)."""
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "binary.csv").write_bytes(b"name,mos\n\x00\x01\x02" * 50)
    (tmp / "latin1.csv").write_bytes(b"name,mos\na/x,50\nb/caf\xe9,50\n")
    write_alias_csv(tmp / "nomos.csv", ["name", "height", "width"], [["a/x", "720", "1280"]] * 1200)
    write_patchvq_csv(tmp / "few.csv", 40, columns=5)
    return {
        "missing": (["--manifest-csv", str(tmp / "nope.csv")], ["nope.csv", "not found"]),
        "missing-dir": (["--lsvq-dir", str(tmp / "no-such-dir")], [str(tmp / "no-such-dir" / "manifest.csv"), "not found"]),
        "directory": (["--manifest-csv", str(tmp)], [str(tmp), "is a directory"]),
        "empty": (["--manifest-csv", str(tmp / "empty.csv")], ["empty.csv", "is empty"]),
        "binary": (["--manifest-csv", str(tmp / "binary.csv")], ["binary.csv", "not a text file"]),
        "not-utf8": (["--manifest-csv", str(tmp / "latin1.csv")], ["latin1.csv", "line 3", "not UTF-8"]),
        "no-mos": (["--manifest-csv", str(tmp / "nomos.csv")], ["nomos.csv", "no mos column", "'height'"]),
        "few-rows": (["--manifest-csv", str(tmp / "few.csv")], ["few.csv", "40 data rows", "--min-csv-rows 40"]),
        "bad-env": (["--manifest-csv", str(tmp / "few.csv")], ["LSVQ_MAX_ROWS", "'lots'"]),
    }


ERROR_CASES = ["missing", "missing-dir", "directory", "empty", "binary", "not-utf8", "no-mos", "few-rows", "bad-env"]


def test_errors_exit_2_with_one_line(tmp_path: Path, cli) -> None:
    cases = _error_cases(tmp_path)
    assert sorted(cases) == sorted(ERROR_CASES)
    env = {"bad-env": {"LSVQ_MAX_ROWS": "lots", "LSVQ_MIN_CSV_ROWS": "1"}}
    for case, (args, needles) in cases.items():
        line = _one_error_line(cli("--dry-run", *args, env=env.get(case), cwd=tmp_path))
        assert all(n in line for n in needles), (case, needles, line)


def test_environment_variables(tmp_path: Path, labels_2000: Path, cli) -> None:
    work = tmp_path / "lsvq"
    write_labels_txt(work / "manifest.csv", labels_pairs(1200, FOLDERS[:3]))  # the default path under LSVQ_DIR
    small = tmp_path / "small.csv"
    write_alias_csv(small, ["name", "mos"], [[f"z/{i}", "1"] for i in range(30)])
    runs = {
        "dir": ([], {"LSVQ_DIR": str(work)}),
        "csv": ([], {"LSVQ_DIR": str(work), "LSVQ_MANIFEST_CSV": str(labels_2000), "LSVQ_MAX_ROWS": "0"}),
        "rows": ([], {"LSVQ_DIR": str(work), "LSVQ_MAX_ROWS": "7"}),
        "min": ([], {"LSVQ_MANIFEST_CSV": str(small), "LSVQ_MIN_CSV_ROWS": "30"}),
        "flags-win": (
            ["--lsvq-dir", str(work), "--manifest-csv", str(labels_2000), "--max-rows", "3"],
            {"LSVQ_DIR": str(tmp_path / "elsewhere"), "LSVQ_MANIFEST_CSV": str(small), "LSVQ_MAX_ROWS": "9"},
        ),
        "full-wins": (["--full"], {"LSVQ_DIR": str(work), "LSVQ_MAX_ROWS": "9"}),
        "empty-var": ([], {"LSVQ_DIR": str(work), "LSVQ_MAX_ROWS": ""}),  # set but empty: the default
    }
    out = {name: in_dry_run(cli, *args, env=env, cwd=tmp_path) for name, (args, env) in runs.items()}
    path = {name: o["label_files"]["train"]["path"] for name, o in out.items()}
    assert path["dir"] == str(work / "manifest.csv") and out["dir"]["rows"] == 500
    assert path["csv"] == str(labels_2000) and out["csv"]["rows"] == 2000 and out["csv"]["max_rows"] == 0
    assert out["rows"]["rows"] == 7 and out["rows"]["max_rows"] == 7
    assert out["min"]["rows"] == 30 and path["min"] == str(small)
    assert path["flags-win"] == str(labels_2000) and out["flags-win"]["rows"] == 3
    assert out["full-wins"]["rows"] == 1200 and out["full-wins"]["max_rows"] == 0
    assert out["empty-var"]["rows"] == 500


def test_default_lsvq_dir_is_under_the_cwd(tmp_path: Path, cli) -> None:
    work = tmp_path / ".workingdir2" / "lsvq"
    write_labels_txt(work / "manifest.csv", labels_pairs(1000))
    out = in_dry_run(cli, cwd=tmp_path)
    assert out["label_files"]["train"]["path"] == str(work / "manifest.csv") and out["rows"] == 500


def test_help_and_bad_flag(tmp_path: Path, cli) -> None:
    helped = cli("--help", cwd=tmp_path)
    assert helped.code == 0 and "--dry-run" in helped.out and "--min-csv-rows" in helped.out
    unknown = cli("--no-such-flag", cwd=tmp_path)
    assert unknown.code == 2 and "Traceback" not in unknown.err and "--no-such-flag" in unknown.err


# --------------------------------------------------------------------------- a real run, in-process

NON_DEFAULT_FLAGS = [
    "--clip-suffix", ".mkv",  # every clip 404s (the server has .mp4): a fast run, permanent failures
    "--corpus-version", "test-7",
    "--attrition-warn-threshold", "0.5",
    "--flat-chunk-rows", "7",
    "--concurrency", "3",
    "--download-timeout-s", "30.5",
    "--max-attempts", "2",
    "--probe-concurrency", "2",
    "--source", "url",
    "--keep-archives",
    "--archive-url-template", "https://mirror.invalid/{folder}.tgz",
    "--clips-subdir", "videos",
]


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def test_run_twice_in_process_prints_a_ui_command_with_every_setting(tmp_path: Path, corpus: Corpus, served, cli) -> None:
    """A real run through main(), twice in one process: log lines are not duplicated, and the
    printed `dagster dev` command carries every non-default setting, so the UI sees the same."""
    from lsvq_assets.cli import build_parser, resolve_config
    from lsvq_assets.settings import SETTINGS

    work = tmp_path / "work"
    args = [
        "--lsvq-dir", str(work), "--manifest-csv", str(corpus.csv), "--min-csv-rows", "1", "--full",
        "--clip-url-template", served.base_url + "/{name}{suffix}", "--output-dir", "out", *NON_DEFAULT_FLAGS,
    ]
    runs = [cli(*args, cwd=tmp_path) for _ in range(2)]
    for n, run in enumerate(runs):
        assert run.code == 0, run.err
        assert "Traceback" not in run.err
        headline = [line for line in run.err.splitlines() if "partitions hold the rows under the cap" in line]
        assert len(headline) == 1, (n, run.err)  # one handler, however often main() runs
        # Our log lines, each once (Dagster's first-run telemetry notice on a fresh machine has blank lines of its own).
        logged = [line for line in run.err.splitlines() if _LOG_LINE.match(line)]
        assert logged and len(logged) == len(set(logged)), run.err
    assert "partitions are current" in runs[1].err  # the second run found the first's work
    assert (tmp_path / "out" / "lsvq.jsonl").exists()

    command = next(line for line in runs[0].out.splitlines() if "dagster dev" in line).split(": ", 1)[1]
    words = shlex.split(command)
    printed = dict(w.split("=", 1) for w in words[: words.index("dagster")])
    assert printed["LSVQ_CLIP_SUFFIX"] == ".mkv" and printed["LSVQ_OUTPUT_DIR"] == str(tmp_path / "out")
    flags = resolve_config(build_parser().parse_args(args), environ={})
    for s in SETTINGS:
        value = flags.get(s.resource, {}).get(s.field)
        if value is None or value == s.default:
            assert s.var not in printed or s.var == "DAGSTER_HOME", s.var
            continue
        assert s.var in printed, s.var
    # The printed variables alone give the UI the settings the flags gave the CLI.
    from_env = resolve_config(build_parser().parse_args([]), environ=printed)
    absolute = {s.field for s in SETTINGS if s.path}
    norm = lambda cfg: {r: {f: (str(Path(v).absolute()) if f in absolute else v) for f, v in d.items()} for r, d in cfg.items()}  # noqa: E731
    with_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert norm(from_env) == norm(flags)
    finally:
        os.chdir(with_cwd)


def test_every_cli_flag_and_setting_is_documented_in_the_readme() -> None:
    from lsvq_assets.cli import build_parser
    from lsvq_assets.settings import SETTINGS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    flags = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    variables = {s.var for s in SETTINGS}
    assert sorted(f for f in flags | variables if f not in readme) == []


def test_the_command_runs_without_pandas_or_numpy_and_a_caller_of_main_keeps_them(tmp_path: Path, cli) -> None:
    """pyarrow imports numpy, and pandas (~50 MB) to ask whether values are pandas objects: the
    command makes both look absent and Arrow allocate through malloc, and its parquet tables are the
    same; a process calling main() is untouched."""
    code = (
        "import sys, json, os\n"
        "from lsvq_assets import cli\n"
        "cli._lean_process()\n"
        "from lsvq_assets.core.tables import read_table, write_table\n"
        "import pyarrow as pa\n"
        "schema = pa.schema([('src', pa.string()), ('size', pa.int64())])\n"
        f"write_table({str(tmp_path / 't.parquet')!r}, [{{'src': 'a/b.mp4', 'size': 3}}], schema)\n"
        f"back = read_table({str(tmp_path / 't.parquet')!r})\n"
        "blocked = []\n"
        "for name in ('pandas', 'numpy'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError:\n"
        "        blocked.append(name)\n"
        "print(json.dumps({'loaded': [m for m in ('pandas', 'numpy') if m in sys.modules], 'blocked': blocked, 'src': back[0]['src'],\n"
        "                  'pool': pa.default_memory_pool().backend_name}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(done.stdout) == {"loaded": [], "blocked": ["pandas", "numpy"], "src": "a/b.mp4", "pool": "system"}
    labels = tmp_path / "labels.txt"
    write_labels_txt(labels, labels_pairs(4))
    assert cli("--dry-run", "--manifest-csv", str(labels), "--lsvq-dir", str(tmp_path / "w"), "--min-csv-rows", "1").code == 0
    from lsvq_assets.cli import _Hidden

    assert not any(isinstance(f, _Hidden) for f in sys.meta_path)  # main(argv) in this process: untouched


def test_the_command_imports_with_the_collector_off_and_runs_with_it_on(tmp_path: Path) -> None:
    """``python -m lsvq_assets`` and ``lsvq-to-corpus-jsonl`` import Dagster and the rest with Python's
    cyclic collector off (it walked the import's objects again and again); the runs start with it on
    again and the imports' objects frozen out of its way; a process calling main() keeps its own."""
    labels = tmp_path / "labels.txt"
    write_labels_txt(labels, labels_pairs(4))
    args = ["--manifest-csv", str(labels), "--lsvq-dir", str(tmp_path / "w"), "--min-csv-rows", "1",
            "--clip-url-template", "http://127.0.0.1:9/{name}{suffix}"]
    code = (
        "import gc, json, sys\n"
        "import lsvq_assets.runner as runner\n"  # imported here, with the collector on: measured below
        "seen = {}\n"
        "def fake_run_cli(*a, **k):\n"
        "    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count(), full=gc.get_stats()[2]['collections'])\n"
        "    return 0\n"
        "runner.run_cli = fake_run_cli\n"
        "import lsvq_assets.__main__ as entry\n"
        "gc.unfreeze()\n"
        f"sys.argv = ['lsvq-to-corpus-jsonl', *{args!r}]\n"
        "import lsvq_assets.cli as cli\n"
        "build = cli.build_parser\n"
        "def spy_build():\n"
        "    seen.update(while_importing=gc.isenabled(), full_before=gc.get_stats()[2]['collections'])\n"
        "    return build()\n"
        "cli.build_parser = spy_build\n"
        "rc = entry.command()\n"
        "print(json.dumps({**seen, 'rc': rc, 'after': gc.isenabled()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSVQ_", "DAGSTER_HOME"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["while_importing"] is False  # main() starts (and imports the resources) with it off
    assert seen["enabled"] is True and seen["frozen"] > 50_000  # the runs: on, the imports' objects frozen
    assert seen["full"] - seen["full_before"] == 0  # no full collection first: it took 0.12-0.14 s to find ~800 objects
    assert (seen["rc"], seen["after"]) == (0, True)


def test_the_command_under_a_profiler_exits_the_usual_way(tmp_path: Path) -> None:
    """``python -m cProfile -o FILE -m lsvq_assets`` writes its profile (it does so as the interpreter unwinds)."""
    labels = tmp_path / "labels.txt"
    write_labels_txt(labels, labels_pairs(4))
    out = tmp_path / "run.pstats"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "lsvq_assets", "--manifest-csv", str(labels),
           "--lsvq-dir", str(tmp_path / "w"), "--min-csv-rows", "1", "--dry-run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSVQ_", "DAGSTER_HOME"))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["partitions"] >= 1
    import pstats

    assert pstats.Stats(str(out)).total_calls > 0


@pytest.mark.parametrize("case", ["dry-run", "user-error"])
def test_the_command_ends_without_the_interpreter_teardown_its_output_whole(tmp_path: Path, case: str) -> None:
    """The command's process ends with ``os._exit`` once its work is done: the interpreter does not
    free its objects one by one (~0.2 s), yet the atexit handlers run, the buffered output is all
    there and the exit code is the command's."""
    labels = tmp_path / "labels.txt"
    write_labels_txt(labels, labels_pairs(4))
    args = ["--manifest-csv", str(labels if case == "dry-run" else tmp_path / "missing.txt"), "--lsvq-dir", str(tmp_path / "w"),
            "--min-csv-rows", "1", "--dry-run"]
    code = (
        "import atexit, sys\n"
        "class Teardown:\n"
        "    def __del__(self):\n"
        "        print('torn down', flush=True)\n"
        "kept = Teardown()\n"  # freed by the interpreter's teardown, if there is one
        "atexit.register(lambda: print('atexit ran'))\n"  # buffered: flushed by the exit
        "import lsvq_assets.__main__ as entry\n"
        f"sys.argv = ['lsvq-to-corpus-jsonl', *{args!r}]\n"
        "entry.run()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSVQ_", "DAGSTER_HOME"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = done.stdout.splitlines()
    if case == "dry-run":
        assert done.returncode == 0, done.stderr
        assert json.loads(lines[0])["partitions"] >= 1
    else:
        assert done.returncode == 2 and done.stderr.startswith("error: ") and "missing.txt" in done.stderr, done.stderr
    assert lines[-1] == "atexit ran" and "torn down" not in done.stdout


def test_after_a_cli_run_the_ui_finds_nothing_stale_or_missing(
    tmp_path: Path, corpus: Corpus, served, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI opened as the CLI says (its printed variables, its instance) has nothing for "Materialize
    stale and missing" to launch: every partition of every partitioned asset materialised and fresh, the
    shard fresh, as the UI computes staleness."""
    import dagster as dg
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    from lsvq_assets.definitions import build_defs
    from lsvq_assets.partitions import PARTITIONS_NAME

    run = cli(
        "--lsvq-dir", str(tmp_path / "work"), "--manifest-csv", str(corpus.csv), "--min-csv-rows", "1", "--full",
        "--clip-url-template", served.base_url + "/{name}{suffix}", cwd=tmp_path,
    )  # fmt: skip
    assert run.code == 0, run.err
    words = shlex.split(next(line for line in run.out.splitlines() if "dagster dev" in line).split(": ", 1)[1])
    for var, value in (w.split("=", 1) for w in words[: words.index("dagster")]):
        monkeypatch.setenv(var, value)
    defs = build_defs()  # what the UI's code location loads from those variables
    with dg.DagsterInstance.get() as instance:
        graph = defs.resolve_asset_graph()
        view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None), instance=instance, asset_graph=graph)
        resolver = CachingStaleStatusResolver(instance, graph, view)
        keys = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
        assert keys == {c.src.split("/", 1)[0] for c in corpus.clips}
        status: dict[str, str] = {}
        for asset in graph.get_all_asset_keys():
            if not graph.get(asset).is_materializable:
                continue
            if graph.get(asset).is_partitioned:
                assert instance.get_materialized_partitions(asset) == keys, asset  # nothing missing
                status.update({f"{asset.to_user_string()}[{k}]": resolver.get_status(asset, k).value for k in keys})
            else:
                assert instance.get_latest_materialization_event(asset) is not None, asset
                status[asset.to_user_string()] = resolver.get_status(asset).value
    assert any(name.startswith("lsvq_shard") for name in status) and any("lsvq_clips[" in name for name in status)
    assert {k: v for k, v in status.items() if v != StaleStatus.FRESH.value} == {}
