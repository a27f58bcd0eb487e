"""Tests for lsvq_assets.core.store: a partition's private fetch state (one JSON file, replaced atomically)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsvq_assets.core import store as store_mod
from lsvq_assets.core.store import CLIP_STATES, STATE_VERSION, ClipRecord, FetchState, utc_now

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "lsvq" / "partitions" / "yfcc-batch1" / "fetch-state.json"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """A controllable store clock: ``clock.set("...")``."""

    class Clock:
        value = "2024-01-01T00:00:00+00:00"

        def set(self, value: str) -> None:
            self.value = value

    c = Clock()
    monkeypatch.setattr(store_mod, "utc_now", lambda: c.value)
    return c


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------
# basics


def test_utc_now_format() -> None:
    s = utc_now()
    assert s.endswith("+00:00")
    assert len(s) == len("2024-01-01T00:00:00+00:00")
    assert "." not in s


def test_record_validation() -> None:
    with pytest.raises(ValueError):
        ClipRecord(src="a.mp4", state="ok")
    with pytest.raises(ValueError):
        ClipRecord(src="", state="done")
    with pytest.raises(ValueError):
        ClipRecord(src="a.mp4", state="done", attempts=-1)


def test_state_written_on_record_and_read_back_by_a_new_instance(db: Path) -> None:
    with FetchState(db) as s:
        assert not db.exists()  # nothing written until something is recorded
        s.record(ClipRecord(src="a/1.mp4", state="done", sha256="aa", size=3))
    data = json.loads(db.read_text())
    assert data["version"] == STATE_VERSION and set(data["clips"]) == {"a/1.mp4"}
    with FetchState(db) as s:
        assert s.get("a/1.mp4").sha256 == "aa"


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", json.dumps({"version": STATE_VERSION + 1, "clips": {"a.mp4": {"src": "a.mp4", "state": "done"}}}).encode()],
)
def test_unreadable_torn_or_other_version_state_starts_over(db: Path, content: bytes) -> None:
    """The state is an optimisation: a file it cannot use is ignored (the outcome table is the truth)."""
    db.parent.mkdir(parents=True)
    db.write_bytes(content)
    with FetchState(db) as s:
        assert s.all_records() == []
        s.record(ClipRecord(src="b.mp4", state="done", sha256="b"))
    assert set(json.loads(db.read_text())["clips"]) == {"b.mp4"}


def test_a_bad_record_in_the_file_is_skipped_not_fatal(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_text(json.dumps({"version": STATE_VERSION, "clips": {"a.mp4": {"src": "a.mp4", "state": "weird"}, "b.mp4": {"src": "b.mp4", "state": "done", "sha256": "b"}}}))
    with FetchState(db) as s:
        assert [r.src for r in s.all_records()] == ["b.mp4"]


def test_round_trip(db: Path, clock) -> None:
    rec = ClipRecord(
        src="yfcc-batch1/725.mp4",
        state="failed",
        reason="http-503",
        http_status=503,
        transient=True,
        attempts=3,
    )
    with FetchState(db) as s:
        assert s.get(rec.src) is None
        s.record(rec)
        got = s.get(rec.src)
    assert got == ClipRecord(
        src="yfcc-batch1/725.mp4",
        state="failed",
        reason="http-503",
        http_status=503,
        transient=True,
        attempts=3,
        first_seen_utc=clock.value,
        updated_at_utc=clock.value,
    )


def test_all_records_sorted(db: Path) -> None:
    with FetchState(db) as s:
        s.record_many(
            [
                ClipRecord(src="b.mp4", state="done", sha256="1"),
                ClipRecord(src="a.mp4", state="failed", reason="http-404"),
                ClipRecord(src="c.mp4", state="done", sha256="2"),
            ]
        )
        assert [r.src for r in s.all_records()] == ["a.mp4", "b.mp4", "c.mp4"]
        assert [r.src for r in s.all_records("done")] == ["b.mp4", "c.mp4"]
        with pytest.raises(ValueError):
            s.all_records("nope")


# --------------------------------------------------------------------------
# upsert rules


def test_attempts_accumulate_and_first_seen_kept(db: Path, clock) -> None:
    with FetchState(db) as s:
        clock.set("2024-01-01T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="failed", reason="timeout", transient=True, attempts=2))
        clock.set("2024-01-02T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="failed", reason="http-503", http_status=503,
                            transient=True, attempts=3, first_seen_utc="1999-01-01T00:00:00+00:00"))
        r = s.get("x.mp4")
        assert r.attempts == 5
        assert r.reason == "http-503" and r.http_status == 503
        assert r.first_seen_utc == "2024-01-01T00:00:00+00:00"
        assert r.updated_at_utc == "2024-01-02T00:00:00+00:00"
        clock.set("2024-01-03T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s1", size=10, attempts=1))
        r = s.get("x.mp4")
        assert r.attempts == 6
        assert r.state == "done" and r.reason is None and r.http_status is None and not r.transient
        assert r.ingested_at_utc == "2024-01-03T00:00:00+00:00"


def test_duplicates_within_one_batch_apply_in_order(db: Path, clock) -> None:
    with FetchState(db) as s:
        s.record_many(
            [
                ClipRecord(src="x.mp4", state="failed", reason="timeout", transient=True, attempts=1),
                ClipRecord(src="x.mp4", state="failed", reason="timeout", transient=True, attempts=1),
                ClipRecord(src="x.mp4", state="done", sha256="s", size=1, attempts=1),
            ]
        )
        r = s.get("x.mp4")
        assert (r.state, r.attempts, r.sha256) == ("done", 3, "s")


def test_ingested_at_kept_for_same_sha_changed_for_new_sha(db: Path, clock) -> None:
    with FetchState(db) as s:
        clock.set("2024-01-01T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s1", size=10))
        assert s.get("x.mp4").ingested_at_utc == "2024-01-01T00:00:00+00:00"

        # Re-verification with the same bytes: timestamp untouched, even if one is supplied.
        clock.set("2024-02-01T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s1", size=10,
                            ingested_at_utc="2030-01-01T00:00:00+00:00"))
        r = s.get("x.mp4")
        assert r.ingested_at_utc == "2024-01-01T00:00:00+00:00"
        assert r.updated_at_utc == "2024-02-01T00:00:00+00:00"

        # New bytes: new timestamp (now, or the one supplied).
        clock.set("2024-03-01T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s2", size=11))
        assert s.get("x.mp4").ingested_at_utc == "2024-03-01T00:00:00+00:00"
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s3", size=12,
                            ingested_at_utc="2024-03-05T00:00:00+00:00"))
        assert s.get("x.mp4").ingested_at_utc == "2024-03-05T00:00:00+00:00"

        # A fresh done row uses the supplied timestamp.
        s.record(ClipRecord(src="y.mp4", state="done", sha256="t", ingested_at_utc="2023-06-01T00:00:00+00:00"))
        assert s.get("y.mp4").ingested_at_utc == "2023-06-01T00:00:00+00:00"


def test_broken_inherits_done_row_and_done_again_keeps_timestamp(db: Path, clock) -> None:
    with FetchState(db) as s:
        clock.set("2024-01-01T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s1", size=10))
        clock.set("2024-01-02T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="broken", reason="probe-failed: moov atom not found"))
        r = s.get("x.mp4")
        assert (r.state, r.sha256, r.size, r.ingested_at_utc) == (
            "broken", "s1", 10, "2024-01-01T00:00:00+00:00")
        assert r.reason == "probe-failed: moov atom not found"
        # Probed fine later with the same bytes (e.g. new backend): original timestamp back.
        clock.set("2024-01-03T00:00:00+00:00")
        s.record(ClipRecord(src="x.mp4", state="done", sha256="s1", size=10))
        assert s.get("x.mp4").ingested_at_utc == "2024-01-01T00:00:00+00:00"

        # broken with a different sha does not inherit the old row's fields
        s.record(ClipRecord(src="x.mp4", state="broken", sha256="other", reason="probe-failed: x"))
        r = s.get("x.mp4")
        assert (r.sha256, r.size, r.ingested_at_utc) == ("other", None, None)

        # failed in between: the next done is a new ingestion
        s.record(ClipRecord(src="z.mp4", state="done", sha256="q", size=1))
        s.record(ClipRecord(src="z.mp4", state="failed", reason="http-404", http_status=404))
        assert s.get("z.mp4").sha256 is None
        clock.set("2024-01-09T00:00:00+00:00")
        s.record(ClipRecord(src="z.mp4", state="done", sha256="q", size=1))
        assert s.get("z.mp4").ingested_at_utc == "2024-01-09T00:00:00+00:00"


def test_upsert_does_not_touch_other_rows(db: Path) -> None:
    with FetchState(db) as s:
        s.record_many([ClipRecord(src=f"{i}.mp4", state="done", sha256=str(i), attempts=1) for i in range(10)])
        before = {r.src: r for r in s.all_records()}
        s.record(ClipRecord(src="3.mp4", state="failed", reason="timeout", transient=True, attempts=1))
        after = {r.src: r for r in s.all_records()}
        assert {k for k in before if before[k] != after[k]} == {"3.mp4"}


def test_record_many_is_atomic_on_error(db: Path) -> None:
    class Boom(Exception):
        pass

    def gen():
        yield ClipRecord(src="a.mp4", state="done", sha256="a")
        raise Boom

    with FetchState(db) as s:
        with pytest.raises(Boom):
            s.record_many(gen())
        with pytest.raises(TypeError):
            s.record_many([ClipRecord(src="b.mp4", state="done"), "not a record"])  # type: ignore[list-item]
        assert s.counts() == {"done": 0, "failed": 0, "broken": 0}
        s.record_many([])  # no-op


_states = st.sampled_from(CLIP_STATES)
_shas = st.sampled_from([None, "s1", "s2"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["a", "b"]), _states, _shas, st.integers(0, 3)),
                    min_size=1, max_size=12),
       batch=st.integers(1, 4))
def test_invariants_property(tmp_path_factory, monkeypatch, ops, batch) -> None:
    """attempts == sum; first_seen == time of the first record; done rows always
    carry ingested_at; a done after done/broken with the same (non-null) sha
    keeps the earlier ingested_at."""
    path = tmp_path_factory.mktemp("prop") / "fetch-state.json"
    tick = iter(range(10_000))
    now = {"v": ""}

    def fake_now():
        return now["v"]

    monkeypatch.setattr(store_mod, "utc_now", fake_now)
    total: Counter[str] = Counter()
    first: dict[str, str] = {}
    with FetchState(path) as s:
        for i in range(0, len(ops), batch):
            now["v"] = f"2024-01-01T00:00:{next(tick):02d}+00:00"
            chunk = ops[i:i + batch]
            prev = {src: s.get(src) for src, *_ in chunk}
            s.record_many([ClipRecord(src=src, state=state, sha256=sha, attempts=n)
                           for src, state, sha, n in chunk])
            for src, state, sha, n in chunk:
                total[src] += n
                first.setdefault(src, now["v"])
            # single-op batches: check the ingested_at rule against the previous row
            if len(chunk) == 1:
                src, state, sha, _ = chunk[0]
                old, new = prev[src], s.get(src)
                if state == "done" and old is not None and old.state in ("done", "broken") \
                        and old.sha256 == sha and old.ingested_at_utc is not None:
                    assert new.ingested_at_utc == old.ingested_at_utc
        for src, n in total.items():
            r = s.get(src)
            assert r.attempts == n
            assert r.first_seen_utc == first[src]
            assert r.updated_at_utc == now["v"] or r.updated_at_utc < now["v"]
            if r.state == "done":
                assert r.ingested_at_utc is not None


# --------------------------------------------------------------------------
# bulk reads and counts


def test_get_many_5000_and_counts(db: Path) -> None:
    srcs = [f"batch{i % 7}/{i:05d}.mp4" for i in range(5000)]
    states = {src: CLIP_STATES[i % 3] for i, src in enumerate(srcs)}
    with FetchState(db) as s:
        s.record_many([ClipRecord(src=src, state=states[src], sha256=f"{i:064x}", size=i)
                       for i, src in enumerate(srcs)])

        query = srcs + [f"missing/{i}.mp4" for i in range(300)] + srcs[:100]  # absent + duplicates
        got = s.get_many(query)
        assert set(got) == set(srcs)
        assert all(got[src].state == states[src] for src in srcs)
        assert got[srcs[4321]].size == 4321
        assert s.get_many([]) == {}
        assert s.get_many(iter(["missing"])) == {}

        expected = Counter(states.values())
        assert s.counts() == {k: expected[k] for k in CLIP_STATES}
        sub = srcs[:1000] + ["missing.mp4"] + srcs[:10]
        assert s.counts(sub) == {k: Counter(states[x] for x in srcs[:1000])[k] for k in CLIP_STATES}
        assert s.counts([]) == {"done": 0, "failed": 0, "broken": 0}


def test_get_many_1000_of_39000_after_a_reopen(db: Path) -> None:
    srcs = [f"b/{i:05d}.mp4" for i in range(39_000)]
    with FetchState(db) as s:
        s.record_many(ClipRecord(src=x, state="done", sha256="0" * 64, size=i) for i, x in enumerate(srcs))
    sl = srcs[5000:6000]
    with FetchState(db) as s:  # the whole partition's state, read back from its one file
        got = s.get_many(sl)
    assert sorted(got) == sl and all(got[x].size == 5000 + i for i, x in enumerate(sl))


# --------------------------------------------------------------------------
# probe cache


def test_probe_cache_round_trip(db: Path) -> None:
    ok = {"width": 1280, "height": 720, "framerate": 29.97, "duration_s": 7.5,
          "pix_fmt": "yuv420p", "encoder_upstream": "Lavf58.29.100"}
    broken = {"broken": "moov atom not found"}
    with FetchState(db) as s:
        assert s.get_probes([]) == {}
        s.put_probes({("aa", "pyav"): ok, ("aa", "ffprobe"): broken, ("bb", "pyav"): {"width": 1}})
        got = s.get_probes([("aa", "pyav"), ("aa", "ffprobe"), ("cc", "pyav"), ("bb", "ffprobe")])
        assert got == {("aa", "pyav"): ok, ("aa", "ffprobe"): broken}
        s.put_probes({("aa", "pyav"): {"broken": "later"}})
        assert s.get_probes([("aa", "pyav")]) == {("aa", "pyav"): {"broken": "later"}}
        s.put_probes({})
        with pytest.raises(TypeError):
            s.put_probes({("x", "pyav"): "nope"})  # type: ignore[dict-item]
        many = {(f"{i:064x}", "pyav"): {"width": i} for i in range(2500)}
        s.put_probes(many)
        assert s.get_probes(many.keys()) == many
        nested = {"width": 1, "sizes": (1, 2), "tags": {"a": None}}  # kept as its JSON reads back
        s.put_probes({("dd", "pyav"): nested, ("ee", "pyav"): ok})
        with pytest.raises(ValueError):
            s.put_probes({("ff", "pyav"): {"framerate": float("nan")}})  # not JSON: nothing changes
        kept = s.get_probes([("dd", "pyav"), ("ee", "pyav"), ("ff", "pyav")])
        assert kept == {("dd", "pyav"): {"width": 1, "sizes": [1, 2], "tags": {"a": None}}, ("ee", "pyav"): ok}
    with FetchState(db) as again:
        assert again.get_probes(kept.keys()) == kept  # what was saved is what was kept


# --------------------------------------------------------------------------
# seed import


def _write_progress(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_seed_import(db: Path, tmp_path: Path) -> None:
    progress = _write_progress(tmp_path / ".download-progress.json", {
        "0001": {"state": "done"},
        "yfcc-batch1/725": {"state": "failed", "reason": "curl-rc=22: The requested URL returned error: 404"},
        "0003": {"state": "done"},          # already in the store: kept as is
        "0004": {"state": "failed"},         # no reason
        "not-in-manifest": {"state": "done"},
        "0005": {"state": "weird"},          # unknown state: ignored
        "0006": "done",                      # not an object: ignored
    })
    name_to_src = {
        "0001": "ia-batch1/0001.mp4",
        "yfcc-batch1/725": "yfcc-batch1/725.mp4",
        "0003": "ia-batch1/0003.mp4",
        "0004": "ia-batch1/0004.mp4",
        "0005": "ia-batch1/0005.mp4",
        "0006": "ia-batch1/0006.mp4",
    }
    with FetchState(db) as s:
        existing = ClipRecord(src="ia-batch1/0003.mp4", state="failed", reason="http-503",
                              http_status=503, transient=True, attempts=4)
        s.record(existing)
        before = s.get("ia-batch1/0003.mp4")

        assert s.import_seed_progress(progress, name_to_src) == 3
        done = s.get("ia-batch1/0001.mp4")
        assert (done.state, done.sha256, done.size) == ("done", None, None)
        failed = s.get("yfcc-batch1/725.mp4")
        assert failed.state == "failed" and failed.transient is False
        assert failed.reason == "seed: curl-rc=22: The requested URL returned error: 404"
        assert s.get("ia-batch1/0004.mp4").reason == "seed: unknown"
        assert s.get("ia-batch1/0003.mp4") == before
        assert s.get("ia-batch1/0005.mp4") is None and s.get("ia-batch1/0006.mp4") is None

        # same file again: no-op, even after the rows changed
        s.record(ClipRecord(src="ia-batch1/0001.mp4", state="done", sha256="abc", size=5))
        assert s.import_seed_progress(progress, name_to_src) == 0
        assert s.get("ia-batch1/0001.mp4").sha256 == "abc"
        assert s.counts() == {"done": 1, "failed": 3, "broken": 0}

    # ... and across reopen
    with FetchState(db) as s:
        assert s.import_seed_progress(progress, name_to_src) == 0


def test_seed_import_changed_file_only_fills_gaps(db: Path, tmp_path: Path) -> None:
    p = _write_progress(tmp_path / "p.json", {"a": {"state": "done"}})
    m = {"a": "a.mp4", "b": "b.mp4"}
    with FetchState(db) as s:
        assert s.import_seed_progress(p, m) == 1
        _write_progress(p, {"a": {"state": "failed", "reason": "x"}, "b": {"state": "done"}})
        assert s.import_seed_progress(p, m) == 1
        assert s.get("a.mp4").state == "done"


@pytest.mark.parametrize(
    "content",
    [
        b'{"0001": {"state": "done"',         # truncated JSON
        b'[{"0001": {"state": "done"}}]',     # a list
        b'"just a string"',
        b"",
        bytes(range(256)) * 4,                # binary garbage
        b"\xff\xfe\x00\x00garbage",
        b"[" * 100_000,                       # deep nesting
    ],
    ids=["truncated", "list", "string", "empty", "binary", "bom-garbage", "deep"],
)
def test_seed_import_corrupt_is_empty(db: Path, tmp_path: Path, content: bytes) -> None:
    p = tmp_path / ".download-progress.json"
    p.write_bytes(content)
    with FetchState(db) as s:
        assert s.import_seed_progress(p, {"0001": "a/0001.mp4"}) == 0
        assert s.counts() == {"done": 0, "failed": 0, "broken": 0}


def test_seed_import_missing_or_unreadable(db: Path, tmp_path: Path) -> None:
    with FetchState(db) as s:
        assert s.import_seed_progress(tmp_path / "nope.json", {"a": "a.mp4"}) == 0
        assert s.import_seed_progress(tmp_path, {"a": "a.mp4"}) == 0  # a directory


# --------------------------------------------------------------------------
# concurrency


def test_threads_share_one_store(db: Path) -> None:
    n_threads, per_thread = 8, 200
    errors: list[BaseException] = []
    with FetchState(db) as s:
        def work(t: int) -> None:
            try:
                for k in range(0, per_thread, 20):
                    batch = [ClipRecord(src=f"t{t}/{j}.mp4", state="done", sha256="x", attempts=1)
                             for j in range(k, k + 20)]
                    batch.append(ClipRecord(src="shared.mp4", state="failed", transient=True, attempts=1))
                    s.record_many(batch)
                    assert len(s.get_many(r.src for r in batch)) == len(batch)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert s.counts()["done"] == n_threads * per_thread
        assert s.get("shared.mp4").attempts == n_threads * per_thread // 20


_CRASH_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lsvq_assets.core.store import FetchState, ClipRecord
    db, start, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    s = FetchState(db)
    i = start
    while True:
        recs = [ClipRecord(src=f"b{i:06d}/{j:04d}.mp4", state="done", sha256=f"{i:064x}", size=i,
                           reason=None, attempts=1) for j in range(size)]
        recs.append(ClipRecord(src="counter", state="failed", reason=f"after-batch-{i}", transient=True, attempts=1))
        s.record_many(recs)
        s.put_probes({(f"{i:064x}", "pyav"): {"width": i}})
        if i == start:
            print("ready", flush=True)
        i += 1
    """
)


