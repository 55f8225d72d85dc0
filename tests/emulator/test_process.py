"""The emulator launcher: the command line in its own process, announced by its first line."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_firered.emulator.process import EmulatorStartError, start_emulator_process

if TYPE_CHECKING:
    from pathlib import Path


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(60)
def test_starts_announces_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "emulator.log"
    with start_emulator_process("--queued-seconds", "0", log_path=log) as emulator:
        assert set(emulator.info) == {"gateway_url", "cdn_url", "sample_images"}
        assert emulator.gateway_url.startswith("http://127.0.0.1:")
        sample = requests.get(emulator.sample_images[0], timeout=10)
        assert (sample.status_code, sample.headers["Content-Type"]) == (200, "image/png")
        assert emulator.control("POST", "outcome", {"status": "FAILED"}) == {"ok": True}
        assert emulator.control("GET", "requests")[-1]["origin"] == "cdn"
        pid = emulator.popen.pid
    assert emulator.popen.returncode == 0  # SIGTERM is a clean exit
    assert gone(pid)


def fake(tmp_path: Path, code: str) -> list[str]:
    """A command that records its pid, then runs ``code`` (it gets the launcher's flags as argv)."""
    pid_file = tmp_path / "pid"
    record = f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))"
    return [sys.executable, "-c", f"import os, time; {record}; {code}"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("print('listening on 8080', flush=True); time.sleep(60)", "unexpected first line from the emulator"),
        ("time.sleep(60)", "the emulator printed nothing within 2 s"),
        ("raise SystemExit(3)", "the emulator exited with 3"),
    ],
)
def test_a_start_that_fails_says_why_and_leaves_nothing_running(
    tmp_path: Path, code: str, message: str
) -> None:
    log = tmp_path / "emulator.log"
    with pytest.raises(EmulatorStartError, match=message) as failed:
        start_emulator_process(command=fake(tmp_path, code), log_path=log, timeout=2)
    assert str(log) in str(failed.value)
    assert gone(int((tmp_path / "pid").read_text()))


@pytest.mark.timeout(60)
def test_a_bad_flag_is_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "emulator.log"
    with pytest.raises(EmulatorStartError, match="exited with 2"):
        start_emulator_process("--port", "eighty", log_path=log)
    assert "argument --port: invalid int value: 'eighty'" in log.read_text()
