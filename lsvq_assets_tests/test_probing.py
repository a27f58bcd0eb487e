"""Both probe backends agree with each other and with ffprobe's JSON read independently."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest

from lsvq_assets.probing import (
    BrokenClip,
    FFprobeProber,
    Probe,
    Prober,
    ProbeSetupError,
    PyAVProber,
    make_prober,
)
from lsvq_assets.probing.ffprobe import parse_ffprobe_json
from lsvq_assets_tests.clipgen import BROKEN_KINDS, ClipSpec, encode_clip

# clip_factory / broken_factory are session fixtures from clipgen, registered by conftest.py.

FFPROBE = "/usr/bin/ffprobe"
ORIGINAL_ARGS = [
    "-v", "error", "-select_streams", "v:0",
    "-show_entries", "stream=width,height,r_frame_rate,avg_frame_rate,duration,pix_fmt,codec_name",
    "-show_entries", "format=duration", "-of", "json",
]  # fmt: skip

# codec x pix_fmt x rate x size x container; libvpx-vp9 in this PyAV wheel has no 10-bit
# and FFmpeg's mpeg4 encoder is 4:2:0 8-bit only, so those combinations are absent.
SPECS = [
    ClipSpec(),
    ClipSpec(codec="h264", rate="30000/1001", width=48, height=64, frames=8),
    ClipSpec(codec="h264", pix_fmt="yuv420p10le", rate="24000/1001", container="mkv"),
    ClipSpec(codec="h264", pix_fmt="yuv444p", rate="60", frames=13),
    ClipSpec(codec="h264", rate="60", width=96, height=160, frames=1),
    ClipSpec(codec="hevc"),
    ClipSpec(codec="hevc", pix_fmt="yuv420p10le", rate="30000/1001", width=48, height=64),
    ClipSpec(codec="hevc", pix_fmt="yuv444p", rate="24000/1001", container="mkv", frames=9),
    ClipSpec(codec="hevc", rate="60", width=96, height=160, frames=2),
    ClipSpec(codec="vp9", container="webm"),
    ClipSpec(codec="vp9", container="webm", rate="30000/1001", width=48, height=64, frames=1),
    ClipSpec(codec="vp9", pix_fmt="yuv444p", rate="24000/1001", container="mkv"),
    ClipSpec(codec="vp9", rate="60", container="mp4", frames=10),
    ClipSpec(codec="mpeg4"),
    ClipSpec(codec="mpeg4", rate="30000/1001", width=48, height=64, container="mkv", frames=7),
    ClipSpec(codec="mpeg4", rate="24000/1001", width=96, height=160, frames=12),
    ClipSpec(codec="mpeg4", rate="60", seed=3),
]


def spec_id(spec: ClipSpec) -> str:
    return spec.filename


# -- an independent reading of ffprobe's JSON, deliberately not sharing production code --


def expected_from_ffprobe(path: Path) -> Probe | str:
    """The original script's rules applied to raw ffprobe JSON; a str names the broken kind."""
    proc = subprocess.run([FFPROBE, *ORIGINAL_ARGS, str(path)], capture_output=True, timeout=30)
    if proc.returncode != 0:
        return "probe-failed"
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return "probe-failed"
    return expected_from_doc(doc)


def expected_from_doc(doc: dict[str, Any]) -> Probe | str:
    streams = doc.get("streams", [])
    if len(streams) == 0:
        return "no-video-stream"
    st = streams[0]
    if st.get("width", 0) == 0 or st.get("height", 0) == 0:
        return "zero-dimensions"

    rate_text = st.get("avg_frame_rate", "")
    if rate_text == "":
        rate_text = st.get("r_frame_rate", "")
    if "/" in rate_text:
        top, bottom = rate_text.split("/")
        fps = 0.0 if float(bottom) == 0.0 else float(top) / float(bottom)
    else:
        fps = float(rate_text) if rate_text else 0.0

    seconds = 0.0
    if "duration" in st and float(st["duration"]) > 0:
        seconds = float(st["duration"])
    elif "duration" in doc.get("format", {}):
        seconds = float(doc["format"]["duration"])

    return Probe(
        width=st["width"],
        height=st["height"],
        framerate=fps,
        duration_s=seconds,
        pix_fmt=st.get("pix_fmt", "unknown"),
        encoder_upstream=st.get("codec_name", "unknown"),
    )