def _check_crashed_store(db: Path, size: int) -> int:
    """The file whole, each batch all-or-nothing, batches contiguous; returns #batches."""
    json.loads(db.read_bytes())  # whole: the previous or the new state, never a torn one
    with FetchState(db) as s:
        per_batch: Counter[int] = Counter()
        for r in s.all_records("done"):
            batch_id = int(r.src[1:7])
            assert r.size == batch_id and r.sha256 == f"{batch_id:064x}" and r.attempts == 1
            assert r.first_seen_utc and r.updated_at_utc and r.ingested_at_utc
            per_batch[batch_id] += 1
        assert all(n == size for n in per_batch.values()), {b: n for b, n in per_batch.items() if n != size}
        n_batches = len(per_batch)
        assert sorted(per_batch) == list(range(n_batches))
        counter = s.get("counter")
        assert counter is not None and counter.attempts == n_batches
        assert counter.reason == f"after-batch-{n_batches - 1}"
    return n_batches


def test_sigkill_leaves_consistent_store(db: Path, tmp_path: Path) -> None:
    size = 150
    rng = random.Random()
    n_batches = 0
    for _round in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", _CRASH_WRITER, str(db), str(n_batches), str(size)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_subprocess_env(), cwd=str(tmp_path),
        )
        try:
            line = p.stdout.readline()
            assert line.strip() == b"ready", p.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        new_total = _check_crashed_store(db, size)
        assert new_total > n_batches  # at least the "ready" batch is durable
        n_batches = new_total
