"""The Dagster UI in a real browser (Debian's Chromium driven by Playwright), on a real instance.

Setup (once for the module): a generated corpus of four folders served from loopback and two
splits, ``train`` (a PatchVQ-style CSV) and ``test`` (a FAST-VQA-style labels file), drawing clips
from the same folders, so every folder partition (``lsvq_folders``) holds rows of both splits:

* ``yfcc-batch1/725.mp4`` (train) keeps answering 503, so partition ``yfcc-batch1`` FAILS;
* ``ia-batch2/gone.mp4`` (train) is a 404, so ``ia-batch2`` is materialised with a ``failed_clips`` table;
* ``ugc-batch3`` is materialised cleanly;
* ``kv-batch4`` is not in the label files when the operator CLI runs: its rows (one per split) are
  appended afterwards, as a new release of the labels would, so the CLI never registered it.

The operator CLI ingests the first three folders into ``$DAGSTER_HOME``, then
``dagster-webserver`` and ``dagster-daemon run`` serve that instance with exactly the settings of
the ``dagster dev`` command the CLI printed (``LSVQ_SPLITS``...). The tests run in file order: the
graph; each split's shard fed by the shared folder partitions; the job ``lsvq_register_partitions``
launched from the Launchpad registers ``kv-batch4`` without a single download; the partitions; the
failed-clips table; then a backfill of the failed and missing partitions launched from the
Materialize dialog (the 503 cleared), which must complete.

Screenshots of every step go to ``$LSVQ_BROWSER_SHOTS`` (created) or a temporary directory.
docs/ui-*.png are copies of 01a, 03 and 04 (refresh them by copying after a run).

Run: ``make test-browser`` or ``pytest -m browser lsvq_assets_tests`` (deselected by default). They
skip, with the reason, without /usr/bin/chromium or Playwright; with ``LSVQ_BROWSER_REQUIRED=1`` (CI)
they fail instead.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets_tests.clipgen import ClipSpec
from lsvq_assets_tests.corpus import Corpus, CorpusClip, build_corpus
from lsvq_assets_tests.harness import run_cli
from lsvq_assets_tests.loopback import LoopbackServer
from lsvq_assets_tests.ui_stack import CHROMIUM, CHROMIUM_ARGS, DagsterUi, missing_browser, prepare_home

_WHY_NOT = missing_browser()
# CI sets LSVQ_BROWSER_REQUIRED=1: a missing browser then fails the tests instead of skipping them.
_REQUIRED = os.environ.get("LSVQ_BROWSER_REQUIRED") == "1"
pytestmark = [pytest.mark.browser]
if _WHY_NOT and not _REQUIRED:
    pytestmark.append(pytest.mark.skip(reason=_WHY_NOT))

FAILING_CLIP = "yfcc-batch1/725.mp4"  # 503 until the backfill test clears it
MISSING_CLIP = "ia-batch2/gone.mp4"  # 404: a permanent failure in the failed_clips table
FAILED, WITH_404, CLEAN, LATE = "yfcc-batch1", "ia-batch2", "ugc-batch3", "kv-batch4"
PARTITIONS = [FAILED, WITH_404, CLEAN, LATE]
SPLITS = ("train", "test")
TRAIN = [
    CorpusClip("yfcc-batch1/725", 76.84375, "ok", ClipSpec(seed=11)),
    CorpusClip("yfcc-batch1/St._Charles_Bridge", 52.5, "ok", ClipSpec(seed=12, width=48, height=64)),
    CorpusClip("ia-batch2/alpha", 12.25, "ok", ClipSpec(seed=13)),
    CorpusClip("ia-batch2/gone", 50.0, "missing"),
    CorpusClip("ugc-batch3/sunset", 61.0, "ok", ClipSpec(seed=14)),
]
TEST = [
    CorpusClip("yfcc-batch1/harbour", 33.5, "ok", ClipSpec(seed=21)),
    CorpusClip("ia-batch2/Disney_Presents..._Mary_Poppins", 71.0, "ok", ClipSpec(seed=22, codec="vp9")),
    CorpusClip("ugc-batch3/market", 45.25, "ok", ClipSpec(seed=23)),
]
# Appended to the label files after the CLI ran: the folder the CLI never saw.
LATE_ROWS = {
    "train": CorpusClip("kv-batch4/lake", 44.5, "ok", ClipSpec(seed=15)),
    "test": CorpusClip("kv-batch4/pond", 58.0, "ok", ClipSpec(seed=24)),
}
PARTITIONED = ["lsvq_manifest", "lsvq_clips", "lsvq_probes", *(f"lsvq_rows_{s}" for s in SPLITS)]
ASSETS = [*(f"lsvq_labels_{s}" for s in SPLITS), *PARTITIONED, *(f"lsvq_shard_{s}" for s in SPLITS)]
SPINE = {  # the lineage every reader of the graph expects (the graph may have more edges)
    *((f"lsvq_labels_{s}", "lsvq_manifest") for s in SPLITS),
    ("lsvq_manifest", "lsvq_clips"),
    ("lsvq_clips", "lsvq_probes"),
    *(("lsvq_probes", f"lsvq_rows_{s}") for s in SPLITS),
    *((f"lsvq_rows_{s}", f"lsvq_shard_{s}") for s in SPLITS),
}
BACKFILL_TIMEOUT_S = 150
REGISTER_TIMEOUT_S = 90


# --------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    if _WHY_NOT:
        pytest.fail(f"LSVQ_BROWSER_REQUIRED=1, but {_WHY_NOT}")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("LSVQ_BROWSER_SHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("browser-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def ui_corpus(tmp_path_factory: pytest.TempPathFactory, clip_factory, broken_factory) -> Corpus:
    """The served tree of every clip (late ones included) and the label files as the CLI sees them."""
    base = tmp_path_factory.mktemp("ui-corpus")
    corpus = build_corpus(base, clip_factory, broken_factory, [*TRAIN, *TEST, *LATE_ROWS.values()])
    write_labels(base, {"train": TRAIN, "test": TEST})
    return corpus


def label_files(base: Path) -> dict[str, Path]:
    """train: a PatchVQ-style CSV; test: a FAST-VQA/DOVER-style labels file (the two formats of LSVQ's labels)."""
    return {"train": base / "LSVQ_whole_train.csv", "test": base / "labels_test.txt"}


def write_labels(base: Path, rows: dict[str, list[CorpusClip]], mode: str = "w") -> None:
    files = label_files(base)
    with open(files["train"], mode, newline="") as fh:
        if mode == "w":
            fh.write("name,height,width,mos,frame_number\n")
        fh.writelines(f"{c.name},48,64,{c.mos!r},6\n" for c in rows.get("train", []))
    with open(files["test"], mode) as fh:
        fh.writelines(f"{c.src}, -1, -1, {c.mos!r}\n" for c in rows.get("test", []))


@pytest.fixture(scope="module")
def clip_server(ui_corpus: Corpus) -> Iterator[LoopbackServer]:
    with LoopbackServer(ui_corpus.root) as server:
        server.set_fault(FAILING_CLIP, "503", forever=True)
        yield server


def ui_settings(cli_stdout: str) -> dict[str, str]:
    """The variables of the `dagster dev` command the CLI printed (every non-default setting)."""
    line = next(ln for ln in cli_stdout.splitlines() if ln.startswith("open the UI on this instance: "))
    words = shlex.split(line.split(": ", 1)[1])
    return dict(w.split("=", 1) for w in words[: words.index("dagster")])


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, ui_corpus: Corpus, clip_server: LoopbackServer) -> Iterator[DagsterUi]:
    base = tmp_path_factory.mktemp("lsvq-ui")
    home, work = prepare_home(base / "dagster_home"), base / "work"
    files = label_files(ui_corpus.csv.parent)
    args = [
        "--lsvq-dir", str(work),
        *(a for split, path in files.items() for a in ("--split", f"{split}={path}")),
        "--min-csv-rows", "1",
        "--full",
        "--clip-url-template", clip_server.base_url + "/{name}{suffix}",
        "--concurrency", "2",
    ]
    cli = run_cli(args, base / "logs", "cli", env={"DAGSTER_HOME": str(home)})
    assert cli.proc.returncode == 1 and FAILED in cli.stderr, cli.stderr  # exit 1: a partition failed transiently
    settings = ui_settings(cli.stdout)
    assert settings["DAGSTER_HOME"] == str(home) and settings["LSVQ_SPLITS"] == ",".join(f"{s}={p}" for s, p in files.items()), settings
    # A new release of the labels: a fourth folder, with a row in each split, that the CLI never registered.
    write_labels(ui_corpus.csv.parent, {s: [c] for s, c in LATE_ROWS.items()}, mode="a")
    stack = DagsterUi(home, settings, base / "logs")
    try:
        yield stack.start()
    finally:
        stack.stop()