def outcome(prober: Prober, path: Path) -> Probe | str:
    """A Probe, or the broken reason's kind (text before ':')."""
    try:
        return prober.probe(path)
    except BrokenClip as exc:
        return exc.reason.split(":", 1)[0]


@pytest.fixture(scope="module")
def ffprobe_bin() -> str:
    if not os.access(FFPROBE, os.X_OK):
        pytest.skip(f"{FFPROBE} is absent (CI installs Debian's ffmpeg)")
    return FFPROBE


@pytest.fixture(scope="module")
def backends(ffprobe_bin: str) -> tuple[Prober, Prober]:
    return make_prober("pyav"), make_prober("ffprobe", ffprobe_bin)


def broken_kind(kind: str) -> str:
    return "no-video-stream" if kind == "audio-only" else "probe-failed"


# -- PyAV alone (runs without ffprobe) --


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_pyav_reads_what_was_encoded(
    spec: ClipSpec, clip_factory: Callable[[ClipSpec], Path]
) -> None:
    probe = PyAVProber().probe(clip_factory(spec))
    assert (probe.width, probe.height) == (spec.width, spec.height)
    assert (probe.pix_fmt, probe.encoder_upstream) == (spec.pix_fmt, spec.codec)
    num, _, den = spec.rate.partition("/")
    assert probe.framerate == pytest.approx(float(num) / float(den or 1))
    assert probe.duration_s == pytest.approx(spec.frames * float(den or 1) / float(num), abs=0.05)


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_pyav_broken_files(kind: str, broken_factory: Callable[[str], Path]) -> None:
    with pytest.raises(BrokenClip) as info:
        PyAVProber().probe(broken_factory(kind))
    assert info.value.reason.split(":", 1)[0] == broken_kind(kind)


# -- parity on real clips --


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_backends_match_each_other_and_ffprobe_json(
    spec: ClipSpec, clip_factory: Callable[[ClipSpec], Path], backends: tuple[Prober, Prober]
) -> None:
    path = clip_factory(spec)
    pyav_result, ffprobe_result = (outcome(b, path) for b in backends)
    expected = expected_from_ffprobe(path)
    assert isinstance(expected, Probe), expected
    assert pyav_result == ffprobe_result == expected


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_broken_files_are_broken_for_both(
    kind: str, broken_factory: Callable[[str], Path], backends: tuple[Prober, Prober]
) -> None:
    path = broken_factory(kind)
    want = broken_kind(kind)
    assert expected_from_ffprobe(path) == want
    for prober in backends:
        with pytest.raises(BrokenClip) as info:
            prober.probe(path)
        assert info.value.reason.split(":", 1)[0] == want, (prober.name, info.value.reason)


