"""lsvq_probes[partition]: width, height, frame rate, duration, pixel format and codec of each clip."""

import hashlib
import json
import time
from collections import Counter

import dagster as dg
import pyarrow as pa

from lsvq_assets.assets.clips import CLIPS_FILE, lsvq_clips
from lsvq_assets.assets.meta import GROUP, OWNERS, column_schema, md_table
from lsvq_assets.core import storage
from lsvq_assets.core.store import FetchState
from lsvq_assets.core.tables import read_table, write_table
from lsvq_assets.partitions import folder_partitions
from lsvq_assets.probing.pool import ProbeItem, probe_clips
from lsvq_assets.resources import LsvqSettings, ProbeResource
from lsvq_assets.sources.base import FAILED

PROBES_FILE = "probes.parquet"
PROBES_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("framerate", pa.float64()),
        ("duration_s", pa.float64()),
        ("pix_fmt", pa.string()),
        ("encoder_upstream", pa.string()),
        ("broken", pa.string()),  # why the clip is not a usable video; null when it probed
    ]
)


def _summary(table: list[dict]) -> str:
    def top(counter: Counter) -> str:
        return ", ".join(f"{k} ({v})" for k, v in counter.most_common(8)) or "none"

    resolutions = Counter("{}x{}".format(r["width"], r["height"]) for r in table)  # noqa: UP032 - Python 3.10 f-strings
    return "\n".join(
        [
            f"**{len(table)} clips probed**",
            f"- codecs: {top(Counter(r['encoder_upstream'] for r in table))}",
            f"- resolutions: {top(resolutions)}",
            f"- frame rates: {top(Counter(round(r['framerate'], 3) for r in table))}",
            f"- pixel formats: {top(Counter(r['pix_fmt'] for r in table))}",
        ]
    )


@dg.asset(
    partitions_def=folder_partitions,
    deps=[lsvq_clips],
    group_name=GROUP,
    kinds={"python", "parquet", "ffmpeg"},
    owners=OWNERS,
    code_version="2",
    # Local work only: follows a run that materialised lsvq_clips alone (e.g. a backfill of its
    # failed partitions); a whole-partition run never triggers it twice.
    automation_condition=dg.AutomationCondition.eager(),
)
def lsvq_probes(context: dg.AssetExecutionContext, lsvq: LsvqSettings, prober: ProbeResource) -> dg.MaterializeResult:
    """The partition's probe table: one row per clip fetched, its probe (ffprobe's rules) or why it is broken.

    Results come from the private probe cache (by sha256 and backend) when they are there:
    lsvq_clips fills it while it downloads, so ``cached`` counts those too.
    """
    started = time.monotonic()
    key = context.partition_key
    impl = prober.prober()
    with lsvq.run_layout(context.run.run_id) as layout:
        clips = [c for c in read_table(layout.partition_file(key, CLIPS_FILE)) if c["status"] != FAILED]
        items = [ProbeItem(c["src"], layout.clip_path(c["src"]), c["sha256"], c["size"]) for c in clips]
        with FetchState(layout.state_path(key)) as store:
            if layout.remote:  # the clips the probe cache does not know come down to the run's scratch
                known = store.get_probes((it.sha256, impl.name) for it in items)
                for it in items:
                    if (it.sha256, impl.name) not in known:
                        storage.get_file(layout.clip_location(it.src), it.path)
            result = probe_clips(items, impl, store, prober.concurrency)
    table = [
        {"src": it.src, "sha256": it.sha256, **result.probes[it.src]}
        if it.src in result.probes
        else {"src": it.src, "sha256": it.sha256, "broken": result.broken[it.src]}
        for it in items
    ]
    path = layout.partition_file(key, PROBES_FILE)
    write_table(path, table, PROBES_SCHEMA)
    broken = [{"src": s, "reason": r} for s, r in result.broken.items()]
    probed = [r for r in table if not r.get("broken")]
    version = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:24]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "probed": result.probed,
            "cached": result.cached,
            "broken": len(broken),
            "broken_clips": md_table(broken, ["src", "reason"], limit=50),
            "summary": dg.MetadataValue.md(_summary(probed)),
            "backend": impl.name,
            "dagster/uri": dg.MetadataValue.path(str(path)),
            "dagster/column_schema": column_schema(PROBES_SCHEMA),
            "timings": dg.MetadataValue.json(
                {
                    "probe_s": round(result.probe_s, 3),
                    "store_s": round(result.store_s, 3),
                    "compute_s": round(time.monotonic() - started, 3),
                }
            ),
        },
        data_version=dg.DataVersion(version),
    )