def registered(ui: DagsterUi) -> list[str]:
    """The keys of the partitions definition lsvq_folders, as the UI reads them."""
    data = ui.graphql('{ assetNodeOrError(assetKey: {path: ["lsvq_clips"]}) { ... on AssetNode { partitionKeysByDimension { partitionKeys } } } }')
    return data["assetNodeOrError"]["partitionKeysByDimension"][0]["partitionKeys"]


def take_manifest_rows_only(home: Path, settings: dict, key: str) -> None:
    """Materialise only ``lsvq_manifest[key]`` (as a UI user selecting that asset would): reads the label files, downloads nothing."""
    from lsvq_assets.assets.manifest import manifest_asset
    from lsvq_assets.resources import LsvqSettings

    lsvq = LsvqSettings(lsvq_dir=settings["LSVQ_DIR"], splits=settings["LSVQ_SPLITS"], min_csv_rows=1, max_rows=0)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize([manifest_asset(list(SPLITS))], partition_key=key, instance=instance, resources={"lsvq": lsvq})
        assert result.success


@pytest.fixture(scope="module")
def browser(ui: DagsterUi):  # after the stack: Playwright's event loop stays out of the setup runs
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(request: pytest.FixtureRequest, browser, ui: DagsterUi, shots: Path):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=ui.url)
    # No "Join the Dagster community" modal, and the left navigation collapsed (more room for the page).
    context.add_init_script(
        "localStorage.setItem('communityNux', '\"1\"');"
        "localStorage.setItem('dagster-nav-collapsed', 'true');"
        "localStorage.setItem('large-screen-nav-open', 'false');"
    )
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    failed_before = request.session.testsfailed
    try:
        yield pg
        if request.session.testsfailed > failed_before:  # what the page showed when the test failed
            pg.screenshot(path=str(shots / f"FAILED-{request.node.name}.png"), full_page=True)
    finally:
        context.close()


