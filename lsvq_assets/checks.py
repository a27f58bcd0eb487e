"""Asset checks on the shard: attrition (WARN), schema (ERROR, blocking), every row accounted for."""

import json
from collections.abc import Mapping, Sequence

import dagster as dg

from lsvq_assets.assets.meta import md_table
from lsvq_assets.core.rows import line_problems

ATTRITION_CHECK = "attrition_below_threshold"
SCHEMA_CHECK = "rows_match_schema"
ACCOUNTING_CHECK = "every_manifest_row_accounted_for"

SHARD_CHECK_SPECS = [
    dg.AssetCheckSpec(ATTRITION_CHECK, asset="lsvq_shard", description="Download failures / rows at most attrition_warn_threshold (the seed's advisory WARNING)."),
    dg.AssetCheckSpec(SCHEMA_CHECK, asset="lsvq_shard", blocking=True, description="Every line: the 15 keys with their types, sorted-key bytes, finite MOS, unique sha256."),
    dg.AssetCheckSpec(ACCOUNTING_CHECK, asset="lsvq_shard", description="Rows written + download failures + broken + dedups = manifest rows after the cap."),
]


def attrition_check(stats: Mapping, threshold: float) -> dg.AssetCheckResult:
    attrition = stats["attrition_pct"] / 100
    return dg.AssetCheckResult(
        check_name=ATTRITION_CHECK,
        passed=attrition <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"attrition {attrition:.2%} against threshold {threshold:.2%}",
        metadata={"attrition_pct": float(stats["attrition_pct"]), "threshold": float(threshold), "skipped_download": stats["skipped_download"]},
    )


def schema_check(lines: Sequence[str]) -> dg.AssetCheckResult:
    bad: list[dict] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        problems = line_problems(line)
        if not problems:
            sha = json.loads(line)["src_sha256"]
            if sha in seen:
                problems = [f"duplicate src_sha256 {sha}"]
            seen.add(sha)
        if problems:
            bad.append({"line": n, "problems": "; ".join(problems)})
    return dg.AssetCheckResult(
        check_name=SCHEMA_CHECK,
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"lines": len(lines), "invalid_lines": len(bad), "invalid": md_table(bad, ["line", "problems"])},
    )


def accounting_check(stats: Mapping, rows: int, unaccounted: Sequence[str]) -> dg.AssetCheckResult:
    total = stats["written"] + stats["skipped_download"] + stats["skipped_broken"] + stats["dedups"]
    return dg.AssetCheckResult(
        check_name=ACCOUNTING_CHECK,
        passed=total == rows and not unaccounted,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{total} of {rows} manifest rows accounted for"
        + (f"; {len(unaccounted)} not ingested yet (materialise their slices)" if unaccounted else ""),
        metadata={
            "manifest_rows": rows,
            "accounted": total,
            "unaccounted": md_table([{"src": s} for s in unaccounted], ["src"]),
        },
    )
