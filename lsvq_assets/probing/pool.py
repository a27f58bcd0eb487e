"""Probe a slice's clips in a bounded pool, reusing results cached by (sha256, backend).

``ProbeAhead`` fills that cache while a slice is still downloading (``lsvq_clips`` hands it each
clip as it lands), so ``probe_clips`` in ``lsvq_probes`` mostly finds its results ready: the
probes overlap the downloads instead of following them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lsvq_assets.core.store import FetchState
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
    probe_s: float = 0.0  # wall time of the probe pool
    store_s: float = 0.0  # time spent reading and writing the store


def _probe(prober: Prober, path: Path) -> dict:
    """A probe's fields, or ``{"broken": reason}``: what the probe cache holds."""
    try:
        return dict(vars(prober.probe(path)))  # flat fields: asdict's deep copy is not needed
    except BrokenClip as exc:
        return {"broken": exc.reason}


class ProbeAhead:
    """Probes clips in the background as they land, for the store's probe cache.

    ``submit`` never blocks; ``finish`` waits for the probes and writes their results to the
    cache in one transaction. A probe that raises anything but ``BrokenClip`` (e.g. the ffprobe
    binary went missing) is left out of the cache: ``probe_clips`` probes that clip again and
    reports the error in its own step.
    """

    def __init__(self, prober: Prober, concurrency: int = 2) -> None:
        self.prober = prober
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="lsvq-probe-ahead")
        self._futures: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()

    def submit(self, sha256: str | None, path: Path) -> None:
        if not sha256:
            return
        key = (sha256, self.prober.name)
        with self._lock:
            if key not in self._futures:  # the same bytes twice (duplicates) are probed once
                self._futures[key] = self._pool.submit(_probe, self.prober, path)

    def probe_now(self, sha256: str | None, path: Path) -> None:
        """Probe in the calling thread (the file is about to move away, e.g. to an object store)."""
        if not sha256:
            return
        key = (sha256, self.prober.name)
        fut: Future = Future()
        try:
            fut.set_result(_probe(self.prober, path))
        except Exception as exc:  # noqa: BLE001 - probe_clips meets it again and reports it
            fut.set_exception(exc)
        with self._lock:
            self._futures.setdefault(key, fut)

    def finish(self, store: FetchState | None) -> int:
        """Wait for the probes; cache their results in ``store`` (None: drop them). Returns how many."""
        self._pool.shutdown(wait=True)
        results = {}
        for key, fut in self._futures.items():
            try:
                results[key] = fut.result()
            except Exception:  # noqa: BLE001 - probe_clips meets it again and fails its step with it
                continue
        if results and store is not None:
            store.put_probes(results)
        return len(results)

    def cancel(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def probe_clips(items: Sequence[ProbeItem], prober: Prober, store: FetchState, concurrency: int = 4) -> SliceProbes:
    """Probe what the store's probe cache does not know, and cache the new results there.

    The cache is private and an optimisation: broken clips are reported in the result (and so in
    lsvq_probes' table), never written back as clip state.
    """
    out = SliceProbes()
    t = time.monotonic()
    cache = store.get_probes((it.sha256, prober.name) for it in items)
    out.store_s += time.monotonic() - t
    todo = [it for it in items if (it.sha256, prober.name) not in cache]

    t = time.monotonic()
    if todo:
        with ThreadPoolExecutor(max(1, min(concurrency, len(todo))), thread_name_prefix="lsvq-probe") as pool:
            fresh = dict(zip(todo, pool.map(lambda it: _probe(prober, it.path), todo), strict=True))
    else:
        fresh = {}
    out.probe_s = time.monotonic() - t
    t = time.monotonic()
    if fresh:
        store.put_probes({(it.sha256, prober.name): res for it, res in fresh.items()})
    out.cached, out.probed = len(items) - len(todo), len(todo)
    for it in items:
        res = fresh.get(it) or cache[(it.sha256, prober.name)]
        if "broken" in res:
            out.broken[it.src] = res["broken"]
        else:
            out.probes[it.src] = res
    out.store_s += time.monotonic() - t
    return out