def full_page_shot(page, path: Path) -> Path:
    """A full-page PNG: the UI scrolls inside its own panes, so grow the viewport until nothing scrolls."""
    extra = page.evaluate(
        """() => {
            let extra = 0;
            for (const el of document.querySelectorAll('*')) {
                const style = getComputedStyle(el);
                if (/(auto|scroll)/.test(style.overflowY) && el.clientHeight > 100)
                    extra = Math.max(extra, el.scrollHeight - el.clientHeight);
            }
            return Math.min(extra, 6000);
        }"""
    )
    size = page.viewport_size
    if extra > 0:
        page.set_viewport_size({"width": size["width"], "height": size["height"] + extra})
        page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
    if extra > 0:
        page.set_viewport_size(size)
    return path


def partition_statuses(ui: DagsterUi, asset: str) -> dict[str, set[str]]:
    """The partition statuses behind the UI's partition bar (GraphQL, as the page reads them)."""
    data = ui.graphql(
        """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
            assetPartitionStatuses { ... on DefaultPartitionStatuses {
                materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } } } } }""",
        {"key": {"path": [asset]}},
    )
    found = data["assetNodeOrError"]["assetPartitionStatuses"]
    return {k.replace("Partitions", ""): set(v) for k, v in found.items()}


# --------------------------------------------------------------------------- (a) the asset graph


