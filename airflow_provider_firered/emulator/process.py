"""
The emulator in a process of its own: start its command line and read the URLs it prints first.

This is how scripts, benchmarks and the end-to-end deployment run it, as a user would (its own CPU,
its own signals); in-process tests use :class:`~airflow_provider_firered.emulator.Emulator` directly.

    with start_emulator_process("--processing-seconds", "3") as emulator:
        emulator.gateway_url, emulator.sample_images
        emulator.control("POST", "faults", {"target": "status", "kind": "drop"})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

#: ``python -m airflow_provider_firered.emulator`` with this interpreter.
MODULE_COMMAND = (sys.executable, "-m", "airflow_provider_firered.emulator")


class EmulatorStartError(RuntimeError):
    """The emulator did not announce its URLs (it exited, hung or printed something else)."""


@dataclass
class EmulatorProcess:
    """
    A running emulator command line, in a session (process group) of its own.

    :param popen: the process.
    :param info: its first line: ``gateway_url``, ``cdn_url`` and ``sample_images``.
    :param log_path: where its stderr and any later output go (None: stderr is inherited).
    """

    popen: subprocess.Popen[str]
    info: dict[str, Any]
    log_path: Path | None = None

    @property
    def gateway_url(self) -> str:
        """Return the gateway's root URL."""
        return str(self.info["gateway_url"])

    @property
    def cdn_url(self) -> str:
        """Return the CDN's root URL."""
        return str(self.info["cdn_url"])

    @property
    def sample_images(self) -> list[str]:
        """Return the URLs of the sample images the CDN serves."""
        return list(self.info.get("sample_images") or [])

    def control(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """
        Call the admin API (``/_emulator/<path>``) and return its JSON answer.

        :param method: ``GET``, ``POST`` or ``DELETE``.
        :param path: the part after ``/_emulator/``: ``requests``, ``faults``, ``reset``, ...
        :param body: the JSON body, if any.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.gateway_url}/_emulator/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def running(self) -> bool:
        """Tell whether the emulator's process is still running."""
        return self.popen.poll() is None

    def stop(self, grace: float = 15) -> int | None:
        """
        SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code.

        Idempotent; the emulator exits 0 on SIGTERM.
        """
        if self.running():
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=grace)
        _signal_group(self.popen.pid, signal.SIGKILL)  # anything it left in its group
        return self.popen.returncode

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator_process(
    *args: str,
    command: Sequence[str] = MODULE_COMMAND,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    cpu: int | None = None,
    timeout: float = 60,
) -> EmulatorProcess:
    """
    Start the emulator's command line on free ports and wait for the JSON line it prints first.

    :param args: more command-line flags (``--processing-seconds 3``, ``--no-render``, ...).
    :param command: the command (default: this Python's ``-m airflow_provider_firered.emulator``).
    :param env: its environment (default: this process's).
    :param cwd: its working directory.
    :param log_path: append its stderr and later output there (default: stderr is inherited).
    :param cpu: pin it to this CPU (where the OS supports it).
    :param timeout: seconds to wait for the first line.
    :raises EmulatorStartError: it exited, printed nothing in time, or printed something else; the
        process is stopped first.
    """
    argv = [*command, "--port", "0", "--cdn-port", "0", *args]
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(log_path.open("a")) if log_path is not None else None
        popen = subprocess.Popen(
            argv,
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(popen.pid, {cpu})
    emulator = EmulatorProcess(popen, {}, log_path)
    try:
        emulator.info = _first_line(popen, timeout, f" (log: {log_path})" if log_path else "")
    except BaseException:
        emulator.stop()
        raise
    threading.Thread(target=_drain, args=(popen.stdout, log_path), daemon=True).start()
    return emulator


def _first_line(popen: subprocess.Popen[str], timeout: float, where: str) -> dict[str, Any]:
    """Read the JSON object the emulator prints first, within ``timeout`` seconds."""
    stdout = popen.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        raise EmulatorStartError(f"the emulator printed nothing within {timeout:.0f} s{where}")
    if not lines[0]:
        raise EmulatorStartError(f"the emulator exited with {popen.wait(5)}{where}")
    try:
        info = json.loads(lines[0])
    except ValueError:
        info = None
    if not isinstance(info, dict) or "gateway_url" not in info:
        raise EmulatorStartError(f"unexpected first line from the emulator: {lines[0]!r}{where}")
    return info


def _drain(stdout: IO[str] | None, log_path: Path | None) -> None:
    """Keep reading the emulator's output so that it never blocks on a full pipe."""
    if stdout is None:
        return
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("a")) if log_path is not None else None
        for line in stdout:
            if log is not None:
                log.write(line)
                log.flush()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
