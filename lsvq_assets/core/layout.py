"""Where every file goes, derived from the working directory and the seed's path flags."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lsvq_assets.core.errors import UserError



@dataclass(frozen=True)
class Layout:
    """Where the working files are: clips, partition outputs, the fetch store, archives."""

    lsvq_dir: Path
    progress_path: Path
    clips_dir: Path

    @classmethod
    def create(cls, lsvq_dir: str | Path, progress_path: str = "", clips_subdir: str = "clips") -> "Layout":
        """Apply the seed's defaults: every path empty here falls back to one under ``lsvq_dir``."""
        if not clips_subdir or Path(clips_subdir).is_absolute() or ".." in Path(clips_subdir).parts:
            raise UserError(f"--clips-subdir {clips_subdir!r} must be a relative directory inside --lsvq-dir (default: clips).")
        base = Path(lsvq_dir).expanduser().absolute()
        return cls(
            lsvq_dir=base,
            progress_path=Path(progress_path).expanduser().absolute() if progress_path else base / ".download-progress.json",
            clips_dir=base / clips_subdir,
        )

    def state_path(self, key: str) -> Path:
        """The partition's private fetch state (core/store.py)."""
        return self.partition_file(key, "fetch-state.json")

    @property
    def archives_dir(self) -> Path:
        return self.lsvq_dir / "archives"

    @property
    def dagster_home(self) -> Path:
        return self.lsvq_dir / ".dagster"

    def partition_file(self, key: str, name: str) -> Path:
        """The file an asset writes for one partition, e.g. ``partition_file("yfcc-batch1", "clips.parquet")``."""
        return self.lsvq_dir / "partitions" / key / name

    def clip_path(self, src: str) -> Path:
        """The clip's path under the clips directory; ValueError if ``src`` would land outside it."""
        base = os.path.normpath(self.clips_dir)  # clips_dir may hold ".." (--lsvq-dir ../lsvq)
        path = os.path.normpath(os.path.join(base, src))
        if not path.startswith(base + os.sep):
            raise ValueError(f"clip path {src!r} lands outside {self.clips_dir}")
        return Path(path)