def test_asset_graph_shows_the_assets_and_their_edges(page, ui: DagsterUi, shots: Path) -> None:
    page.set_viewport_size({"width": 1600, "height": 720})
    page.goto("/asset-groups")  # "Global asset lineage"
    page.get_by_text("Global asset lineage").first.wait_for()
    graph = page.locator("svg[class*=svgContainer]")
    graph.wait_for()
    page.locator("[aria-label=panel_show_right]").click()  # hide the asset list: the graph gets the width
    page.wait_for_function(
        "n => document.querySelectorAll('svg[class*=svgContainer] foreignObject').length >= n", arg=len(ASSETS)
    )
    page.wait_for_timeout(1000)  # zoom-to-fit after the panel closed
    drawn = graph.evaluate(
        """svg => ({
            nodes: Array.from(svg.querySelectorAll('foreignObject')).map(f => ({
                label: (f.querySelector('[class*=assetName]') || f).textContent.trim(), x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                w: +f.getAttribute('width'), h: +f.getAttribute('height')})),
            edges: Array.from(svg.querySelectorAll(':scope > path')).map(p => p.getAttribute('d')),
        })"""
    )
    full_page_shot(page, shots / "01-asset-graph.png")

    nodes = {n["label"]: n for n in drawn["nodes"]}
    assert sorted(nodes) == sorted(ASSETS), drawn["nodes"]

    def nearest(x: float, y: float, side: str) -> str:
        def dist(n: dict) -> float:
            nx = n["x"] + n["w"] if side == "right" else n["x"]
            return abs(nx - x) + abs(n["y"] + n["h"] / 2 - y)

        name = min(nodes, key=lambda k: dist(nodes[k]))
        assert dist(nodes[name]) < 30, (x, y, side, drawn)
        return name

    edges = set()
    for d in drawn["edges"]:
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
        (x0, y0), (x1, y1) = numbers[:2], numbers[-2:]
        edges.add((nearest(x0, y0, "right"), nearest(x1, y1, "left")))  # left to right: upstream -> downstream

    nodes_api = ui.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
    api_edges = {("/".join(d["path"]), "/".join(n["assetKey"]["path"])) for n in nodes_api for d in n["dependencyKeys"]}
    assert edges == api_edges, (edges, api_edges)
    assert SPINE <= edges, edges


# --------------------------------------------------------------------------- (a2) shared folder partitions


