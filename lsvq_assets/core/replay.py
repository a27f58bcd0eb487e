"""The replay manifest sidecar (lsvq-corpus-jsonl-manifest-v1) and its run provenance."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from lsvq_assets.core import storage
from lsvq_assets.core.files import sha256_file
from lsvq_assets.core.storage import Location

SCHEMA = "lsvq-corpus-jsonl-manifest-v1"
PROVENANCE_SCHEMA = "ai-run-provenance-v1"


def file_info(path: Location) -> dict:
    """path / exists / kind / sha256 (files only) of one input or output (an object-store URL too)."""
    if storage.is_remote(path):
        there = storage.exists(path)
        return {
            "path": str(path),
            "exists": there,
            "kind": "object" if there else "missing",
            **({"sha256": storage.sha256(path)[0]} if there else {}),
        }
    path = Path(path)
    info: dict = {"path": str(path), "exists": path.exists()}
    if path.is_file():
        info["kind"] = "file"
        info["sha256"] = sha256_file(path)[0]
    else:
        info["kind"] = "directory" if path.is_dir() else "missing"
    return info


def run_provenance(
    entry_point: Path, argv: Sequence[str], arguments: Mapping, inputs: Sequence[Location], outputs: Sequence[Location]
) -> dict:
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


def write_replay(path: Location, doc: Mapping) -> None:
    storage.write_bytes(path, replay_bytes(doc))
