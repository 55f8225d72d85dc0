"""
Processes of the test rig on Linux: finding them through ``/proc`` (by a marker in their environment,
or by ancestry), and starting, awaiting and stopping a throwaway server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from subprocess import Popen


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pids_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment carries ``name=value`` (Linux /proc only)."""
    needle = f"{name}={value}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or not ours
            continue
        # A zombie has released its environment already; its parent reaps it.
        if needle in environ.split(b"\0") and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(root: int) -> list[int]:
    """``root``'s descendants, read from /proc (read them before killing: orphans get reparented)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def launch(
    argv: Sequence[str], cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> Popen[bytes]:
    """Start a server in its own session, its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The end of a server's log, or nothing when it cannot be read."""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_ready(
    name: str, popen: Popen[bytes], ready: Callable[[], bool], log_path: Path, timeout: float, every: float
) -> None:
    """Poll ``ready`` until it holds; fail with the log when the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited {popen.returncode}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after {timeout:.0f}s:\n{log_tail(log_path)}")
        time.sleep(every)


def stop_group(name: str, popen: Popen[bytes], grace: float) -> None:
    """Stop a server's process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if popen.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=wait)
    if alive(popen.pid):
        raise RuntimeError(f"{name} {popen.pid} survived SIGKILL")


_Server = TypeVar("_Server", bound="ThrowawayServer")


class ThrowawayServer:
    """A server that :meth:`start` starts and :meth:`stop` stops for good; ``with`` does both."""

    def start(self: _Server) -> _Server:
        """Start the server and return it once it answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and remove what it wrote."""
        raise NotImplementedError

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def non_loopback_listeners(pids: Sequence[int | None]) -> list[str]:
    """
    Return the TCP listeners of these processes that are not on a loopback address.

    :param pids: the processes (None is skipped: a server whose pid is not known).
    """
    import psutil

    found = []
    for pid in pids:
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip not in ("127.0.0.1", "::1"):
                    found.append(f"{pid}: {conn.laddr.ip}:{conn.laddr.port}")
    return found
