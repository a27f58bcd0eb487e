"""Every setting declared once: resource, field, type, default, CLI flag, ``LSVQ_*`` variable, help.

The argparse parser (``cli.py``), the resources' fields and ``EnvVar`` bindings, the printed
``dagster dev`` command, the validation of flags and variables and the README's table are all
derived from ``SETTINGS``.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from lsvq_assets.core.errors import UserError

DEFAULT_LSVQ_DIR = ".workingdir2/lsvq"
DEFAULT_ARCHIVE_URL_TEMPLATE = "https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/{folder}.tar.gz"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Setting:
    resource: str  # the resource key: lsvq, clip_source, prober, lsvq_automation
    field: str
    kind: type  # str, int, float or bool
    default: Any
    var: str
    flag: str | None
    help: str
    rule: str = ""  # "positive", "non-negative", "fraction" or "a|b|c" (choices)
    path: bool = False  # a local path: made absolute in the printed `dagster dev` command
    secret: bool = False  # never printed, logged or recorded
    repeat: bool = False  # the flag may be given several times (joined with ",")
    shown_default: str = ""  # how the default reads in help and the README, when not the value

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.rule.split("|")) if "|" in self.rule else ()

    @property
    def accepted(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return {
            "positive": "a number > 0" if self.kind is float else "a whole number >= 1",
            "non-negative": "a whole number >= 0",
            "fraction": "a number from 0 to 1",
        }.get(self.rule, {bool: "true or false", int: "a whole number", float: "a number"}.get(self.kind, "text"))

    def default_text(self) -> str:
        return self.shown_default or (
            "*(empty)*" if self.default in ("", None) else str(self.default).lower() if self.kind is bool else str(self.default)
        )


S = Setting
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    S('lsvq', 'lsvq_dir', str, DEFAULT_LSVQ_DIR, 'LSVQ_DIR', '--lsvq-dir', "working directory: clips, partition outputs, the CLI's Dagster instance", path=True),
    S('lsvq', 'storage', str, '', 'LSVQ_STORAGE', '--storage', 'storage root shared by every host: clips, partition outputs and fetch state; a directory or s3://bucket/prefix (configured by the AWS_* variables; AWS_ENDPOINT_URL for S3-compatible stores)', path=True, shown_default='<lsvq-dir>'),
    S('lsvq', 'splits', str, '', 'LSVQ_SPLITS', '--split', 'splits as NAME=PATH (repeat the flag; the variable joins them with commas: train=/p/train_labels.txt,test=/p/labels_test.txt); empty = one split `train` from --manifest-csv', repeat=True),
    S('lsvq', 'manifest_csv', str, '', 'LSVQ_MANIFEST_CSV', '--manifest-csv', 'label file (split CSV or labels.txt) of the one split `train` when no --split is given', path=True, shown_default='<lsvq-dir>/manifest.csv'),
    S('lsvq', 'progress_path', str, '', 'LSVQ_PROGRESS_PATH', '--progress-path', "the seed's progress file to import", path=True, shown_default='<lsvq-dir>/.download-progress.json'),
    S('lsvq', 'clips_subdir', str, 'clips', 'LSVQ_CLIPS_SUBDIR', '--clips-subdir', 'clips directory under the working directory'),
    S('lsvq', 'clip_suffix', str, '.mp4', 'LSVQ_CLIP_SUFFIX', '--clip-suffix', 'suffix appended to every CSV name (labels files carry theirs)'),
    S('lsvq', 'output_dir', str, '', 'LSVQ_OUTPUT_DIR', '--output-dir', "where each split's shard goes: lsvq_<split>.jsonl (lsvq.jsonl without --split); a directory or s3:// URL", path=True, shown_default='<storage>'),
    S('lsvq', 'output', str, '', 'LSVQ_OUTPUT', '--output', 'the JSONL shard, with one split only (a path or s3:// URL)', path=True, shown_default='<output-dir>/lsvq.jsonl'),
    S('lsvq', 'manifest_out', str, '', 'LSVQ_MANIFEST_OUT', '--manifest-out', 'the replay manifest, with one split only (a path or s3:// URL)', path=True, shown_default='<output> with .manifest.json'),
    S('lsvq', 'corpus_version', str, 'lsvq-2021', 'LSVQ_CORPUS_VERSION', '--corpus-version', 'corpus_version of every row'),
    S('lsvq', 'attrition_warn_threshold', float, 0.1, 'LSVQ_ATTRITION_WARN_THRESHOLD', '--attrition-warn-threshold', "download failures / rows above which the shard's check warns", rule='fraction'),
    S('lsvq', 'max_rows', int, 500, 'LSVQ_MAX_ROWS', '--max-rows', 'row cap per split, in file order; 0 = all rows (--full)', rule='non-negative'),
    S('lsvq', 'min_csv_rows', int, 1000, 'LSVQ_MIN_CSV_ROWS', '--min-csv-rows', 'refuse a label file with fewer data rows', rule='non-negative'),
    S('lsvq', 'flat_chunk_rows', int, 500, 'LSVQ_FLAT_CHUNK_ROWS', '--flat-chunk-rows', 'rows per partition for names without a folder', rule='positive'),
    S('clip_source', 'source', str, 'auto', 'LSVQ_SOURCE', '--source', 'where clips come from: auto = per-clip URLs when the label file has a URL column or a URL template is set, else folder archives', rule='auto|url|archive|local'),
    S('clip_source', 'clip_url_template', str, '', 'LSVQ_CLIP_URL_TEMPLATE', '--clip-url-template', 'per-clip URL from {name} {folder} {stem} {suffix}'),
    S('clip_source', 'archive_url_template', str, DEFAULT_ARCHIVE_URL_TEMPLATE, 'LSVQ_ARCHIVE_URL_TEMPLATE', '--archive-url-template', 'one archive per folder, {folder}'),
    S('clip_source', 'local_clips', str, '', 'LSVQ_LOCAL_CLIPS', '--local-clips', 'directory of already extracted clips, for --source local', path=True),
    S('clip_source', 'keep_archives', bool, False, 'LSVQ_KEEP_ARCHIVES', '--keep-archives', 'download each folder archive to disk and keep it (else extracted as it arrives)'),
    S('clip_source', 'concurrency', int, 64, 'LSVQ_CONCURRENCY', '--concurrency', 'most clips downloaded at once per partition run: from 16, doubled while the server is slow to answer, halved when it pushes back (429, 503, refused connections, timeouts)', rule='positive'),
    S('clip_source', 'download_timeout_s', float, 120.0, 'LSVQ_DOWNLOAD_TIMEOUT_S', '--download-timeout-s', 'connect and read timeout per request, seconds; a download still under 16 KiB/s after that long is abandoned (transient)', rule='positive'),
    S('clip_source', 'max_attempts', int, 4, 'LSVQ_MAX_ATTEMPTS', '--max-attempts', 'requests per clip within one run for transient failures', rule='positive'),
    S('clip_source', 'hf_token_file', str, '', 'LSVQ_HF_TOKEN_FILE', '--hf-token-file', 'file holding a Hugging Face access token (else $HF_TOKEN); sent only to the archive host', path=True),
    S('clip_source', 'hf_token', str, '', 'HF_TOKEN', None, 'Hugging Face access token (the variable huggingface_hub reads); sent only to the archive host', secret=True),
    S('prober', 'backend', str, 'pyav', 'LSVQ_PROBE_BACKEND', '--probe-backend', 'pyav (in-process) or ffprobe', rule='pyav|ffprobe'),
    S('prober', 'ffprobe_bin', str, '', 'FFPROBE_BIN', '--ffprobe-bin', 'ffprobe binary for --probe-backend ffprobe; naming it selects that backend', shown_default='ffprobe'),
    S('prober', 'concurrency', int, 4, 'LSVQ_PROBE_CONCURRENCY', '--probe-concurrency', 'clips probed at once', rule='positive'),
    S('lsvq_automation', 'max_runs_per_tick', int, 25, 'LSVQ_MAX_RUNS_PER_TICK', None, 'partition runs one lsvq_manifest_sensor tick requests at most', rule='positive'),
    S('lsvq_automation', 'max_scheduled_runs', int, 100, 'LSVQ_MAX_SCHEDULED_RUNS', None, 'partition runs one lsvq_refresh_schedule tick requests at most', rule='positive'),
)
# fmt: on
del S
BY_VAR = {s.var: s for s in SETTINGS}


def setting(resource: str, field: str) -> Setting:
    return next(s for s in SETTINGS if s.resource == resource and s.field == field)


def field(resource: str, name: str) -> Any:
    """The pydantic field of a resource's setting: default and description from the table."""
    s = setting(resource, name)
    where = ", ".join(x for x in (s.flag, s.var) if x)
    return Field(default=s.default, description=f"{s.help} ({where}).")