def test_each_splits_shard_is_fed_by_the_shared_folder_partitions(page, ui: DagsterUi, shots: Path) -> None:
    nodes_api = ui.graphql(
        "{ assetNodes { assetKey { path } dependencyKeys { path } partitionDefinition { dimensionTypes { dynamicPartitionsDefinitionName } } "
        "partitionKeysByDimension { partitionKeys } } }"
    )["assetNodes"]
    by_name = {"/".join(n["assetKey"]["path"]): n for n in nodes_api}
    # One partitions definition, lsvq_folders, for every per-folder asset of every split; the shards are not partitioned.
    for name in [*PARTITIONED, *(f"lsvq_labels_{s}" for s in SPLITS)]:
        assert [d["dynamicPartitionsDefinitionName"] for d in by_name[name]["partitionDefinition"]["dimensionTypes"]] == ["lsvq_folders"], name
    keys = {tuple(by_name[n]["partitionKeysByDimension"][0]["partitionKeys"]) for n in PARTITIONED}
    assert keys == {(FAILED, WITH_404, CLEAN)}, keys  # the same folder keys for both splits' rows (the CLI registered three)
    for split in SPLITS:
        assert by_name[f"lsvq_shard_{split}"]["partitionDefinition"] is None
        assert {"/".join(d["path"]) for d in by_name[f"lsvq_shard_{split}"]["dependencyKeys"]} == {f"lsvq_rows_{split}", f"lsvq_labels_{split}"}

    # What the UI draws upstream of each shard: its rows and the shared chain, each "3 partitions".
    for n, split in enumerate(SPLITS, 1):
        page.set_viewport_size({"width": 1600, "height": 900})
        page.goto(f"/assets/lsvq_shard_{split}?view=lineage&lineageScope=upstream&lineageDepth=5")
        page.wait_for_function("n => document.querySelectorAll('foreignObject').length >= n", arg=7)
        cards = ui.wait_until(lambda: _loaded_cards(page), 30, f"the lineage of lsvq_shard_{split} to load")
        other = next(s for s in SPLITS if s != split)
        assert f"lsvq_rows_{other}" not in cards and f"lsvq_shard_{other}" not in cards, sorted(cards)
        for name in ["lsvq_manifest", "lsvq_clips", "lsvq_probes", f"lsvq_rows_{split}"]:
            assert "3 partitions" in cards[name], (name, cards.get(name))
        assert "partitions" not in cards[f"lsvq_shard_{split}"].replace("Partitions", ""), cards[f"lsvq_shard_{split}"]
        full_page_shot(page, shots / f"01{'ab'[n - 1]}-shard-{split}-lineage.png")


def _loaded_cards(page) -> dict[str, str] | None:
    """Asset name -> the text of its card in the graph, once no card says "Loading..." any more."""
    drawn = page.locator("foreignObject").evaluate_all(
        "els => els.map(f => (f.firstElementChild && f.firstElementChild.innerText) || '').filter(t => t.startsWith('lsvq_'))"
    )
    cards = {t.split("\n", 1)[0]: t for t in drawn}
    return None if any("Loading" in t for t in cards.values()) else cards


# --------------------------------------------------------------------------- (a3) registering partitions


