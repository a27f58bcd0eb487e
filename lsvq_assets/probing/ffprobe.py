"""Probing through an ``ffprobe`` subprocess (the original script's method)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .base import (
    BrokenClip,
    Probe,
    Prober,
    ProbeSetupError,
    checked,
    parse_rate,
    pick_duration,
)

ARGS = [
    "-v", "error",
    "-select_streams", "v:0",
    "-show_entries", "stream=width,height,r_frame_rate,avg_frame_rate,duration,pix_fmt,codec_name",
    "-show_entries", "format=duration",
    "-of", "json",
]  # fmt: skip


def resolve_binary(ffprobe_bin: str) -> str:
    """Absolute path of ``ffprobe_bin`` or ``ProbeSetupError``."""
    found = shutil.which(ffprobe_bin)
    if found is None:
        raise ProbeSetupError(
            f"ffprobe binary {ffprobe_bin!r} not found or not executable; install ffmpeg or pass --ffprobe-bin / set $FFPROBE_BIN"
        )
    return found


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_ffprobe_json(doc: Any) -> Probe:
    """Apply the probe rules to ffprobe's parsed JSON output."""
    streams = doc.get("streams") if isinstance(doc, dict) else None
    if not streams:
        raise BrokenClip("no-video-stream")
    s = streams[0]
    fmt = doc.get("format") or {}
    rate = s.get("avg_frame_rate") or s.get("r_frame_rate") or ""
    return checked(
        s.get("width"),
        s.get("height"),
        parse_rate(rate),
        pick_duration(_float(s.get("duration")), _float(fmt.get("duration"))),
        s.get("pix_fmt"),
        s.get("codec_name"),
    )


class FFprobeProber(Prober):
    """Runs ``ffprobe ... -of json <path>`` (argument list, no shell) with a timeout."""

    name = "ffprobe"

    def __init__(self, ffprobe_bin: str = "ffprobe", timeout_s: float = 60.0) -> None:
        self.ffprobe_bin = resolve_binary(ffprobe_bin)
        self.timeout_s = timeout_s

    def probe(self, path: Path) -> Probe:
        # Absolute, so "-x.mp4" is not an option and "name:x.mp4" not a protocol.
        cmd = [self.ffprobe_bin, *ARGS, os.fspath(Path(path).absolute())]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrokenClip(f"probe-failed: timeout after {self.timeout_s:g}s") from exc
        except OSError as exc:  # binary vanished or lost its exec bit since __init__
            raise ProbeSetupError(f"cannot run ffprobe {self.ffprobe_bin!r}: {exc}") from exc
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            msg = lines[-1] if lines else f"exit status {done.returncode}"
            raise BrokenClip(f"probe-failed: {msg}")
        try:
            doc = json.loads(done.stdout)
        except ValueError as exc:
            raise BrokenClip(f"probe-failed: bad JSON from ffprobe: {exc}") from exc
        try:
            return parse_ffprobe_json(doc)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise BrokenClip(f"probe-failed: unexpected ffprobe JSON: {exc!r}") from exc
