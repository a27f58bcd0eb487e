"""Probe result, errors, the backend interface and ffprobe's numeric rules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from lsvq_assets.core.errors import UserError


@dataclass(frozen=True)
class Probe:
    """What the corpus needs to know about a clip's first video stream."""

    width: int
    height: int
    framerate: float
    duration_s: float
    pix_fmt: str
    encoder_upstream: str  # ffprobe's codec_name, e.g. "h264", "hevc", "vp9"


class BrokenClip(Exception):
    """The file cannot be probed as a video.

    ``reason`` is short: ``'probe-failed: <msg>'``, ``'no-video-stream'`` or
    ``'zero-dimensions'``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProbeSetupError(UserError):
    """The prober itself cannot run (e.g. the ffprobe binary is missing)."""


class Prober(ABC):
    """Turns a path into a ``Probe`` or raises ``BrokenClip``."""

    name: str

    @abstractmethod
    def probe(self, path: Path) -> Probe:
        """Probe ``path``; raise ``BrokenClip`` for anything that is not a usable video."""


# Values ffprobe prints when a field is unknown (omitted from its JSON output).
UNKNOWN = "unknown"


def parse_rate(text: str) -> float:
    """ffprobe rational "x/y" -> float(x)/float(y); a zero denominator gives 0.0."""
    num, sep, den = text.partition("/")
    try:
        if not sep:
            return float(num)
        d = float(den)
        return 0.0 if d == 0 else float(num) / d
    except ValueError:
        return 0.0


def ffprobe_seconds(ts: int, tb_num: int, tb_den: int) -> float:
    """``ts`` in ``tb_num/tb_den`` units as ffprobe prints it ("%f" of ts*av_q2d(tb)), reparsed."""
    return float(f"{ts * (tb_num / tb_den):f}")


def pick_duration(stream_s: float | None, format_s: float | None) -> float:
    """The stream duration if > 0, else the container duration, else 0.0."""
    if stream_s is not None and stream_s > 0:
        return stream_s
    return format_s if format_s is not None else 0.0


def checked(
    width: int | None,
    height: int | None,
    framerate: float,
    duration_s: float,
    pix_fmt: str | None,
    codec_name: str | None,
) -> Probe:
    """Build a ``Probe``, raising ``BrokenClip('zero-dimensions')`` for a 0/missing size."""
    if not width or not height:
        raise BrokenClip("zero-dimensions")
    return Probe(
        width=int(width),
        height=int(height),
        framerate=framerate,
        duration_s=duration_s,
        pix_fmt=pix_fmt or UNKNOWN,
        encoder_upstream=codec_name or UNKNOWN,
    )
