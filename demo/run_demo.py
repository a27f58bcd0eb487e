"""`make demo`: generate a small LSVQ-like corpus (a train and a test split), serve it on loopback,
ingest both splits through Dagster.

    python -m demo.run_demo            # make demo: corpus, clip server, the CLI over every partition
    python -m demo.run_demo --serve    # make demo-ui: the clip server again + `dagster dev` on the
                                       # same instance, so runs started from the UI can download

Everything lives in ``.demo/`` (git-ignored): ``corpus/`` (the served clips and the two label
files), ``lsvq/`` (the working directory: clips, the fetch store, ``partitions/<folder>/``,
``lsvq_train.jsonl``, ``lsvq_test.jsonl`` and their replay manifests), ``dagster_home/`` (the
persistent Dagster instance both the CLI and the UI use; its dagster.yaml is a copy of
``deploy/dagster.yaml``, written once) and ``demo.json`` (the clip server's port, kept across runs
so the URLs the runs were given stay valid, and the shards' sha256). Re-running is safe: the corpus
is reused, nothing is fetched again and both shards come out byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from demo.make_corpus import FOLDERS, DemoCorpus, ensure_corpus, load_corpus
from lsvq_assets import cli
from lsvq_assets.settings import ui_command_env
from lsvq_assets_tests.loopback import LoopbackServer, _Handler, _Server

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".demo"
HOST = "127.0.0.1"
DEFAULT_CLIP_PORT = 8431
DEFAULT_UI_PORT = 3000
MIN_ROWS = 100  # the demo's label files are small: the CLI refuses files under 1,000 rows by default

DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"  # the project's sample instance config, used when present
DAGSTER_YAML = """\
# The demo's Dagster instance (written by `make demo`; edit freely, it is not rewritten).
# Storage: SQLite files in this directory. `make demo-ui` runs `dagster dev` on it.
concurrency:
  runs:
    max_concurrent_runs: 2   # backfills from the UI: two partitions at a time on a laptop
telemetry:
  enabled: false