def where(s: Setting, from_flag: bool) -> str:
    return s.flag if from_flag and s.flag else s.var


def parse_value(s: Setting, raw: Any, from_flag: bool = False) -> Any:
    """A setting's value from a flag or variable, checked; UserError in one line when it cannot be used."""
    if not isinstance(raw, str):
        value = raw
    else:
        text = raw.strip()
        try:
            if s.kind is bool:
                if text.lower() not in TRUE + FALSE:
                    raise ValueError
                value = text.lower() in TRUE
            elif s.kind is int:
                value = int(text)
            elif s.kind is float:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = raw
        except ValueError:
            raise UserError(f"{where(s, from_flag)}={raw!r}: not {s.accepted}.") from None
    bad = (
        (s.rule == "positive" and value <= 0)
        or (s.rule == "non-negative" and value < 0)
        or (s.rule == "fraction" and not 0 <= value <= 1)
        or (s.choices and value not in s.choices)
    )
    if bad:
        raise UserError(f"{where(s, from_flag)}={raw!r}: must be {s.accepted}.")
    return value


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Each set variable's checked value, per resource (UserError for a bad one)."""
    environ = os.environ if environ is None else environ
    out: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        if environ.get(s.var, "") != "":
            out.setdefault(s.resource, {})[s.field] = parse_value(s, environ[s.var])
    return out


