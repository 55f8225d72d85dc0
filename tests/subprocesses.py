"""Run a script as a user would, and stop it whole when it outlasts its timeout."""

from __future__ import annotations

import subprocess
from typing import Any

#: How long a script has to stop what it started once asked (SIGTERM) before it is killed.
GRACE_SECONDS = 60


def run_script(argv: list[str], *, timeout: float, **popen: Any) -> subprocess.CompletedProcess[str]:
    """
    Run ``argv`` to its end and return what it printed; on a timeout stop it, then raise.

    ``subprocess.run(timeout=...)`` kills the script outright, so the servers it started (an
    emulator, Airflow's processes) outlive it; here it gets SIGTERM first and unwinds, as on ``kill``.

    :param argv: the command.
    :param timeout: seconds before the script is asked to stop.
    :param popen: more arguments for :class:`subprocess.Popen` (``env``, ``cwd``).
    """
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                out, err = process.communicate(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
        return subprocess.CompletedProcess(argv, process.returncode, out, err)
