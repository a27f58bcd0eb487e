"""The CLI as a user runs it: ``python -m lsvq_assets`` in a subprocess, ``--dry-run`` and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

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


def tree(path: Path) -> set[Path]:
    return {p.relative_to(path) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def labels_2000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "train_labels.txt"
    write_labels_txt(path, labels_pairs(2000))
    return path


def test_dry_run_full_labels(tmp_path: Path, labels_2000: Path) -> None:
    before = tree(tmp_path)
    out = dry_run(tmp_path, "--manifest-csv", str(labels_2000), "--full")
    assert out["rows"] == 2000 and out["data_rows"] == 2000
    assert out["dropped"] == {}
    assert len(out["slices"]) == 51 and list(out["slices"]) == list(FOLDERS)
    assert sum(out["slices"].values()) == 2000
    assert out["format"] == "labels" and out["max_rows"] == 0
    assert out["manifest"] == str(labels_2000)
    assert out["defaulted"] == ["mos_std_dev", "n_ratings"]
    assert tree(tmp_path) == before  # a dry run writes nothing


def test_dry_run_default_cap_and_max_rows(tmp_path: Path, labels_2000: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        default, ten = pool.map(lambda extra: dry_run(tmp_path, "--manifest-csv", str(labels_2000), *extra), [(), ("--max-rows", "10")])
    assert default["rows"] == 500 and default["max_rows"] == 500 and default["data_rows"] == 2000
    assert sum(default["slices"].values()) == 500
    assert list(default["slices"]) == list(FOLDERS)[: len(default["slices"])]  # first rows, in order
    assert ten["rows"] == 10 and ten["slices"] == {FOLDERS[0]: 10} and ten["max_rows"] == 10


def test_dry_run_patchvq_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "LSVQ_whole_test.csv"
    write_patchvq_csv(csv_path, 1500, columns=38, crlf=True, extra_rows=[("../escape", 50), ("a/x", "nan"), ("yfcc-batch1/700", 5)])
    out = dry_run(tmp_path, "--manifest-csv", "LSVQ_whole_test.csv", "--full")  # relative to the cwd
    assert out["format"] == "csv" and out["data_rows"] == 1503 and out["rows"] == 1500
    assert out["dropped"] == {"path-traversal": 1, "bad-mos": 1, "duplicate-name": 1}
    assert len(out["slices"]) == 51
    assert out["manifest"] == str(csv_path)


def test_min_csv_rows_flag_accepts_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    write_alias_csv(path, ["name", "mos"], [[f"a/{i}", "50"] for i in range(5)])
    refused = run_cli(tmp_path, "--dry-run", "--manifest-csv", str(path))
    assert refused.returncode == 2 and "--min-csv-rows 5" in refused.stderr
    out = dry_run(tmp_path, "--manifest-csv", str(path), "--min-csv-rows", "5")
    assert out["rows"] == 5 and out["slices"] == {"a": 5}


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


def test_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    cases = _error_cases(tmp_path)
    assert sorted(cases) == sorted(ERROR_CASES)
    env = {"bad-env": {"LSVQ_MAX_ROWS": "lots", "LSVQ_MIN_CSV_ROWS": "1"}}
    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(cases, pool.map(lambda c: run_cli(tmp_path, "--dry-run", *cases[c][0], env=env.get(c)), cases)))
    for case, proc in procs.items():
        needles = cases[case][1]
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, (case, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, proc.stderr)
        assert all(n in lines[0] for n in needles), (case, needles, lines[0])
        assert proc.stdout == "", case


def test_environment_variables(tmp_path: Path, labels_2000: Path) -> None:
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
    with ThreadPoolExecutor(2) as pool:
        out = dict(zip(runs, pool.map(lambda r: dry_run(tmp_path, *runs[r][0], env=runs[r][1]), runs)))
    assert out["dir"]["manifest"] == str(work / "manifest.csv") and out["dir"]["rows"] == 500
    assert out["csv"]["manifest"] == str(labels_2000) and out["csv"]["rows"] == 2000 and out["csv"]["max_rows"] == 0
    assert out["rows"]["rows"] == 7 and out["rows"]["max_rows"] == 7
    assert out["min"]["rows"] == 30 and out["min"]["manifest"] == str(small)
    assert out["flags-win"]["manifest"] == str(labels_2000) and out["flags-win"]["rows"] == 3
    assert out["full-wins"]["rows"] == 1200 and out["full-wins"]["max_rows"] == 0
    assert out["empty-var"]["rows"] == 500


def test_default_lsvq_dir_is_under_the_cwd(tmp_path: Path) -> None:
    work = tmp_path / ".workingdir2" / "lsvq"
    write_labels_txt(work / "manifest.csv", labels_pairs(1000))
    out = dry_run(tmp_path)
    assert out["manifest"] == str(work / "manifest.csv") and out["rows"] == 500


def test_help_and_bad_flag(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        helped, bad = pool.map(lambda a: run_cli(tmp_path, *a), [("--help",), ("--max-rows", "many")])
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "--min-csv-rows" in helped.stdout
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--max-rows" in bad.stderr


def test_every_cli_flag_and_setting_is_documented_in_the_readme() -> None:
    from lsvq_assets.cli import build_parser
    from lsvq_assets.settings import ENV_VARS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    flags = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    variables = {var for fields in ENV_VARS.values() for var in fields.values()}
    assert sorted(f for f in flags | variables if f not in readme) == []
