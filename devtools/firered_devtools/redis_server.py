"""
A throwaway Redis server for end-to-end tests (the Celery broker), from the distribution's
``redis-server`` package: listening on 127.0.0.1 on a free port only, with a password, no persistence
and its files in a fresh directory removed by :meth:`RedisServer.stop`. A development tool (Linux
only): the provider never imports it.

As root the server runs as an unprivileged system user (the one :mod:`~firered_devtools.postgres`
uses) and the package is installed when missing; otherwise a missing package is a
:class:`RedisUnavailable`.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from firered_devtools.postgres import _apt_get, _ensure_system_user
from firered_devtools.processes import ThrowawayServer, free_port, launch, stop_group, wait_ready

if TYPE_CHECKING:
    import subprocess

#: Where Debian's package installs the server.
DEBIAN_SERVER = Path("/usr/bin/redis-server")
PACKAGE = "redis-server"


class RedisUnavailable(RuntimeError):
    """The Redis server program is missing and cannot be installed here."""


def find_server() -> Path | None:
    """Return the ``redis-server`` program, or None."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    return DEBIAN_SERVER if DEBIAN_SERVER.exists() else None


def ensure_server(timeout: float = 600) -> Path:
    """
    Return the ``redis-server`` program, installing the distribution's package first when it is
    missing and this process is root.

    :param timeout: seconds allowed for each ``apt-get`` step.
    :raises RedisUnavailable: not installed and cannot be installed here.
    """
    found = find_server()
    if found:
        return found
    if os.geteuid() != 0:
        raise RedisUnavailable(
            f"redis-server not found: install the distribution's '{PACKAGE}' package "
            f"(e.g. 'sudo apt-get install {PACKAGE}'), or run as root to have it installed"
        )
    if not shutil.which("apt-get"):
        raise RedisUnavailable(f"redis-server is not installed and apt-get is missing: install '{PACKAGE}'")
    result = _apt_get("install", "-y", "--no-install-recommends", PACKAGE, timeout=timeout)
    if result.returncode != 0:  # a fresh image has no package lists yet
        _apt_get("update", timeout=timeout)
        result = _apt_get("install", "-y", "--no-install-recommends", PACKAGE, timeout=timeout)
    found = find_server()
    if result.returncode != 0 or found is None:
        raise RedisUnavailable(f"installing '{PACKAGE}' failed:\n{result.stderr[-2000:]}")
    return found


class RedisServer(ThrowawayServer):
    """
    A Redis server that exists between :meth:`start` and :meth:`stop` (or a ``with`` block).

    :param timeout: seconds the server has to answer after it is started.
    """

    def __init__(self, *, timeout: float = 30) -> None:
        self.timeout = timeout
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.root: Path | None = None
        self.user: str | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the broker URL (database 0), with the password."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Return the server's log file."""
        if self.root is None:
            raise RuntimeError("the Redis server is not started")
        return self.root / "server.log"

    @property
    def pid(self) -> int | None:
        """Return the server's pid while it runs."""
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def start(self) -> RedisServer:
        """Start the server in a fresh directory and wait until it answers."""
        program = ensure_server()
        self.user = _ensure_system_user() if os.geteuid() == 0 else None
        # In the system temp dir: the server's user must be able to enter it.
        self.root = Path(tempfile.mkdtemp(prefix="firered-redis-"))
        try:
            self._start(program)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, program: Path) -> None:
        root = self.log_path.parent
        # The password goes in a file only the server's user reads, never on a command line.
        config = root / "redis.conf"
        config.write_text(f"requirepass {self.password}\n")
        config.chmod(0o600)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (root, config):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        argv = [
            str(program),
            str(config),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--unixsocket",
            "",
        ]
        if self.user is not None:
            # setpriv execs the server: the pid started here is the server's own.
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *argv]
        self.popen = launch(argv, root, self.log_path)
        wait_ready("redis-server", self.popen, self.ping, self.log_path, self.timeout, 0.2)

    def command(self, *args: str, timeout: float = 5) -> bytes:
        """
        Send one command (authenticated) and return the server's first answer line.

        :param args: the command and its arguments.
        :param timeout: seconds allowed for the connection and each read.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            answers = []
            for command in (("AUTH", self.password), args):
                wire = f"*{len(command)}\r\n".encode() + b"".join(
                    f"${len(part.encode())}\r\n".encode() + part.encode() + b"\r\n" for part in command
                )
                sock.sendall(wire)
                answers.append(_read_line(sock))
        if not answers[0].startswith(b"+OK"):
            raise RuntimeError(f"AUTH refused: {answers[0]!r}")
        return answers[1]

    def ping(self) -> bool:
        """Return whether the server answers an authenticated ``PING``."""
        try:
            return self.command("PING", timeout=2) == b"+PONG"
        except (OSError, RuntimeError):
            return False

    def stop(self, grace: float = 10) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``grace`` seconds) and remove its files."""
        if self.popen is not None:
            stop_group("redis-server", self.popen, grace)
            self.popen = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Read one RESP line (without its CRLF), at most ``limit`` bytes."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise RuntimeError("answer line too long")
    return data.removesuffix(b"\r\n")
