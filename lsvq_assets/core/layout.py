"""Where every file goes, derived from the working directory, the storage root and the seed's path flags."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path

from lsvq_assets.core import storage
from lsvq_assets.core.errors import UserError
from lsvq_assets.core.storage import Location


@dataclass(frozen=True)
class Layout:
    """Where the working files are.

    ``root`` (the storage root: a local directory or an object store) holds what is shared: clips
    under ``clips_root`` and each partition's outputs and fetch state under ``partitions/``.
    ``lsvq_dir`` is this host's working directory: the CLI's Dagster instance, locks, archives
    being downloaded and, with a remote root, the scratch directory where clips land before they
    are uploaded (``clips_dir``, where the sources write).
    """

    lsvq_dir: Path
    progress_path: Path
    clips_dir: Path  # local: where the sources put clips
    root: Location
    clips_root: Location  # where clips live: root/clips_subdir

    @classmethod
    def create(cls, lsvq_dir: str | Path, progress_path: str = "", clips_subdir: str = "clips", storage_root: str = "") -> Layout:
        """Apply the seed's defaults: every path empty here falls back to one under ``lsvq_dir``."""
        if not clips_subdir or Path(clips_subdir).is_absolute() or ".." in Path(clips_subdir).parts:
            raise UserError(f"--clips-subdir {clips_subdir!r} must be a relative directory inside --lsvq-dir (default: clips).")
        base = Path(lsvq_dir).expanduser().absolute()
        root = storage.location(storage_root) if storage_root else base
        remote = storage.is_remote(root)
        return cls(
            lsvq_dir=base,
            progress_path=Path(progress_path).expanduser().absolute() if progress_path else base / ".download-progress.json",
            clips_dir=(base / "scratch" / "shared" / clips_subdir) if remote else Path(root) / clips_subdir,
            root=root,
            clips_root=storage.join(root, clips_subdir),
        )

    @property
    def remote(self) -> bool:
        """True when the storage root is an object store: clips go through a local scratch directory."""
        return storage.is_remote(self.root)

    def with_scratch(self, scratch: Path) -> Layout:
        """The layout of one run whose clips land in its own scratch directory (remote roots only)."""
        if not self.remote:
            return self
        return replace(self, clips_dir=scratch / Path(str(self.clips_dir)).name)

    def state_path(self, key: str) -> Location:
        """The partition's private fetch state (core/store.py)."""
        return self.partition_file(key, "fetch-state.json")

    @property
    def archives_dir(self) -> Path:
        return self.lsvq_dir / "archives"

    @property
    def dagster_home(self) -> Path:
        return self.lsvq_dir / ".dagster"

    def partition_file(self, key: str, name: str) -> Location:
        """Where an asset writes for one partition, e.g. ``partition_file("yfcc-batch1", "clips.parquet")``."""
        return storage.join(self.root, "partitions", key, name)

    def clip_location(self, src: str) -> Location:
        """The clip in the storage root (the same as ``clip_path`` for a local root)."""
        return (
            self.clip_path(src)
            if not self.remote
            else storage.join(self.clips_root, self.clip_path(src).relative_to(self.clips_dir).as_posix())
        )

    def clip_path(self, src: str) -> Path:
        """The clip's local path under the clips directory; ValueError if ``src`` would land outside it."""
        path = _clip_path(str(self.clips_dir), src)
        if path is None:
            raise ValueError(f"clip path {src!r} lands outside {self.clips_dir}")
        return path


@functools.lru_cache(maxsize=4096)  # asked for several times per clip while a partition runs
def _clip_path(clips_dir: str, src: str) -> Path | None:
    base = os.path.normpath(clips_dir)  # clips_dir may hold ".." (--lsvq-dir ../lsvq)
    path = os.path.normpath(os.path.join(base, src))
    return Path(path) if path.startswith(base + os.sep) else None
