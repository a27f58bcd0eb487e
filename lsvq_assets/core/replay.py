"""The replay manifest sidecar (lsvq-corpus-jsonl-manifest-v1) and its run provenance."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from lsvq_assets.core.files import atomic_write_bytes
from lsvq_assets.core.files import sha256_file

SCHEMA = "lsvq-corpus-jsonl-manifest-v1"
PROVENANCE_SCHEMA = "ai-run-provenance-v1"


def file_info(path: Path) -> dict:
    """path / exists / kind / sha256 (files only) of one input or output."""
    info: dict = {"path": str(path), "exists": path.exists()}
    if path.is_file():
        info["kind"] = "file"
        info["sha256"] = sha256_file(path)[0]
    else:
        info["kind"] = "directory" if path.is_dir() else "missing"
    return info


def run_provenance(entry_point: Path, argv: Sequence[str], arguments: Mapping, inputs: Sequence[Path], outputs: Sequence[Path]) -> dict:
    return {
        "schema": PROVENANCE_SCHEMA,
        "entry_point": file_info(entry_point),
        "argv": list(argv),
        "arguments": dict(arguments),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "inputs": [file_info(p) for p in inputs],
        "outputs": [file_info(p) for p in outputs],
    }


def replay_manifest(corpus: str, stats: Mapping, config: Mapping, provenance: Mapping, dagster: Mapping) -> dict:
    return {
        "schema": SCHEMA,
        "corpus": corpus,
        "stats": dict(stats),
        "config": dict(config),
        "run_provenance": dict(provenance),
        "dagster": dict(dagster),
    }


def replay_bytes(doc: Mapping) -> bytes:
    """Sorted keys, indent 2, trailing newline."""
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def write_replay(path: Path, doc: Mapping) -> None:
    atomic_write_bytes(path, replay_bytes(doc))
