"""Where clip bytes come from: the ``ClipSource`` interface and what a source reports per clip.

A ``ClipSource`` only moves bytes into place and reports each clip's outcome. Everything else is
shared by every source and lives in ``sources/ingest.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow


@dataclass(frozen=True)
class ClipResult:
    """What a source did for one clip."""

    src: str
    ok: bool
    sha256: str | None = None
    size: int | None = None
    http_status: int | None = None
    reason: str | None = None
    transient: bool = False
    attempts: int = 0


OnResult = Callable[[ClipResult], None]


class ClipSource(ABC):
    """Brings clips into ``layout.clips_dir``: per-clip URLs, folder archives or a local directory."""

    name: str = "source"

    @abstractmethod
    def fetch(self, rows: Sequence[ManifestRow], layout: Layout, on_result: OnResult) -> None:
        """Put each row's clip at ``layout.clip_path(row.src)`` (whole, or not at all) and call
        ``on_result`` once per row, from any thread. Must not raise for a clip's own failure."""

    def after_success(self, rows: Sequence[ManifestRow], layout: Layout) -> None:
        """Called when a slice completed without transient failures (e.g. to delete its archive)."""

    def close(self) -> None:
        """Release sessions and pools."""

    def metadata(self) -> dict[str, int]:
        """What the last ``fetch`` chose on its own (e.g. how many downloads ran at once), for the asset's metadata."""
        return {}


# What a clip was in this run, in the clips table.
DOWNLOADED, CACHED, FAILED = "downloaded", "cached", "failed"


__all__ = ["CACHED", "DOWNLOADED", "FAILED", "ClipResult", "ClipSource", "OnResult"]
