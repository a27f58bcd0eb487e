"""Asset checks on each split's shard: schema (blocking, run on the staged file before it is
published), every row accounted for, attrition, MOS scale, and no clip in two splits."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

from lsvq_assets.assets.meta import md_table
from lsvq_assets.core.rows import parse_line

ATTRITION_CHECK = "attrition_below_threshold"
SCHEMA_CHECK = "rows_match_schema"
ACCOUNTING_CHECK = "every_manifest_row_accounted_for"
MOS_SCALE_CHECK = "mos_within_scale"
LEAKAGE_CHECK = "no_clip_in_two_splits"
MOS_SCALE = (0.0, 100.0)  # LSVQ's crowd MOS: kept verbatim, never rescaled


def shard_check_specs(asset: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            SCHEMA_CHECK,
            asset=asset,
            blocking=True,
            description="Every line: the 15 keys with their types, sorted-key bytes, finite MOS, unique sha256. "
            "Runs on the staged file: a failing shard is never published.",
        ),
        dg.AssetCheckSpec(
            ACCOUNTING_CHECK,
            asset=asset,
            description="Rows written + download failures + broken + dedups = the split's rows after the cap; "
            "WARN while partitions are pending.",
        ),
        dg.AssetCheckSpec(
            ATTRITION_CHECK,
            asset=asset,
            description="Download failures / rows at most attrition_warn_threshold (the seed's advisory WARNING).",
        ),
        dg.AssetCheckSpec(
            MOS_SCALE_CHECK, asset=asset, description="Every MOS within LSVQ's 0-100 scale (a WARN: third-party aggregators assume 1-5)."
        ),
    ]


def schema_problems(lines: Iterable[str]) -> list[dict]:
    """Lines that break the schema or repeat a sha256: ``{"line", "problems"}`` each."""
    bad: list[dict] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        row, problems = parse_line(line)
        if not problems:
            assert row is not None
            sha = row["src_sha256"]
            if sha in seen:
                problems = [f"duplicate src_sha256 {sha}"]
            seen.add(sha)
        if problems:
            bad.append({"line": n, "problems": "; ".join(problems)})
    return bad


def schema_check(lines_checked: int, bad: Sequence[dict]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=SCHEMA_CHECK,
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"lines": lines_checked, "invalid_lines": len(bad), "invalid": md_table(list(bad), ["line", "problems"])},
    )


def attrition_check(stats: Mapping, threshold: float) -> dg.AssetCheckResult:
    attrition = stats["attrition_pct"] / 100
    return dg.AssetCheckResult(
        check_name=ATTRITION_CHECK,
        passed=attrition <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"attrition {attrition:.2%} against threshold {threshold:.2%}",
        metadata={
            "attrition_pct": float(stats["attrition_pct"]),
            "threshold": float(threshold),
            "skipped_download": stats["skipped_download"],
        },
    )


def accounting_check(stats: Mapping, rows: int, pending: Mapping[str, int]) -> dg.AssetCheckResult:
    """ERROR when the counts do not add up; a WARN naming the partitions still pending otherwise."""
    waiting = sum(pending.values())
    total = stats["written"] + stats["skipped_download"] + stats["skipped_broken"] + stats["dedups"]
    ok = total + waiting == rows
    return dg.AssetCheckResult(
        check_name=ACCOUNTING_CHECK,
        passed=ok and not waiting,
        severity=dg.AssetCheckSeverity.WARN if ok else dg.AssetCheckSeverity.ERROR,
        description=f"{total} of {rows} rows accounted for"
        + (f"; {waiting} in {len(pending)} partitions not materialised yet (materialise them, then the shard again)" if waiting else ""),
        metadata={
            "rows": rows,
            "accounted": total,
            "pending_rows": waiting,
            "pending_partitions": md_table([{"partition": k, "rows": n} for k, n in pending.items()], ["partition", "rows"], limit=60),
        },
    )


def mos_scale_check(mos_range: Mapping) -> dg.AssetCheckResult:
    lo, hi = MOS_SCALE
    low, high = mos_range.get("min"), mos_range.get("max")
    passed = low is None or high is None or (lo <= low and high <= hi)
    return dg.AssetCheckResult(
        check_name=MOS_SCALE_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"MOS observed {low}..{high}, declared scale {lo:g}-{hi:g}",
        metadata={"mos_min": low, "mos_max": high, "mos_scale": f"{lo:g}-{hi:g}"},
    )


def shard_sha256s(path) -> dict[str, str]:
    """sha256 -> src of a published shard (empty when it does not exist yet)."""
    from lsvq_assets.core import storage

    try:
        text = storage.read_bytes(path).decode()
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        row = json.loads(line)
        out.setdefault(row["src_sha256"], row["src"])
    return out


def leaked(split: str, shards: Mapping[str, Mapping[str, str]]) -> list[dict]:
    """Clips of ``split``'s shard whose sha256 is also in another split's: one record each, src per split."""
    mine = shards.get(split, {})
    out = []
    for sha, src in mine.items():
        others = {s: rows[sha] for s, rows in shards.items() if s != split and sha in rows}
        if others:
            out.append({"src_sha256": sha, split: src, **others})
    return out


def leakage_check(split: str, leaks: Sequence[dict], splits: Sequence[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=LEAKAGE_CHECK,
        passed=not leaks,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(leaks)} clips of {split} are also in another split (same sha256)"
        if leaks
        else f"no clip of {split} is in another split",
        metadata={
            "leaked": len(leaks),
            "clips": md_table(list(leaks), ["src_sha256", *splits], limit=100),
            "records": dg.MetadataValue.json(list(leaks)),
        },
    )
