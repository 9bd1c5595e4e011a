"""A throwaway local PostgreSQL server (Debian's `initdb`/`pg_ctl`) for tests and benchmarks.

The embedded stack keeps its serving state in SQLite; PostgreSQL is the store of the Kubernetes
deployment. Tests of the PostgreSQL store and `make bench` start a real server with this module: a
new cluster in a temporary directory, listening on 127.0.0.1 and a free port, password
authentication (scram-sha-256) for TCP. `initdb` and `pg_ctl` refuse to run as root: as root they
run as the `postgres` user (Debian's package creates it).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from stack.procs import free_port
from stack.waiting import NotYet, poll

SUPERUSER = "driftloop"


class PostgresNotInstalled(RuntimeError):
    pass


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl (PATH first, then Debian's /usr/lib/postgresql/<v>/bin)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotInstalled(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; on Debian: apt-get install postgresql"
    )


@dataclass
class LocalPostgres:
    """One running cluster; `url(db)` gives a libpq URL with the generated password."""

    root: Path
    port: int
    password: str
    bin_dir: Path
    run_as: str | None = None
    host: str = "127.0.0.1"
    _running: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _run(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            output = proc.stderr.strip() or proc.stdout.strip()
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {output}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses={self.host} -k {self.root} -c fsync=on"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """mode: fast (clean shutdown) or immediate (like a crash: no checkpoint)."""
        if self._running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
            self._running = False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_tcp(server: LocalPostgres, timeout: float) -> None:
    """Block until the server accepts a TCP login; the last connection error after `timeout` seconds."""
    import psycopg

    def connects() -> None:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
        except psycopg.Error as exc:
            raise NotYet(f"PostgreSQL on {server.host}:{server.port} does not accept a login: {exc}") from exc

    try:
        poll(connects, timeout=timeout, interval=0.2)
    except NotYet as exc:
        raise TimeoutError(f"{exc} (waited {timeout:.0f}s)") from exc.__cause__


def start_local_postgres(parent: str | os.PathLike[str] | None = None) -> LocalPostgres:
    """initdb + start a new cluster in a new temporary directory. Call `.destroy()` when done."""
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="driftloop-pg-", dir=parent))
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError as exc:
            raise PostgresNotInstalled(
                "running as root needs the 'postgres' user (Debian's postgresql package)"
            ) from exc
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)
    password = secrets.token_urlsafe(16)
    server = LocalPostgres(root=root, port=free_port(), password=password, bin_dir=bin_dir, run_as=run_as)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        server._run(
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        server.start()
        wait_tcp(server, timeout=30)  # pg_ctl -w waited for the socket; make sure TCP answers too
    except BaseException:
        server.destroy()
        raise
    return server
