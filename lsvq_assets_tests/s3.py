"""A throwaway S3-compatible server for the tests: moto's server mode in a subprocess on loopback.

``python -m moto.server -H 127.0.0.1 -p PORT`` runs in its own process (never in-process mocking:
the Dagster processes of the topology test are separate processes and must reach it over HTTP),
on a free port of 127.0.0.1 only. ``start_s3()`` waits until it answers, and returns an ``S3Server``
with the endpoint URL, dummy credentials (region us-east-1), ``env()`` (the standard ``AWS_*``
variables that boto3, s3fs and the project read), ``create_bucket(name)`` and ``client()``.
``S3Server.stop()`` terminates the process (then kills it after a timeout).

``s3_unavailable`` says why it cannot run here; the ``s3_server`` fixture (conftest) skips with that
reason, or fails when ``LSVQ_REQUIRE_S3=1`` (CI).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REQUIRE_ENV = "LSVQ_REQUIRE_S3"
HOST = "127.0.0.1"  # never any other address
REGION = "us-east-1"
ACCESS_KEY = "lsvq-test-access-key"
SECRET_KEY = "lsvq-test-secret-key"


def s3_unavailable() -> str | None:
    """Why a moto server cannot be started here (None: it can)."""
    for module, hint in (("moto", "moto[server]"), ("flask", "moto[server]"), ("boto3", "boto3")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[dev]' or '{hint}')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto server: ``endpoint_url``, credentials, ``env()``, ``create_bucket()``, ``stop()``."""

    proc: subprocess.Popen
    port: int
    log: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard variables boto3/botocore and s3fs read (AWS_ENDPOINT_URL for an S3-compatible store)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # Never a real account's settings from the user's home directory.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        """A boto3 S3 client on this server (explicit endpoint and credentials, nothing from the environment)."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
        ).client("s3", endpoint_url=self.endpoint_url)

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name``; returns ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return f"s3://{name}"

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key of ``bucket`` under ``prefix`` (paginated)."""
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return keys

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        try:
            self.log.unlink()
        except OSError:
            pass


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=2) as resp:  # moto's dashboard: 200 when up
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def start_s3(timeout: float = 30) -> S3Server:
    """Start ``python -m moto.server`` on a free loopback port and wait until it answers HTTP."""
    reason = s3_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    last = ""
    for _attempt in range(3):  # the free port can be taken between the probe and the bind
        port = free_port()
        fd, log_name = tempfile.mkstemp(prefix="lsvq-moto-", suffix=".log")
        log = Path(log_name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION})
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        server = S3Server(proc=proc, port=port, log=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(server.endpoint_url):
                return server
            time.sleep(0.1)
        last = log.read_text(errors="replace")[-2000:]
        server.stop()
        if "Address already in use" not in last:
            break
    raise RuntimeError(f"moto server did not answer on {HOST} within {timeout:.0f}s:\n{last}")
