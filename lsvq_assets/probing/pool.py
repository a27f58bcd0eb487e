"""Probe a slice's clips in a bounded pool, reusing results cached by (sha256, backend)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lsvq_assets.core.store import ClipRecord, ClipStore
from lsvq_assets.probing.base import BrokenClip, Prober


@dataclass(frozen=True)
class ProbeItem:
    src: str
    path: Path
    sha256: str
    size: int


@dataclass
class SliceProbes:
    probes: dict[str, dict] = field(default_factory=dict)  # src -> probe fields
    broken: dict[str, str] = field(default_factory=dict)  # src -> reason
    cached: int = 0
    probed: int = 0


def probe_clips(items: Sequence[ProbeItem], prober: Prober, store: ClipStore, concurrency: int = 4) -> SliceProbes:
    """Probe what the cache does not know; record results and broken clips in the store."""
    out = SliceProbes()
    cache = store.get_probes((it.sha256, prober.name) for it in items)
    todo = [it for it in items if (it.sha256, prober.name) not in cache]

    def one(it: ProbeItem) -> dict:
        try:
            return dataclasses.asdict(prober.probe(it.path))
        except BrokenClip as exc:
            return {"broken": exc.reason}

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="lsvq-probe") as pool:
        fresh = dict(zip(todo, pool.map(one, todo)))
    if fresh:
        store.put_probes({(it.sha256, prober.name): res for it, res in fresh.items()})
    out.cached, out.probed = len(items) - len(todo), len(todo)
    broken_records = []
    for it in items:
        res = fresh.get(it) or cache[(it.sha256, prober.name)]
        if "broken" in res:
            out.broken[it.src] = res["broken"]
            broken_records.append(ClipRecord(src=it.src, state="broken", sha256=it.sha256, size=it.size, reason=res["broken"]))
        else:
            out.probes[it.src] = res
    if broken_records:
        store.record_many(broken_records)
    return out