@pytest.mark.parametrize("backend", ["pyav", "ffprobe"])
def test_missing_file_and_directory_are_broken(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    binary = request.getfixturevalue("ffprobe_bin") if backend == "ffprobe" else None
    prober = make_prober(backend, binary)
    for path in (tmp_path / "nope.mp4", tmp_path):
        with pytest.raises(BrokenClip, match="^probe-failed: "):
            prober.probe(path)


@pytest.mark.parametrize("name", ["-i.mp4", "http:x.mp4", "concat:a.mp4", "a b's.mp4"])
def test_odd_relative_names_are_plain_files(
    name: str,
    backends: tuple[Prober, Prober],
    clip_factory: Callable[[ClipSpec], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / name).write_bytes(clip_factory(ClipSpec()).read_bytes())
    monkeypatch.chdir(tmp_path)
    results = [b.probe(Path(name)) for b in backends]
    assert results[0] == results[1] and results[0].encoder_upstream == "h264"


# -- the rules on synthetic ffprobe JSON (edge cases real clips do not produce) --

STREAM = {"width": 64, "height": 48, "pix_fmt": "yuv420p", "codec_name": "h264"}
RULE_DOCS = {
    "avg-rate": {"streams": [{**STREAM, "avg_frame_rate": "30000/1001", "r_frame_rate": "60/1"}]},
    "avg-missing": {"streams": [{**STREAM, "r_frame_rate": "24000/1001"}]},
    "avg-empty": {"streams": [{**STREAM, "avg_frame_rate": "", "r_frame_rate": "24/1"}]},
    "avg-0/0-no-fallback": {
        "streams": [{**STREAM, "avg_frame_rate": "0/0", "r_frame_rate": "25/1"}]
    },
    "no-rates": {"streams": [dict(STREAM)]},
    "stream-duration": {
        "streams": [{**STREAM, "duration": "1.500000"}],
        "format": {"duration": "2.000000"},
    },
    "stream-duration-zero": {
        "streams": [{**STREAM, "duration": "0.000000"}],
        "format": {"duration": "2.000000"},
    },
    "stream-duration-negative": {
        "streams": [{**STREAM, "duration": "-0.040000"}],
        "format": {"duration": "0.960000"},
    },
    "format-duration-only": {"streams": [dict(STREAM)], "format": {"duration": "0.240000"}},
    "no-duration": {"streams": [dict(STREAM)], "format": {}},
    "no-pix-fmt-or-codec": {"streams": [{"width": 2, "height": 2}]},
    "no-streams": {"programs": [], "streams": []},
    "empty-doc": {},
    "zero-width": {"streams": [{**STREAM, "width": 0}]},
    "missing-height": {"streams": [{"width": 64, "codec_name": "h264"}]},
}


@pytest.mark.parametrize("doc", RULE_DOCS.values(), ids=RULE_DOCS.keys())
def test_ffprobe_json_rules(doc: dict[str, Any]) -> None:
    want = expected_from_doc(doc)
    if isinstance(want, str):
        with pytest.raises(BrokenClip) as info:
            parse_ffprobe_json(doc)
        assert info.value.reason == want
    else:
        assert parse_ffprobe_json(doc) == want


def test_rule_values_spelled_out() -> None:
    def fps(name: str) -> float:
        return parse_ffprobe_json(RULE_DOCS[name]).framerate

    def seconds(name: str) -> float:
        return parse_ffprobe_json(RULE_DOCS[name]).duration_s

    assert fps("avg-rate") == 30000 / 1001
    assert fps("avg-missing") == 24000 / 1001
    assert fps("avg-empty") == 24.0
    assert fps("avg-0/0-no-fallback") == fps("no-rates") == 0.0
    assert seconds("stream-duration") == 1.5
    assert seconds("stream-duration-zero") == 2.0
    assert seconds("stream-duration-negative") == 0.96
    assert seconds("no-duration") == 0.0
    odd = parse_ffprobe_json(RULE_DOCS["no-pix-fmt-or-codec"])
    assert (odd.pix_fmt, odd.encoder_upstream) == ("unknown", "unknown")


# -- the ffprobe subprocess's failure modes, with fake binaries --


def fake_ffprobe(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-ffprobe"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("echo 'x.mp4: Invalid data found' >&2; exit 1", "probe-failed: x.mp4: Invalid data found"),
        ("exit 3", "probe-failed: exit status 3"),
        ("echo '{not json'", "probe-failed: bad JSON"),
        ("exec sleep 5", "probe-failed: timeout after 0.3s"),
        ("echo '{\"streams\": []}'", "no-video-stream"),
        ("echo '{\"streams\": [{\"width\": 0, \"height\": 0}]}'", "zero-dimensions"),
        ("echo '{\"streams\": [7]}'", "probe-failed: unexpected ffprobe JSON"),
    ],
    ids=["nonzero-exit", "silent-exit", "bad-json", "timeout", "no-stream", "zero-dims", "odd"],
)
def test_ffprobe_failures_are_broken(tmp_path: Path, body: str, reason: str) -> None:
    prober = FFprobeProber(fake_ffprobe(tmp_path, body), timeout_s=0.3)
    with pytest.raises(BrokenClip) as info:
        prober.probe(tmp_path / "x.mp4")
    assert info.value.reason.startswith(reason)


def test_ffprobe_gets_an_argument_list(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    prober = FFprobeProber(fake_ffprobe(tmp_path, f'printf "%s\\n" "$@" > {argv_file}; exit 1'))
    weird = tmp_path / "a b;$(touch pwned)'\".mp4"
    with pytest.raises(BrokenClip):
        prober.probe(weird)
    assert argv_file.read_text().splitlines() == [*ORIGINAL_ARGS, str(weird)]  # already absolute
    assert not (tmp_path / "pwned").exists()


# -- make_prober and setup errors --


def test_make_prober_pyav() -> None:
    assert isinstance(make_prober(), PyAVProber)
    assert make_prober("pyav").name == "pyav"


def test_make_prober_ffprobe(ffprobe_bin: str) -> None:
    prober = make_prober("ffprobe", ffprobe_bin)
    assert isinstance(prober, FFprobeProber) and prober.name == "ffprobe"


def test_make_prober_unknown_backend() -> None:
    with pytest.raises(ValueError) as info:
        make_prober("gstreamer")
    assert all(word in str(info.value) for word in ("gstreamer", "pyav", "ffprobe"))


@pytest.mark.parametrize("binary", ["/nonexistent/ffprobe", "no-such-ffprobe-binary"])
def test_missing_ffprobe_binary_is_a_setup_error(binary: str) -> None:
    with pytest.raises(ProbeSetupError) as info:
        make_prober("ffprobe", binary)
    message = str(info.value)
    assert binary in message and "--ffprobe-bin" in message and "$FFPROBE_BIN" in message
    assert not isinstance(info.value, BrokenClip)


def test_ffprobe_bin_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FFPROBE_BIN", "/nonexistent/env-ffprobe")
    with pytest.raises(ProbeSetupError, match="/nonexistent/env-ffprobe"):
        make_prober("ffprobe")
    fake = fake_ffprobe(tmp_path, "exit 1")
    monkeypatch.setenv("FFPROBE_BIN", fake)
    assert make_prober("ffprobe").ffprobe_bin == fake  # type: ignore[attr-defined]


def test_ffprobe_binary_vanishing_later_is_a_setup_error(tmp_path: Path) -> None:
    fake = fake_ffprobe(tmp_path, "exit 1")
    prober = FFprobeProber(fake)
    os.unlink(fake)
    with pytest.raises(ProbeSetupError):
        prober.probe(tmp_path / "x.mp4")


# -- PyAV specifics --


def test_pyav_closes_containers(clip_factory: Callable[[ClipSpec], Path]) -> None:
    path = clip_factory(ClipSpec())
    prober = PyAVProber()
    prober.probe(path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        prober.probe(path)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_probe_is_frozen(clip_factory: Callable[[ClipSpec], Path]) -> None:
    probe = PyAVProber().probe(clip_factory(ClipSpec()))
    with pytest.raises(FrozenInstanceError):
        probe.width = 1  # type: ignore[misc]


# -- the clip generator itself --


@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9", "mpeg4"])
def test_clipgen_is_deterministic_and_seeded(codec: str, tmp_path: Path) -> None:
    container = "webm" if codec == "vp9" else "mp4"
    first = encode_clip(tmp_path / "a" / "clip", ClipSpec(codec=codec, container=container))
    again = encode_clip(tmp_path / "b" / "clip", ClipSpec(codec=codec, container=container))
    other = encode_clip(tmp_path / "c" / "clip", ClipSpec(codec=codec, container=container, seed=1))
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_clip_factory_caches(clip_factory: Callable[[ClipSpec], Path]) -> None:
    spec = ClipSpec(seed=42)
    assert clip_factory(spec) == clip_factory(spec)
    assert clip_factory(spec) != clip_factory(ClipSpec(seed=43))
