"""
A throwaway PostgreSQL cluster for end-to-end tests and benchmarks, from the distribution's
``postgresql`` package (``initdb`` and ``pg_ctl``): a fresh data directory, listening on 127.0.0.1
on a free port only, with an ``airflow`` database. A development tool (Linux only): the provider
never imports it.

PostgreSQL refuses to run as root: as root, the cluster runs as an unprivileged system user (the
package's ``postgres`` user, or one created here), in a data directory that user owns. As root the
package is installed when missing; otherwise a missing package is a :class:`PostgresUnavailable`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from firered_devtools.processes import ThrowawayServer, alive, free_port

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Where Debian and Ubuntu install the server programs (one directory per major version).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The system user created to run the cluster as root when the package's ``postgres`` user is missing.
SYSTEM_USER = "firered-pg"
DATABASE = "airflow"
#: The programs used here, all in the server's directory.
PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb")
ROLE = "airflow"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs are missing and cannot be installed here."""


def _version_key(path: Path) -> tuple[int, ...]:
    name = path.parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_server_bin() -> Path | None:
    """The directory holding the server's :data:`PROGRAMS` (the newest version), or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        resolved = Path(on_path).resolve().parent
        if all((resolved / name).exists() for name in PROGRAMS):
            return resolved
    candidates = sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), key=_version_key, reverse=True)
    for directory in candidates:
        if all((directory / name).exists() for name in PROGRAMS):
            return directory
    return None


def _apt_get(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ensure_server_bin(timeout: float = 600) -> Path:
    """
    The server programs' directory, installing the distribution's ``postgresql`` package first when
    it is missing and this process is root.

    :param timeout: seconds allowed for each ``apt-get`` step.
    :raises PostgresUnavailable: not installed and cannot be installed here.
    """
    found = find_server_bin()
    if found:
        return found
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "PostgreSQL server programs (initdb, pg_ctl) not found: install the distribution's "
            "'postgresql' package (e.g. 'sudo apt-get install postgresql'), or run as root to have "
            "it installed"
        )
    if not shutil.which("apt-get"):
        raise PostgresUnavailable("PostgreSQL is not installed and apt-get is missing: install 'postgresql'")
    result = _apt_get("install", "-y", "--no-install-recommends", "postgresql", timeout=timeout)
    if result.returncode != 0:  # a fresh image has no package lists yet
        _apt_get("update", timeout=timeout)
        result = _apt_get("install", "-y", "--no-install-recommends", "postgresql", timeout=timeout)
    found = find_server_bin()
    if result.returncode != 0 or found is None:
        raise PostgresUnavailable(f"installing 'postgresql' failed:\n{result.stderr[-2000:]}")
    return found


def _ensure_system_user() -> str:
    """An unprivileged user to run the server as (root is refused by PostgreSQL)."""
    for name in ("postgres", SYSTEM_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return SYSTEM_USER


class PostgresCluster(ThrowawayServer):
    """
    A PostgreSQL cluster that exists between :meth:`start` and :meth:`stop` (or a ``with`` block).

    :param max_connections: the server's connection limit; every Airflow process keeps a pool.
    :param timeout: seconds allowed for each server command (initdb, start, stop).
    """

    def __init__(self, *, max_connections: int = 200, timeout: float = 60) -> None:
        self.max_connections = max_connections
        self.timeout = timeout
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.root: Path | None = None
        self.user: str | None = None
        self.bin: Path | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``airflow`` database."""
        return f"postgresql+psycopg2://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self._root() / "data"

    @property
    def log_path(self) -> Path:
        return self._root() / "server.log"

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("the PostgreSQL cluster is not started")
        return self.root

    # -- running commands ------------------------------------------------------------------------

    def _argv(self, program: str, *args: str) -> list[str]:
        assert self.bin is not None
        argv = [str(self.bin / program), *args]
        if self.user is None:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", self.user, "--", *argv]
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *argv]

    def _run(self, program: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        """Run a server program to completion; its output goes to a file (a daemon may inherit it)."""
        out = self._root() / f"{program}.out"
        with out.open("ab") as sink:
            result = subprocess.run(
                self._argv(program, *args),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self._root(),  # a directory the server's user can enter
                env={**os.environ, **(env or {})},
                timeout=self.timeout,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} exited {result.returncode}:\n{out.read_text(errors='replace')[-3000:]}"
                f"\n{self._server_log()}"
            )

    def _server_log(self) -> str:
        try:
            return f"--- server log ---\n{self.log_path.read_text(errors='replace')[-3000:]}"
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Create the cluster, start the server and create the ``airflow`` database."""
        self.bin = ensure_server_bin()
        self.user = _ensure_system_user() if os.geteuid() == 0 else None
        # In the system temp dir, not under a test's tmp_path: the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="firered-pg-"))
        try:
            self._init_and_start()
        except BaseException:
            self.stop()
            raise
        return self

    def _init_and_start(self) -> None:
        root = self._root()
        pwfile = root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            ROLE,
            "-E",
            "UTF8",
            "--no-sync",
            # Password over TCP; the unix socket sits in a directory only the server's user can enter.
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            f"--pwfile={pwfile}",
        )
        pwfile.unlink()
        options = " ".join(self._server_options())
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(self.timeout)),
            "-o",
            options,
        )
        # Over the socket (trust): no password on any command line.
        self._run("createdb", "-h", str(root), "-p", str(self.port), "-U", ROLE, DATABASE)

    def _server_options(self) -> Sequence[str]:
        return (
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            f"-k {self._root()}",
            f"-c max_connections={self.max_connections}",
            # Throwaway data: durability only costs time on a small machine.
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut) and remove its files."""
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _kill_postmaster(self) -> None:
        """SIGQUIT (immediate shutdown), then SIGKILL, the server whose pid the data dir records."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not alive(pid):
                return