def test_register_partitions_job_from_the_launchpad_registers_every_partition_without_downloading(
    page, ui: DagsterUi, clip_server: LoopbackServer, shots: Path
) -> None:
    assert registered(ui) == [FAILED, WITH_404, CLEAN]  # kv-batch4 came with the new label files
    clip_server.reset_log()
    launched_at = time.time()
    page.goto("/locations/lsvq_assets/jobs/lsvq_register_partitions/playground")
    page.get_by_role("button", name="Launch run").click()  # waits until the Launchpad enables it
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
    run = ui.wait_until(lambda: _finished_run(ui, run_id), REGISTER_TIMEOUT_S, "the lsvq_register_partitions run to finish")
    assert run["status"] == "SUCCESS" and run["jobName"] == "lsvq_register_partitions" and run["startTime"] >= launched_at - 5, run
    page.reload()
    page.get_by_text("Nothing was downloaded").first.wait_for()
    full_page_shot(page, shots / "02-register-partitions-run.png")

    assert registered(ui) == PARTITIONS
    assert clip_server.requests == [], [r.path for r in clip_server.requests]  # not one download
    # Each split's label file was observed for the new partition (the sensor and the CLI do the same).
    for split in SPLITS:
        obs = ui.graphql(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
                assetObservations(partitions: ["kv-batch4"], limit: 1) { partition } } } }""",
            {"key": {"path": [f"lsvq_labels_{split}"]}},
        )
        assert [o["partition"] for o in obs["assetNodeOrError"]["assetObservations"]] == [LATE], (split, obs)
    page.goto("/assets/lsvq_manifest?view=partitions")
    page.get_by_text("Missing (1)", exact=True).wait_for()
    # Take kv-batch4's manifest rows (still no download), so a backfill of lsvq_clips alone can fetch its clips.
    take_manifest_rows_only(ui.home, ui.env, LATE)
    assert clip_server.requests == []


def _finished_run(ui: DagsterUi, run_id: str) -> dict | None:
    data = ui.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { runId status jobName startTime } } }", {"id": run_id}
    )
    run = data["runOrError"]
    return run if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED") else None


# --------------------------------------------------------------------------- (b) the partitions


def test_clips_partitions_show_failed_materialised_and_missing_partitions(page, ui: DagsterUi, shots: Path) -> None:
    page.goto("/assets/lsvq_clips?view=partitions")
    for label in ("Failed (1)", "Materialized (2)", "Missing (1)", "Materializing (0)"):
        page.get_by_text(label, exact=True).wait_for()
    listed = {status: shown_with_status(page, status) for status in ("Failed", "Materialized", "Missing")}
    assert listed == {"Failed": {FAILED}, "Materialized": {WITH_404, CLEAN}, "Missing": {LATE}}, listed

    page.goto(f"/assets/lsvq_clips?view=partitions&partition={FAILED}")  # every status shown, the failed partition open
    page.get_by_text("failed, and did not materialize this asset").wait_for()
    full_page_shot(page, shots / "03-clips-partitions.png")
    statuses = partition_statuses(ui, "lsvq_clips")
    assert statuses["failed"] == {FAILED} and statuses["materialized"] == {WITH_404, CLEAN}, statuses
    assert statuses["unmaterialized"] - statuses["failed"] == {LATE}, statuses  # failed ones count as unmaterialised too


STATUS_FILTERS = ("Failed", "Materialized", "Materializing", "Missing")


def shown_with_status(page, status: str) -> set[str]:
    """The partitions the Partitions tab lists when only ``status`` is ticked in its status filter."""
    for name in sorted(STATUS_FILTERS, key=lambda n: n != status):  # tick first: one box stays ticked
        label = page.locator("label").filter(has_text=re.compile(rf"^{name} \(\d+\)$"))
        if label.locator("input").is_checked() != (name == status):
            label.click()
    page.wait_for_url(re.compile(rf"status={status.upper()}"))
    page.wait_for_timeout(300)
    titles = page.locator("[class*=MiddleTruncate_container][title]").evaluate_all("els => els.map(e => e.title)")
    return set(titles) - {"Assets", "lsvq_clips"}  # the breadcrumbs


# --------------------------------------------------------------------------- (c) the failed-clips table


def test_a_partition_materialisation_shows_its_failed_clips_table(page, shots: Path) -> None:
    page.goto(f"/assets/lsvq_clips?view=events&partition={WITH_404}")
    page.get_by_text(re.compile(f"Partition\\s+{WITH_404}\\s+materialized in run")).first.wait_for()
    label = page.locator("td", has_text=re.compile("^failed_clips$")).first
    label.wait_for()
    value = label.locator("xpath=following-sibling::td[1]")
    table = value.locator("table")
    table.wait_for()
    rows = table.evaluate("t => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()))")
    assert rows[0] == ["src", "reason", "http_status", "attempts"], rows
    assert rows[1:] == [[MISSING_CLIP, "http-404", "404", "1"]], rows
    label.scroll_into_view_if_needed()
    full_page_shot(page, shots / "04-failed-clips.png")


# --------------------------------------------------------------------------- (d) the backfill


def test_backfill_of_failed_and_missing_partitions_from_the_dialog_completes(
    page, ui: DagsterUi, clip_server: LoopbackServer, shots: Path
) -> None:
    clip_server.clear_faults()
    clip_server.reset_log()
    page.goto("/assets/lsvq_clips?view=partitions")
    page.get_by_text("Failed (1)", exact=True).wait_for()
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Launch runs to materialize lsvq_clips").wait_for()
    dialog.get_by_role("button", name="Failed and missing", exact=True).click()
    dialog.get_by_text("2 partitions", exact=True).wait_for()
    for key in (FAILED, LATE):
        dialog.get_by_text(key, exact=True).first.wait_for()
    for key in (WITH_404, CLEAN):
        assert dialog.get_by_text(key, exact=True).count() == 0
    full_page_shot(page, shots / "05-backfill-dialog.png")
    launched_at = time.time()
    dialog.get_by_role("button", name="Launch backfill").click()
    dialog.wait_for(state="hidden")

    backfill = ui.wait_until(lambda: _launched_backfill(ui, launched_at), 30, "the backfill to be created")
    assert sorted(backfill["partitionNames"]) == sorted([FAILED, LATE]), backfill

    # Its page, reloaded until it says the backfill is over (the daemon picks it up within 30 s).
    page.goto(f"/runs/b/{backfill['id']}")
    page.get_by_text("Partition selection").wait_for()
    status = page.get_by_text("Status", exact=True).locator("xpath=following-sibling::*[1]")
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while not re.fullmatch("Succeeded|Completed.*|Failed|Canceled", status.inner_text().strip()):
        assert time.monotonic() < deadline, f"backfill {backfill['id']} still running: {_backfill(ui, backfill['id'])}"
        page.wait_for_timeout(3000)
        page.reload()
        page.get_by_text("Partition selection").wait_for()
    page.wait_for_timeout(1000)
    full_page_shot(page, shots / "06-backfill-done.png")
    assert status.inner_text().strip() == "Succeeded"
    row = page.locator("[class*=VirtualizedTable_row]", has=page.get_by_role("link", name="lsvq_clips"))
    cells = row.locator("[class*=VirtualizedTable_cellBox]").evaluate_all("els => els.map(e => e.innerText.trim())")
    assert cells[1:] == ["2", "0", "2", "0"], cells  # partitions targeted, in progress, succeeded, failed
    done = _backfill(ui, backfill["id"])
    assert done["status"] == "COMPLETED_SUCCESS", done
    assert {r["status"] for r in done["runs"]} == {"SUCCESS"}, done["runs"]

    statuses = partition_statuses(ui, "lsvq_clips")
    assert statuses["materialized"] == set(PARTITIONS) and not statuses["failed"] and not statuses["unmaterialized"], statuses
    page.goto("/assets/lsvq_clips?view=partitions")
    for label in ("Materialized (4)", "Failed (0)", "Missing (0)"):
        page.get_by_text(label, exact=True).wait_for()
    full_page_shot(page, shots / "07-clips-partitions-after-backfill.png")
    # The backfill fetched only what was not on disk yet: the clip that had been answering 503 and
    # the new partition's clips, one per split; the 404 was not retried, the done clips were not fetched again.
    assert {r.path for r in clip_server.requests} == {FAILING_CLIP, *(c.src for c in LATE_ROWS.values())}


_BACKFILL_FIELDS = "id status timestamp partitionNames assetSelection { path } runs { runId status }"


def _launched_backfill(ui: DagsterUi, since: float) -> dict | None:
    """The backfill of lsvq_clips launched from the dialog (the automation sensor launches backfills too)."""
    data = ui.graphql(f"{{ partitionBackfillsOrError(limit: 10) {{ ... on PartitionBackfills {{ results {{ {_BACKFILL_FIELDS} }} }} }} }}")
    for found in data["partitionBackfillsOrError"].get("results") or []:
        if found["timestamp"] >= since - 5 and [k["path"] for k in found["assetSelection"]] == [["lsvq_clips"]]:
            return found
    return None


def _backfill(ui: DagsterUi, backfill_id: str) -> dict:
    data = ui.graphql(
        f"query($id: String!) {{ partitionBackfillOrError(backfillId: $id) {{ ... on PartitionBackfill {{ {_BACKFILL_FIELDS} }} }} }}",
        {"id": backfill_id},
    )
    return data["partitionBackfillOrError"]
