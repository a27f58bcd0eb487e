"""Per-clip URLs: the manifest's URL column, or a template filled from the clip's name."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.urls import check_url
from lsvq_assets.net.errors import AUTH_STATUSES
from lsvq_assets.net.fetcher import HttpFetcher
from lsvq_assets.net.window import Window
from lsvq_assets.sources.base import ClipResult, ClipSource, OnResult

#: Appended to ``http-401``/``http-403``: the server refused the request, the clip itself may be fine.
AUTH_HINT = "the server refused the clip; check that its URL is still valid (signed URLs expire) and needs no login"


def template_url(template: str, row: ManifestRow) -> str:
    """Fill ``{name}``, ``{folder}``, ``{stem}``, ``{suffix}`` (path parts percent-encoded).

    ``name`` is the clip's path without its suffix, as in the manifest; ``stem`` its last component.
    """
    src = row.src
    base = src.rsplit("/", 1)[-1]
    suffix = "." + base.rsplit(".", 1)[1] if "." in base else ""
    name = src[: len(src) - len(suffix)] if suffix else src
    fields = {
        "name": quote(name),
        "folder": quote(row.folder),
        "stem": quote(name.rsplit("/", 1)[-1]),
        "suffix": quote(suffix),
    }
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--clip-url-template {template!r}: {exc!r}; fields are {{name}}, {{folder}}, {{stem}}, {{suffix}}") from None


#: Downloads at once when a fetch starts; the window widens up to ``--concurrency`` while the
#: server's latency, not the bytes, is what the downloads wait for (:mod:`lsvq_assets.net.window`).
START_WINDOW = 16


class UrlClipSource(ClipSource):
    """Streams each clip from its own URL through one HTTP session, at most ``concurrency`` at a time.

    How many run at once within that cap follows the server's latency (:class:`Window`).
    """

    name = "url"

    def __init__(self, template: str = "", concurrency: int = 64, timeout_s: float = 120.0, **fetcher_kwargs) -> None:
        self.template = template
        self.concurrency = max(1, concurrency)
        self.fetcher = HttpFetcher(timeout_s=timeout_s, concurrency=self.concurrency, **fetcher_kwargs)
        self.window: Window | None = None  # the last fetch's

    def url_for(self, row: ManifestRow) -> str | None:
        if row.url:
            return row.url
        return template_url(self.template, row) if self.template else None

    def _one(self, row: ManifestRow, layout: Layout, on_result: OnResult, window: Window) -> None:
        url = self.url_for(row)
        if url is None:
            on_result(ClipResult(row.src, ok=False, reason="no-url-in-manifest"))
            return
        if bad := check_url(url):
            on_result(ClipResult(row.src, ok=False, reason=bad))
            return
        with window.slot() as epoch:
            if epoch is None:
                return  # the run is being stopped: this clip is left for the next one
            res = self.fetcher.fetch(url, layout.clip_path(row.src))
        window.finished(epoch, res.waited_s, res.elapsed_s, ok=res.ok, pushed_back=res.pushed_back)
        reason = res.reason
        if res.http_status in AUTH_STATUSES and reason == f"http-{res.http_status}":
            reason = f"{reason}: {AUTH_HINT}"  # transient: retried next run, never recorded as a bad clip
        on_result(ClipResult(row.src, res.ok, res.sha256, res.size, res.http_status, reason, res.transient, res.attempts))

    def fetch(self, rows: Sequence[ManifestRow], layout: Layout, on_result: OnResult) -> None:
        self.window = window = Window(START_WINDOW, self.concurrency)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="lsvq-fetch")
        try:
            for fut in [pool.submit(self._one, row, layout, on_result, window) for row in rows]:
                fut.result()
        except BaseException:  # Ctrl-C / SIGTERM (Dagster's interrupt): start no more downloads, retry none
            window.close()
            self.fetcher.close()  # a download waiting to retry stops waiting; what is being read ends
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def metadata(self) -> dict[str, int]:
        return {"downloads_at_once": self.window.most_running if self.window else 0}

    def close(self) -> None:
        self.fetcher.close()
