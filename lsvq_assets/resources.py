"""Resources that talk to the outside world: the clip source and the prober."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from lsvq_assets.core.errors import UserError
from lsvq_assets.probing import Prober, make_prober
from lsvq_assets.sources.archive import ArchiveClipSource
from lsvq_assets.sources.base import ClipSource
from lsvq_assets.sources.local import LocalClipSource
from lsvq_assets.sources.url import UrlClipSource

DEFAULT_ARCHIVE_URL_TEMPLATE = "https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/{folder}.tar.gz"


class ClipSourceResource(dg.ConfigurableResource):
    """Where clip bytes come from: per-clip URLs, the mirror's folder archives, or a local directory."""

    # Plain str (not Literal) so that a Dagster EnvVar can bind it; checked in open().
    source: str = Field(
        default="auto", description="auto = per-clip URLs when the manifest has a URL column (or a URL template is set), else archives (LSVQ_SOURCE)."
    )
    clip_url_template: str = Field(default="", description="Per-clip URL from {name} {folder} {stem} {suffix} (LSVQ_CLIP_URL_TEMPLATE).")
    archive_url_template: str = Field(default=DEFAULT_ARCHIVE_URL_TEMPLATE, description="One archive per folder, {folder} (LSVQ_ARCHIVE_URL_TEMPLATE).")
    local_clips: str = Field(default="", description="Directory of already extracted clips for source=local (LSVQ_LOCAL_CLIPS).")
    keep_archives: bool = Field(default=False, description="Keep each folder archive after its slice succeeded.")
    concurrency: int = Field(default=16, description="Clips transferred at once (LSVQ_CONCURRENCY).")
    download_timeout_s: float = Field(default=120.0, description="Connect and read timeout per request, seconds.")
    max_attempts: int = Field(default=4, description="Requests per clip within one run for transient failures.")

    def resolved_source(self, manifest_has_urls: bool) -> str:
        if self.source != "auto":
            return self.source
        return "url" if manifest_has_urls or self.clip_url_template else "archive"

    def open(self, manifest_has_urls: bool) -> ClipSource:
        """A ready source for one run (close it when done)."""
        kind = self.resolved_source(manifest_has_urls)
        if kind == "url":
            return UrlClipSource(
                self.clip_url_template, self.concurrency, self.download_timeout_s, max_attempts=self.max_attempts
            )
        if kind == "archive":
            return ArchiveClipSource(
                self.archive_url_template,
                keep_archives=self.keep_archives,
                timeout_s=self.download_timeout_s,
                max_attempts=self.max_attempts,
            )
        if kind == "local":
            if not self.local_clips:
                raise UserError(
                    "source=local needs the directory of extracted clips (<folder>/<stem>.mp4): "
                    "pass --local-clips DIR or set LSVQ_LOCAL_CLIPS."
                )
            return LocalClipSource(Path(self.local_clips))
        raise UserError(f"unknown clip source {kind!r}: choose auto, url, archive or local (--source, LSVQ_SOURCE).")


class ProbeResource(dg.ConfigurableResource):
    """Reads width, height, frame rate, duration, pixel format and codec of each clip."""

    backend: str = Field(default="pyav", description="pyav (in-process, default) or ffprobe (LSVQ_PROBE_BACKEND).")
    ffprobe_bin: str = Field(default="", description="ffprobe binary for backend=ffprobe; empty = $FFPROBE_BIN or ffprobe.")
    concurrency: int = Field(default=4, description="Clips probed at once.")

    def prober(self) -> Prober:
        try:
            return make_prober(self.backend, self.ffprobe_bin or None)
        except ValueError as exc:
            raise UserError(f"{exc} (--probe-backend, LSVQ_PROBE_BACKEND)") from None
