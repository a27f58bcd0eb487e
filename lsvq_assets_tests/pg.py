"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl start`` in a temporary directory.

The server listens on 127.0.0.1 on a free port (its unix socket sits inside the temporary
directory, never in /var/run/postgresql), with password authentication for one superuser, and
fsync off (nothing in it outlives the session). Passwords are checked with md5 rather than
SCRAM: Dagster's PostgreSQL storage opens a connection for every query (no pool), and SCRAM's key
derivation would double each connection's cost (~16 ms against ~9 ms here) for nothing a test needs. PostgreSQL refuses to run as root, so under root
(as in CI) the directory is handed to an unprivileged system user and every server command runs as
that user through ``runuser``: Debian's ``postgres`` user when the package created it, else
``nobody``. ``PgServer.stop`` stops it (``pg_ctl stop -m fast``) and removes the directory.

Binaries come from PATH, else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout).
``pg_unavailable`` says why a server cannot be started here; the ``pg_server`` fixture (conftest)
skips with that reason, or fails when ``LSVQ_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REQUIRE_ENV = "LSVQ_REQUIRE_POSTGRES"
SERVER_USERS = ("postgres", "nobody")  # the first that exists runs the server when we are root
SUPERUSER = "lsvq"


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl, createdb and psql: PATH first, then /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []

    def version(d: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(d).parent.name)) or (0,)

    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for d in candidates:
        if all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "createdb", "psql")):
            return d
    return None


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for ourselves (not root), else an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {SERVER_USERS} exists to run PostgreSQL as")


def pg_unavailable() -> str | None:
    """Why a throwaway server cannot be started here (None: it can)."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without util-linux 'runuser' to start PostgreSQL as an unprivileged user"
    try:
        server_user()
    except RuntimeError as exc:
        return str(exc)
    try:
        import dagster_postgres  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev]' or '.[postgres]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server; ``params(db)`` are the connection fields (as DAGSTER_PG_* variables take them)."""

    bindir: Path
    root: Path  # the temporary directory: data/, sock/, server.log, pwfile
    port: int
    password: str
    user: pwd.struct_passwd | None
    host: str = "127.0.0.1"
    username: str = SUPERUSER
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        return argv if self.user is None else ["runuser", "-u", self.user.pw_name, "--", *argv]

    def _run(self, argv: list[str], *, as_server: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "PGPASSWORD": self.password, "TZ": "UTC"}
        cmd = self._as_server_user(argv) if as_server else argv
        proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}\n{log}")
        return proc

    def params(self, db: str) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "hostname": self.host, "db_name": db, "port": str(self.port)}

    def url(self, db: str) -> str:
        return f"postgresql://{self.username}:{self.password}@{self.host}:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run ``sql`` with psql over TCP as the superuser; its output."""
        return self._run([str(self.bindir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.username,
                          "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]).stdout

    def create_database(self, name: str, template: str | None = None) -> dict[str, str]:
        """A new database (``createdb`` over TCP with the password), empty or a copy of ``template``; its connection fields."""
        copy = ["-T", template] if template else []
        self._run([str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", self.username, *copy, name])
        self.databases.append(name)
        return self.params(name)

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (open connections are closed), then remove the directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60"], as_server=True, timeout=90)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server(tmp_parent: str | None = None) -> PgServer:
    """initdb + pg_ctl start in a fresh temporary directory; raises RuntimeError with the server log on failure."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(pg_unavailable() or "no PostgreSQL binaries")
    user = server_user()
    # Not under pytest's basetemp: that is private to us (0700), and the server user must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="lsvq-pg-", dir=tmp_parent))
    server = PgServer(bindir=bindir, root=root, port=0, password=secrets.token_hex(12), user=user)
    try:
        server.socket_dir.mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(server.password + "\n")
        os.chmod(root, 0o700)
        if user is not None:
            for path in (root, server.socket_dir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        server._run(
            [str(bindir / "initdb"), "-D", str(server.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth=md5", "-E", "UTF8", "--locale=C", "--no-sync"],
            as_server=True, timeout=120,
        )
        pwfile.unlink()
        for attempt in range(3):  # the free port can be taken between the probe and the bind
            server.port = free_port()
            options = (
                f"-h {server.host} -p {server.port} -k {server.socket_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                server._run(
                    [str(bindir / "pg_ctl"), "start", "-D", str(server.data), "-l", str(server.log), "-w", "-t", "60", "-o", options],
                    as_server=True, timeout=90,
                )
                break
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in (server.log.read_text(errors="replace") if server.log.exists() else ""):
                    raise
        # initdb stored the password as SCRAM (which md5 auth then still uses): store it as md5.
        server.psql(f"SET password_encryption = 'md5'; ALTER ROLE {SUPERUSER} PASSWORD '{server.password}'")
        return server
    except BaseException:
        server.stop()
        raise