"""


class DemoClipServer(LoopbackServer):
    """The test suite's loopback server, bound to a chosen port instead of a free one."""

    def __init__(self, root: Path, port: int) -> None:
        super().__init__(root)
        self.port = port

    def start(self) -> "DemoClipServer":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server((HOST, self.port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self.base_url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-clips", daemon=True)
        self._thread.start()
        return self


class Paths:
    """Where the demo keeps its files (all under one directory, .demo/ by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.corpus = root / "corpus"
        self.lsvq = root / "lsvq"
        self.dagster_home = root / "dagster_home"
        self.state = root / "demo.json"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _read_state(paths: Paths) -> dict:
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(paths: Paths, state: dict) -> None:
    tmp = paths.state.with_name(paths.state.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.state)


def _ensure_home(paths: Paths) -> None:
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    config = paths.dagster_home / "dagster.yaml"
    if not config.exists():
        if DEPLOY_YAML.exists():
            shutil.copyfile(DEPLOY_YAML, config)
        else:
            config.write_text(DAGSTER_YAML)


def cli_argv(paths: Paths, corpus: DemoCorpus, port: int) -> list[str]:
    """The CLI's arguments for the demo: both splits, every row, per-clip URLs on the loopback server.

    (No ``--source url``: a URL template already selects it, and the UI line the CLI prints then
    carries no LSVQ_SOURCE.)
    """
    return [
        "--lsvq-dir", str(paths.lsvq),
        *(a for split, path in corpus.label_files.items() for a in ("--split", f"{split}={path}")),
        "--min-csv-rows", str(MIN_ROWS),
        "--clip-url-template", f"http://{HOST}:{port}/{{name}}{{suffix}}",
        "--full",
    ]


def ui_environment(paths: Paths, argv: list[str]) -> dict[str, str]:
    """DAGSTER_HOME and every non-default setting of the CLI's run as variables (LSVQ_SPLITS...),
    exactly those of the ``dagster dev`` command the CLI prints (``settings.ui_command_env``)."""
    config = cli.resolve_config(cli.build_parser().parse_args(argv), environ={})
    env = {"DAGSTER_HOME": str(paths.dagster_home)}
    for assignment in ui_command_env(config):
        var, _, value = shlex.split(assignment)[0].partition("=")
        env[var] = value
    return env


def shard_paths(paths: Paths, corpus: DemoCorpus) -> dict[str, tuple[Path, Path]]:
    """Split -> (shard, replay manifest): ``<lsvq-dir>/lsvq_<split>.jsonl`` (no --output-dir given)."""
    return {s: (paths.lsvq / f"lsvq_{s}.jsonl", paths.lsvq / f"lsvq_{s}.manifest.json") for s in corpus.label_files}


def _clean_environment() -> None:
    """Drop the caller's LSVQ_* settings: the demo passes its own."""
    for var in [v for v in os.environ if v.startswith("LSVQ_") or v in ("FFPROBE_BIN", "HF_TOKEN")]:
        del os.environ[var]


def _reset_instance(paths: Paths) -> None:
    """Forget the demo instance's history (runs, events, partitions), keeping its dagster.yaml."""
    if not paths.dagster_home.exists():
        return
    for entry in paths.dagster_home.iterdir():
        if entry.name != "dagster.yaml":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(paths: Paths, ui_port: int) -> int:
    """Generate or reuse the corpus, serve it, ingest both splits through the CLI; return its exit code."""
    started = time.monotonic()
    _clean_environment()
    paths.root.mkdir(parents=True, exist_ok=True)
    state = _read_state(paths)
    corpus, generated = ensure_corpus(paths.corpus)
    kinds = corpus.kinds
    print(
        f"demo: {'generated' if generated else 'reusing'} a train split of {corpus.rows['train']} rows and a test split "
        f"of {corpus.rows['test']} rows drawing clips from the same {len(FOLDERS)} folders (in train, on purpose: "
        f"{kinds.get('missing', 0)} missing on the server -> HTTP 404, {kinds.get('broken', 0)} not videos, "
        f"{kinds.get('dup', 0)} duplicate) at {corpus.directory}",
        flush=True,
    )
    if generated and (paths.lsvq.exists() or paths.dagster_home.exists()):
        # The clips behind the names changed: an old working directory or instance history would mislead.
        print(f"demo: new corpus, so the old working directory {paths.lsvq} and the demo instance's history are removed", flush=True)
        shutil.rmtree(paths.lsvq, ignore_errors=True)
        _reset_instance(paths)
        state = {k: v for k, v in state.items() if k == "clip_port"}
    port = state.get("clip_port", DEFAULT_CLIP_PORT)
    if not _port_free(port):
        new = _free_port()
        print(f"demo: port {port} is busy, serving the clips on {new} instead", flush=True)
        port = new
    _ensure_home(paths)
    os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
    argv = cli_argv(paths, corpus, port)
    print(f"demo: serving {corpus.served} on http://{HOST}:{port}/ and running:", flush=True)
    print("  lsvq-to-corpus-jsonl " + " ".join(shlex.quote(a) for a in argv), flush=True)
    with DemoClipServer(corpus.served, port) as server:
        code = cli.main(argv)
        fetched = server.count()
    shards = shard_paths(paths, corpus)
    digests = {s: _sha256(out) if out.exists() else "" for s, (out, _) in shards.items()}
    before = state.get("shard_sha256", {})
    same = all(digests.values()) and isinstance(before, dict) and digests == before
    _write_state(paths, {"clip_port": port, "shard_sha256": digests, "cli_argv": argv})
    print()
    print(f"demo: finished in {time.monotonic() - started:.1f} s (exit code {code}); the clip server answered {fetched} requests")
    for split, (out, replay) in shards.items():
        print(f"  {split + ' shard:':<18}{out}")
        print(f"  {'sha256:':<18}{digests[split] or '-'}")
        print(f"  {'replay manifest:':<18}{replay}")
    if same:
        print("  both shards are byte-identical to the previous run's" + (" and nothing was fetched" if fetched == 0 else ""))
    print(f"  Dagster instance: {paths.dagster_home}")
    print("  what failed:      in the UI, each partition's lsvq_clips (failed_clips) and lsvq_probes (broken_clips)")
    print(
        f"Open the Dagster UI on this instance; this also serves the demo clips again on {HOST}:{port}, so runs "
        "started from the UI can download (Ctrl-C stops both):"
    )
    if paths.root == DEFAULT_DIR:
        print(f"  make demo-ui    # then open http://{HOST}:{ui_port}")
    else:
        print(f"  python -m demo.run_demo --serve --dir {shlex.quote(str(paths.root))}    # then open http://{HOST}:{ui_port}")
    return code


def serve(paths: Paths, ui_port: int) -> int:
    """Serve the demo clips on the port the demo used and run `dagster dev` on the demo instance."""
    state = _read_state(paths)
    corpus = load_corpus(paths.corpus)
    if corpus is None or "clip_port" not in state:
        print("error: no demo here yet: run `make demo` first.", file=sys.stderr)
        return 2
    port = state["clip_port"]
    if not _port_free(port):
        print(f"error: port {port} (the demo's clip server) is in use; is `make demo-ui` already running?", file=sys.stderr)
        return 2
    _ensure_home(paths)
    _clean_environment()
    env = {**os.environ, **ui_environment(paths, state["cli_argv"])}
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", HOST, "-p", str(ui_port)]
    settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k == "DAGSTER_HOME" or k.startswith("LSVQ_"))
    with DemoClipServer(corpus.served, port):
        print(f"demo: serving the demo clips on http://{HOST}:{port}/", flush=True)
        print(f"demo: {settings} dagster dev -w workspace.yaml -h {HOST} -p {ui_port}", flush=True)
        print(f"demo: the UI will be at http://{HOST}:{ui_port} (Ctrl-C stops it and the clip server)", flush=True)
        # Ctrl-C must reach dagster dev as an interrupt even when this process was started with
        # SIGINT ignored (a background job of a script): give the child the default disposition.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Its own process group: Ctrl-C and SIGTERM reach this process, which passes them on as an
        # interrupt, and when dagster dev does not stop in time its whole group goes (code server,
        # webserver, daemon), not dagster dev alone.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
        signal.signal(signal.SIGTERM, _terminated)
        try:
            return proc.wait()
        except (KeyboardInterrupt, _Terminated):
            _stop(proc)
    return 0


class _Terminated(Exception):
    pass


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def _stop(proc: subprocess.Popen) -> None:
    """Let dagster dev shut its webserver, daemon and code server down; kill its group if it takes too long."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (nothing, after a clean stop)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.run_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve the clips again and run `dagster dev` on the demo instance")
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="the demo's directory (default: .demo in the repository)")
    parser.add_argument("--ui-port", type=int, default=int(os.environ.get("DEMO_UI_PORT", DEFAULT_UI_PORT)), help="dagster dev's port (default: 3000; DEMO_UI_PORT)")
    args = parser.parse_args(argv)
    paths = Paths(Path(args.dir).absolute())
    return serve(paths, args.ui_port) if args.serve else run(paths, args.ui_port)


if __name__ == "__main__":
    sys.exit(main())
