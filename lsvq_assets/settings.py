"""The settings resource: the seed's operator flags as Dagster config, wired to ``LSVQ_*`` variables."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from pydantic import Field

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import Manifest, ManifestRow, read_manifest
from lsvq_assets.core.slicing import cap_rows, slice_rows

DEFAULT_LSVQ_DIR = ".workingdir2/lsvq"


class LsvqSettings(dg.ConfigurableResource):
    """Where the working files are and which rows to ingest (the seed's flags)."""

    lsvq_dir: str = Field(default=DEFAULT_LSVQ_DIR, description="Working directory (--lsvq-dir, LSVQ_DIR).")
    manifest_csv: str = Field(default="", description="Split CSV or labels file; empty = <lsvq_dir>/manifest.csv (LSVQ_MANIFEST_CSV).")
    progress_path: str = Field(default="", description="The seed's .download-progress.json to import; empty = <lsvq_dir>/.download-progress.json.")
    clips_subdir: str = Field(default="clips", description="Clips directory under lsvq_dir (--clips-subdir).")
    clip_suffix: str = Field(default=".mp4", description="Appended to every CSV name (--clip-suffix).")
    output: str = Field(default="", description="The JSONL shard; empty = <lsvq_dir>/lsvq.jsonl (LSVQ_OUTPUT).")
    manifest_out: str = Field(default="", description="The replay manifest; empty = output with .manifest.json (LSVQ_MANIFEST_OUT).")
    corpus_version: str = Field(default="lsvq-2021", description="corpus_version of every row (--corpus-version).")
    attrition_warn_threshold: float = Field(default=0.10, description="Download failures / rows above which the shard's check warns.")
    max_rows: int = Field(default=500, description="Row cap in manifest order; 0 = all rows (--max-rows / --full, LSVQ_MAX_ROWS).")
    min_csv_rows: int = Field(default=1000, description="Refuse a manifest with fewer data rows (LSVQ_MIN_CSV_ROWS).")
    slice_rows: int = Field(default=500, description="Rows per slice for names without a folder.")
    max_slice_rows: int = Field(default=1000, description="A folder with more rows continues in <folder>~2, ~3...")

    def layout(self) -> Layout:
        return Layout.create(self.lsvq_dir, self.manifest_csv, self.progress_path, self.clips_subdir, self.output, self.manifest_out)

    def read_manifest(self) -> Manifest:
        """Parse the manifest (ManifestError when it cannot be used); parsed once per process and file version."""
        path = self.layout().manifest_csv
        try:
            st = path.stat()
            version = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            version = None  # read_manifest says what is wrong
        return _read_manifest_cached(path, version, self.clip_suffix, self.min_csv_rows)

    def slices(self, manifest: Manifest) -> dict[str, list[ManifestRow]]:
        """The manifest's rows after the row cap, grouped into slices."""
        return slice_rows(cap_rows(manifest.rows, self.max_rows), self.slice_rows, self.max_slice_rows)


@functools.lru_cache(maxsize=4)
def _read_manifest_cached(path: Path, version: tuple | None, clip_suffix: str, min_csv_rows: int) -> Manifest:
    """The CLI runs every slice in one process: without this, a 39k-row manifest is parsed once per slice."""
    return read_manifest(path, clip_suffix, min_csv_rows)


# field -> environment variable, per resource key. One table: the definitions, the CLI and the
# README's list of settings all read it.
ENV_VARS: dict[str, dict[str, str]] = {
    "lsvq": {
        "lsvq_dir": "LSVQ_DIR",
        "manifest_csv": "LSVQ_MANIFEST_CSV",
        "progress_path": "LSVQ_PROGRESS_PATH",
        "clips_subdir": "LSVQ_CLIPS_SUBDIR",
        "output": "LSVQ_OUTPUT",
        "manifest_out": "LSVQ_MANIFEST_OUT",
        "corpus_version": "LSVQ_CORPUS_VERSION",
        "max_rows": "LSVQ_MAX_ROWS",
        "min_csv_rows": "LSVQ_MIN_CSV_ROWS",
    },
    "clip_source": {
        "source": "LSVQ_SOURCE",
        "clip_url_template": "LSVQ_CLIP_URL_TEMPLATE",
        "archive_url_template": "LSVQ_ARCHIVE_URL_TEMPLATE",
        "local_clips": "LSVQ_LOCAL_CLIPS",
        "concurrency": "LSVQ_CONCURRENCY",
    },
    "prober": {
        "backend": "LSVQ_PROBE_BACKEND",
        "ffprobe_bin": "FFPROBE_BIN",
    },
}


def env_config(resource_key: str, resource_cls: type[dg.ConfigurableResource], environ: Mapping[str, str] | None = None) -> dict:
    """Constructor arguments that bind each *set* ``LSVQ_*`` variable as a Dagster ``EnvVar``.

    Dagster resolves an ``EnvVar`` when a run launches (the UI shows the name, not the value);
    variables that are not set keep the field's default instead of failing the run.
    """
    environ = os.environ if environ is None else environ
    kwargs: dict = {}
    for field_name, var in ENV_VARS.get(resource_key, {}).items():
        if var in environ:
            annotation = resource_cls.model_fields[field_name].annotation
            kwargs[field_name] = dg.EnvVar.int(var) if annotation is int else dg.EnvVar(var)
    return kwargs
