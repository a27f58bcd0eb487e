"""Tiny real video clips for tests, encoded in-process with PyAV.

``encode_clip`` writes a few frames of deterministic (seeded) pixels with a
real encoder (libx264, libx265, libvpx-vp9 or FFmpeg's mpeg4).  Muxers run
with ``fflags=+bitexact`` and encoders single-threaded, so the same spec
encodes to the same bytes every time with a given PyAV/FFmpeg build (checked
for all four encoders; a different PyAV wheel may produce different bytes).
libvpx-vp9 in the PyAV wheel is 8-bit only and mpeg4 is yuv420p only.

``write_broken`` writes files that are not probe-able videos, and the
session-scoped ``clip_factory`` fixture caches clips by spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "mpeg4": "mpeg4"}
FORMATS = {"mp4": "mp4", "webm": "webm", "mkv": "matroska"}
BROKEN_KINDS = ("random", "truncated", "audio-only", "empty")

_ENCODER_OPTIONS = {
    "libx264": {"preset": "superfast", "threads": "1"},  # superfast: has B-frames
    # cutree=0: x265's cuTree writes past a heap buffer for frames < 64 px wide
    # (seen under valgrind), which later crashes the process in free().
    "libx265": {
        "preset": "ultrafast",
        "x265-params": "log-level=error:pools=none:frame-threads=1:cutree=0",
    },
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "threads": "1", "lag-in-frames": "0"},
    "mpeg4": {"threads": "1"},
}
_MUXER_OPTIONS = {"fflags": "+bitexact"}


@dataclass(frozen=True)
class ClipSpec:
    """What ``encode_clip`` produces; ``seed`` changes the pixels (and bytes)."""

    codec: str = "h264"  # "h264" | "hevc" | "vp9" | "mpeg4"
    width: int = 64
    height: int = 48
    rate: str = "25"  # Fraction string, e.g. "30000/1001"
    frames: int = 6
    pix_fmt: str = "yuv420p"  # also "yuv420p10le", "yuv444p" where supported
    container: str = "mp4"  # "mp4" | "webm" | "mkv"
    seed: int = 0

    @property
    def filename(self) -> str:
        rate = self.rate.replace("/", "_")
        return (
            f"{self.codec}-{self.width}x{self.height}-{rate}-{self.frames}f-"
            f"{self.pix_fmt}-s{self.seed}.{self.container}"
        )


def _frames(spec: ClipSpec) -> list[np.ndarray]:
    """Seeded RGB frames: a random background with a moving bright square."""
    rng = np.random.default_rng(spec.seed)
    base = rng.integers(0, 256, size=(spec.height, spec.width, 3), dtype=np.uint8)
    side = max(2, min(spec.width, spec.height) // 4)
    out = []
    for i in range(spec.frames):
        img = base.copy()
        x = (i * 3) % max(1, spec.width - side)
        img[:side, x : x + side] = 255
        out.append(img)
    return out


def encode_clip(path: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Encode ``spec`` to ``path`` (parent directories created); return ``path``."""
    if spec.codec not in ENCODERS:
        raise ValueError(f"codec {spec.codec!r} not in {sorted(ENCODERS)}")
    if spec.container not in FORMATS:
        raise ValueError(f"container {spec.container!r} not in {sorted(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = ENCODERS[spec.codec]
    rate = Fraction(spec.rate)
    with av.open(str(path), "w", format=FORMATS[spec.container], options=_MUXER_OPTIONS) as out:
        options = dict(_ENCODER_OPTIONS[encoder])
        if encoder == "libx265" and spec.frames < 4:
            # x265 emits garbage DTS when there are fewer frames than its B-frame lookahead needs.
            options["x265-params"] += ":bframes=0"
        stream = out.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i, img in enumerate(_frames(spec)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _encode_audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4", options=_MUXER_OPTIONS) as out:
        stream = out.add_stream("aac", rate=8000, layout="mono")
        t = np.arange(8000 // 5, dtype=np.float32) / 8000
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def write_broken(path: Path, kind: str) -> Path:
    """Write a non-video file of ``kind`` (see ``BROKEN_KINDS``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        # mp4 muxer writes the moov atom at the end, so the first half has none.
        whole = encode_clip(path.with_name(path.name + ".whole.mp4"), ClipSpec(frames=12))
        data = whole.read_bytes()
        whole.unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "audio-only":
        _encode_audio_only(path)
    else:
        raise ValueError(f"kind {kind!r} not in {BROKEN_KINDS}")
    return path


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[ClipSpec], Path]:
    """Session-wide ``spec -> Path``; each distinct spec is encoded once."""
    root = tmp_path_factory.mktemp("clips")
    cache: dict[ClipSpec, Path] = {}

    def make(spec: ClipSpec = ClipSpec()) -> Path:
        if spec not in cache:
            cache[spec] = encode_clip(root / spec.filename, spec)
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def broken_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Session-wide ``kind -> Path`` for ``write_broken`` files, written once each."""
    root = tmp_path_factory.mktemp("broken")
    suffix = {"audio-only": ".m4a"}

    def make(kind: str) -> Path:
        path = root / f"{kind}{suffix.get(kind, '.mp4')}"
        return path if path.exists() else write_broken(path, kind)

    return make


__all__ = [
    "BROKEN_KINDS",
    "ClipSpec",
    "broken_factory",
    "clip_factory",
    "encode_clip",
    "write_broken",
]
