"""The resources: settings (label files, paths, cap), the clip source, the prober, the automation bounds.

Fields, defaults and variables come from ``settings.SETTINGS``; ``build_resources`` binds the
variables that are set.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import dagster as dg

from lsvq_assets.core import storage
from lsvq_assets.core.errors import ManifestError, UserError
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import Manifest, read_manifest
from lsvq_assets.core.partitioning import Plan, parse_splits, partition_rows
from lsvq_assets.core.storage import Location
from lsvq_assets.probing import Prober, make_prober
from lsvq_assets.settings import SETTINGS, env_config, field
from lsvq_assets.sources.archive import ArchiveClipSource
from lsvq_assets.sources.base import ClipSource
from lsvq_assets.sources.local import LocalClipSource
from lsvq_assets.sources.url import UrlClipSource

DEFAULT_SPLIT = "train"


class LsvqSettings(dg.ConfigurableResource):
    """Where the working files are, which label files (splits) to ingest and how many rows of each."""

    lsvq_dir: str = field("lsvq", "lsvq_dir")
    storage: str = field("lsvq", "storage")
    splits: str = field("lsvq", "splits")
    manifest_csv: str = field("lsvq", "manifest_csv")
    progress_path: str = field("lsvq", "progress_path")
    clips_subdir: str = field("lsvq", "clips_subdir")
    clip_suffix: str = field("lsvq", "clip_suffix")
    output_dir: str = field("lsvq", "output_dir")
    output: str = field("lsvq", "output")
    manifest_out: str = field("lsvq", "manifest_out")
    corpus_version: str = field("lsvq", "corpus_version")
    attrition_warn_threshold: float = field("lsvq", "attrition_warn_threshold")
    max_rows: int = field("lsvq", "max_rows")
    min_csv_rows: int = field("lsvq", "min_csv_rows")
    flat_chunk_rows: int = field("lsvq", "flat_chunk_rows")

    def layout(self) -> Layout:
        return Layout.create(self.lsvq_dir, self.progress_path, self.clips_subdir, self.storage)

    @contextlib.contextmanager
    def run_layout(self, run_id: str) -> Iterator[Layout]:
        """The layout of one run: with an object-store root, clips land in the run's own empty
        scratch directory under the working directory, removed when the run's step ends."""
        layout = self.layout()
        if not layout.remote:
            yield layout
            return
        scratch = layout.lsvq_dir / "scratch" / run_id
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            yield layout.with_scratch(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def named_splits(self) -> bool:
        """True when splits are named (--split, LSVQ_SPLITS); False for the seed's one manifest."""
        return bool(self.splits.strip())

    def split_files(self) -> dict[str, Path]:
        """Split name -> label file, in the order configured (UserError for a bad spec)."""
        if not self.named_splits:
            path = self.manifest_csv or str(Path(self.lsvq_dir) / "manifest.csv")
            return {DEFAULT_SPLIT: Path(path).expanduser().absolute()}
        try:
            named = parse_splits(self.splits)
        except ValueError as exc:
            raise UserError(f"{exc} (--split, LSVQ_SPLITS).") from None
        return {name: Path(p).expanduser().absolute() for name, p in named.items()}

    def split_names(self) -> list[str]:
        return list(self.split_files())

    def read_split(self, split: str) -> Manifest:
        """One split's label file, parsed (once per process and file version)."""
        path = self.split_files()[split]
        try:
            st = path.stat()
            version: tuple | None = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            version = None  # read_manifest says what is wrong
        try:
            return _read_cached(path, version, self.clip_suffix, self.min_csv_rows, split)
        except ManifestError as exc:
            raise ManifestError(f"split {split}: {exc}" if self.named_splits else str(exc)) from None

    def plan(self) -> Plan:
        """Every split's rows and their partitions (ManifestError when a label file cannot be used)."""
        manifests = {name: self.read_split(name) for name in self.split_files()}
        return _plan_cached(tuple((n, id(m)) for n, m in manifests.items()), manifests, self.flat_chunk_rows, self.max_rows)

    def shard_paths(self, split: str) -> tuple[Location, Location]:
        """(JSONL shard, replay manifest) of a split: local paths or object-store URLs."""
        base = storage.location(self.output_dir or self.storage or self.lsvq_dir)
        if self.named_splits and len(self.split_files()) > 1:
            if self.output or self.manifest_out:
                raise UserError("--output / --manifest-out name one shard: with several splits use --output-dir (LSVQ_OUTPUT_DIR).")
            out = storage.join(base, f"lsvq_{split}.jsonl")
        elif self.output:
            out = storage.location(self.output)
        else:
            out = storage.join(base, "lsvq.jsonl" if not self.named_splits else f"lsvq_{split}.jsonl")
        if self.manifest_out:
            return out, storage.location(self.manifest_out)
        text = str(out)
        stem = text[: -len(".jsonl")] if text.endswith(".jsonl") else text
        return out, storage.location(stem + ".manifest.json")


@functools.lru_cache(maxsize=8)
def _read_cached(path: Path, version: tuple | None, clip_suffix: str, min_csv_rows: int, split: str) -> Manifest:
    """The CLI runs every partition in one process: without this, a 39k-row file is parsed once per partition."""
    return read_manifest(path, clip_suffix, min_csv_rows, split)


_PLANS: dict[tuple, Plan] = {}


def _plan_cached(ident: tuple, manifests: Mapping[str, Manifest], flat_chunk_rows: int, max_rows: int) -> Plan:
    key = (ident, flat_chunk_rows)
    base = _PLANS.get(key)
    if base is None:
        _PLANS.clear()  # one plan at a time: the label files' current versions
        base = _PLANS[key] = Plan(dict(manifests), partition_rows([m.rows for m in manifests.values()], flat_chunk_rows), 0)
    return Plan(base.splits, base.partitions, max_rows, base.key_of, base._fingerprints)


class ClipSourceResource(dg.ConfigurableResource):
    """Where clip bytes come from: per-clip URLs, the mirror's folder archives, or a local directory."""

    # Plain str (not Literal) so that a Dagster EnvVar can bind it; checked in open().
    source: str = field("clip_source", "source")
    clip_url_template: str = field("clip_source", "clip_url_template")
    archive_url_template: str = field("clip_source", "archive_url_template")
    local_clips: str = field("clip_source", "local_clips")
    keep_archives: bool = field("clip_source", "keep_archives")
    concurrency: int = field("clip_source", "concurrency")
    download_timeout_s: float = field("clip_source", "download_timeout_s")
    max_attempts: int = field("clip_source", "max_attempts")
    hf_token_file: str = field("clip_source", "hf_token_file")
    hf_token: str = field("clip_source", "hf_token")

    def resolved_source(self, label_files_have_urls: bool) -> str:
        """The source of a run, decided once from the label files (not from a partition's rows)."""
        if self.source != "auto":
            return self.source
        return "url" if label_files_have_urls or self.clip_url_template else "archive"

    def token(self) -> str | None:
        """The Hugging Face token: the file's first line, else $HF_TOKEN (never logged)."""
        if self.hf_token_file:
            try:
                text = Path(self.hf_token_file).expanduser().read_text().strip()
            except OSError as exc:
                raise UserError(f"--hf-token-file {self.hf_token_file}: cannot read it ({exc.strerror}).") from None
            if not text:
                raise UserError(f"--hf-token-file {self.hf_token_file} is empty: put the token on its first line.")
            return text.splitlines()[0].strip()
        return self.hf_token.strip() or None

    def open(self, label_files_have_urls: bool) -> ClipSource:
        """A ready source for one run (close it when done)."""
        kind = self.resolved_source(label_files_have_urls)
        if kind == "url":
            return UrlClipSource(self.clip_url_template, self.concurrency, self.download_timeout_s, max_attempts=self.max_attempts)
        if kind == "archive":
            token = self.token()
            return ArchiveClipSource(
                self.archive_url_template,
                keep_archives=self.keep_archives,
                timeout_s=self.download_timeout_s,
                max_attempts=self.max_attempts,
                token=token,
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

    backend: str = field("prober", "backend")
    ffprobe_bin: str = field("prober", "ffprobe_bin")
    concurrency: int = field("prober", "concurrency")

    def prober(self) -> Prober:
        try:
            return make_prober(self.backend, self.ffprobe_bin or None)
        except ValueError as exc:
            raise UserError(f"{exc} (--probe-backend, LSVQ_PROBE_BACKEND)") from None


class AutomationSettings(dg.ConfigurableResource):
    """How much one sensor or schedule tick may launch (the rest waits for the next tick)."""

    max_runs_per_tick: int = field("lsvq_automation", "max_runs_per_tick")
    max_scheduled_runs: int = field("lsvq_automation", "max_scheduled_runs")


RESOURCE_CLASSES: dict[str, type[dg.ConfigurableResource]] = {
    "lsvq": LsvqSettings,
    "clip_source": ClipSourceResource,
    "prober": ProbeResource,
    "lsvq_automation": AutomationSettings,
}
assert {s.resource for s in SETTINGS} == set(RESOURCE_CLASSES)


def build_resources(config: Mapping[str, Mapping] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """The resources: explicit values per resource key (the CLI's), else the variables that are set."""
    config = config or {}
    return {key: cls(**{**env_config(key, environ), **config.get(key, {})}) for key, cls in RESOURCE_CLASSES.items()}
