"""Video probing: one interface, two backends (in-process PyAV, ffprobe subprocess)."""

from __future__ import annotations

import os

from .base import BrokenClip, Probe, Prober, ProbeSetupError
from .ffprobe import FFprobeProber
from .pyav import PyAVProber

BACKENDS = ("pyav", "ffprobe")


def make_prober(backend: str = "pyav", ffprobe_bin: str | None = None) -> Prober:
    """Build a prober; ``ffprobe_bin`` defaults to ``$FFPROBE_BIN``, else ``"ffprobe"``."""
    if backend == "pyav":
        return PyAVProber()
    if backend == "ffprobe":
        return FFprobeProber(ffprobe_bin if ffprobe_bin is not None else os.environ.get("FFPROBE_BIN") or "ffprobe")
    raise ValueError(f"unknown probe backend {backend!r}; allowed: {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "BrokenClip",
    "FFprobeProber",
    "Probe",
    "ProbeSetupError",
    "Prober",
    "PyAVProber",
    "make_prober",
]
