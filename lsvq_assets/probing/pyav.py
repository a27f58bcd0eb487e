"""In-process probing through PyAV (FFmpeg's libraries), matching ffprobe's output."""

from __future__ import annotations

import os
from pathlib import Path

import av

from .base import BrokenClip, Probe, Prober, checked, ffprobe_seconds, pick_duration

# AV_TIME_BASE: container durations are in microseconds.
_AV_TIME_BASE = 1_000_000

_AV_ERRORS = (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError)


class PyAVProber(Prober):
    """Opens the container (no frame decoding) and reads the first video stream."""

    name = "pyav"

    def probe(self, path: Path) -> Probe:
        try:
            # Absolute, so a relative "name:x.mp4" is never taken for an FFmpeg protocol.
            container = av.open(os.path.abspath(path), metadata_errors="ignore")
        except _AV_ERRORS as exc:
            raise BrokenClip(f"probe-failed: {exc}") from exc
        try:
            return self._read(container)
        except _AV_ERRORS as exc:
            raise BrokenClip(f"probe-failed: {exc}") from exc
        finally:
            container.close()

    @staticmethod
    def _read(container: av.container.InputContainer) -> Probe:
        if not container.streams.video:
            raise BrokenClip("no-video-stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg build has no decoder: codec parameters are unreachable.
            raise BrokenClip("probe-failed: no decoder for the video stream")
        # ffprobe always prints avg_frame_rate, so r_frame_rate is never the fallback;
        # PyAV returns None for num == 0 or den == 0, both of which ffprobe maps to 0.0.
        rate = stream.average_rate
        framerate = float(rate.numerator) / float(rate.denominator) if rate else 0.0
        stream_s = None
        tb = stream.time_base
        if stream.duration is not None and tb is not None:
            stream_s = ffprobe_seconds(stream.duration, tb.numerator, tb.denominator)
        format_s = None
        if container.duration is not None:
            format_s = ffprobe_seconds(container.duration, 1, _AV_TIME_BASE)
        return checked(
            ctx.width,
            ctx.height,
            framerate,
            pick_duration(stream_s, format_s),
            ctx.pix_fmt,
            ctx.codec.canonical_name,
        )