def env_config(resource: str, environ: Mapping[str, str] | None = None) -> dict:
    """Constructor arguments binding each *set* variable of a resource.

    Text and whole numbers are bound as Dagster ``EnvVar`` (resolved when a run launches; the UI
    shows the variable's name, never a secret's value) after checking the value now; numbers
    with a fraction and flags are passed as checked values.
    """
    environ = os.environ if environ is None else environ
    values = env_values(environ).get(resource, {})
    kwargs: dict = {}
    for name, value in values.items():
        s = setting(resource, name)
        if s.kind is str:
            kwargs[name] = dg.EnvVar(s.var)
        elif s.kind is int:
            kwargs[name] = dg.EnvVar.int(s.var)
        else:
            kwargs[name] = value
    return kwargs


def ui_command_env(config: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``VAR=value`` for every setting in ``config`` that differs from its default (never a secret)."""
    env = []
    for s in SETTINGS:
        value = config.get(s.resource, {}).get(s.field)
        if value is None or value == s.default or s.secret:
            continue
        if s.path and value and "://" not in str(value):
            value = str(Path(value).expanduser().absolute())
        elif s.field == "splits" and value:
            value = ",".join(f"{n}={Path(p).expanduser().absolute()}" for n, p in _split_items(value))
        elif s.kind is bool:
            value = "true" if value else "false"
        env.append(f"{s.var}={shlex.quote(str(value))}")
    return env


def _split_items(spec: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in spec.split(",") if "=" in part]  # type: ignore[misc]


def readme_table() -> str:
    """The README's table of settings."""
    lines = ["| variable | flag | default | what |", "|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`{s.flag}`" if s.flag else "—"
        choices = f" ({', '.join(s.choices)})" if s.choices else ""
        default = s.default_text()
        default = default if default.startswith("*") else f"`{default}`"
        lines.append(f"| `{s.var}` | {flag} | {default} | {s.help}{choices} |")
    return "\n".join(lines)
