"""
The provider's metrics in real DAG runs (``dag.test()``) against the emulator, received by a StatsD listener.

StatsD is turned on through the environment, as a user turns it on. Airflow's stats client reads that
configuration when it is first created, and an earlier test of the session may have created it with
StatsD off: the fixture drops the client so that the provider's first metric creates it again
(:func:`airflow_provider_firered.version_compat.stats_client` does on 3.3+, ``airflow.stats.Stats`` on
3.0), and puts the old one back afterwards. Every count is compared with what the emulator saw: the
POSTs it answered, the status reads it served, the bytes its CDN sent.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from airflow_provider_firered.emulator import Fault
from airflow_provider_firered.utils.metrics import Metric
from airflow_provider_firered.version_compat import AIRFLOW_V_3_3_PLUS
from tests.integration.operators.test_firered import run_dag, xcom
from tests.integration.operators.test_firered_batch_reuse import run_batch

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from airflow_provider_firered.emulator import Emulator

pytest.importorskip(
    "statsd", reason="Airflow's StatsD client needs the statsd package (apache-airflow[statsd])"
)

pytestmark = pytest.mark.usefixtures("airflow_db", "firered_conn")

PREFIX = "fdag"
V11 = "firered-image-edit-v1-1"
STATUS_PATH = "/v2/requests/status/"
RETRY_AFTER_0 = {"Retry-After": "0"}


class StatsdListener:
    """A UDP socket on a free loopback port, standing in for the StatsD server, read by a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="statsd-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.extend(line for line in data.decode().split("\n") if line)

    def close(self) -> None:
        """Stop reading (within a bounded wait) and close the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def provider_lines(self) -> list[tuple[str, dict[str, str], float, str]]:
        """Return the provider's datagrams as (name, tags, value, type); Airflow's own are left out."""
        found = []
        for line in list(self.lines):
            if not line.startswith(f"{PREFIX}.firered."):
                continue
            head, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            name, *tags = head.removeprefix(f"{PREFIX}.").split(",")
            found.append((name, dict(tag.split("=", 1) for tag in tags), float(value), kind))
        return found


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdListener]:
    """A StatsD listener on loopback, and Airflow's stats client sending to it (tags on) for the test."""
    statsd = StatsdListener()
    for name, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(statsd.port),
        "STATSD_PREFIX": PREFIX,
        "STATSD_INFLUXDB_ENABLED": "True",  # tags, so the model tag is seen too
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{name}", value)
    if AIRFLOW_V_3_3_PLUS:
        from airflow.sdk.observability import stats

        module = sys.modules[stats.incr.__module__]
        monkeypatch.setattr(module, "_factory", None)  # version_compat.stats_client configures it again
        monkeypatch.setattr(module, "_backend", None)
    else:
        from airflow.metrics import statsd_logger
        from airflow.stats import Stats

        # The factory is chosen when airflow.stats is imported; the client is built on first use.
        monkeypatch.setattr(type(Stats), "factory", statsd_logger.get_statsd_logger)
        monkeypatch.setattr(Stats, "instance", None)
    try:
        yield statsd
    finally:
        statsd.close()


def wait_for(listener: StatsdListener, metric: Metric, expected: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``expected`` datagrams of ``metric`` arrived: UDP gives no other signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for name, *_ in listener.provider_lines() if name == metric.value) >= expected:
            return
        time.sleep(0.05)


def cdn_output_bytes(emulator: Emulator) -> int:
    """Return the bytes the CDN served for outputs: each output GET answered 200, fetched again to size it."""
    served = [r for r in emulator.requests if r.origin == "cdn" and r.method == "GET" and r.status == 200]
    sizes: dict[str, int] = {}
    for record in served:
        if record.path.startswith("/v1/") and record.path not in sizes:
            with urllib.request.urlopen(emulator.cdn_url + record.path, timeout=10) as answer:
                sizes[record.path] = len(answer.read())
    return sum(sizes[r.path] for r in served if r.path.startswith("/v1/"))


@pytest.mark.timeout(300)
def test_every_fact_is_counted_once_in_real_dag_runs(
    firered_emulator: Emulator, listener: StatsdListener, tmp_path: Path
) -> None:
    image = firered_emulator.sample_images[0]

    # Waited for on the worker (status reads over requests); one status read answered 429.
    firered_emulator.inject(Fault(target="status", status_code=429, headers=RETRY_AFTER_0))
    _, worker = run_dag(
        "metrics_edit_worker",
        prompt="Make it green",
        images=[image],
        model=V11,
        output_dir=str(tmp_path / "edit_worker"),
        deferrable=False,
        poll_interval=1,
    )
    # Waited for in the triggerer (status reads over aiohttp); its first job ends ERROR, resubmitted.
    firered_emulator.set_next_outcome("ERROR")
    _, deferred = run_dag(
        "metrics_edit_deferred",
        prompt="Make it yellow",
        images=[image],
        model=V11,
        output_dir=str(tmp_path / "edit_deferred"),
        deferrable=True,
        poll_interval=1,
        resubmit_on_error=1,
    )
    # The first night: its first submit answered 429, its first job FAILED (3 jobs).
    night = [{"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": [image]} for n in range(3)]
    firered_emulator.inject(Fault(target="submit", status_code=429, headers=RETRY_AFTER_0))
    firered_emulator.set_next_outcome("FAILED")
    first = run_batch(
        "metrics_night_1", edits=night, output_root=str(tmp_path / "n1"), poll_interval=1, max_failed=1
    )
    # The next night over the first: 2 items reused, the FAILED one not paid for again, and 2 new
    # items, the first submit of which is answered 500 (maybe accepted: uncertain).
    later = [*night, *({"key": f"NEW-{n}", "prompt": "Make it red", "images": [image]} for n in range(2))]
    firered_emulator.inject(Fault(target="submit", status_code=500))
    second = run_batch(
        "metrics_night_2",
        edits=later,
        output_root=str(tmp_path / "n2"),
        previous=str(tmp_path / "n1"),
        poll_interval=1,
        max_failed=2,
    )

    assert [ti.state for ti in (worker, deferred, first, second)] == ["success"] * 4
    assert (xcom(second)["reused"], xcom(second)["failed"]) == (2, 2)
    posts = firered_emulator.submit_attempts()
    status_gets = [
        r for r in firered_emulator.requests if r.method == "GET" and r.path.startswith(STATUS_PATH)
    ]
    answered_429 = [r for r in firered_emulator.requests if r.origin == "gateway" and r.status == 429]
    # 1 + 2 (ERROR, then resubmitted) + 3 (after a 429) + 1 (after a 500) accepted.
    assert [r.status for r in posts].count(202) == 7
    assert (len(posts), len(answered_429)) == (9, 2)
    wait_for(listener, Metric.JOB_DURATION, 7)
    wait_for(listener, Metric.DOWNLOAD_BYTES, 5)

    lines = listener.provider_lines()
    totals: Counter[str] = Counter()
    for name, _tags, value, kind in lines:
        if kind == "c":
            totals[name] += int(value)
    durations = [value for name, _tags, value, kind in lines if name == Metric.JOB_DURATION.value]
    assert dict(totals) == {
        Metric.SUBMITS_SENT.value: 7,  # each POST the emulator accepted
        Metric.SUBMITS_UNCERTAIN.value: 1,
        Metric.RATE_LIMITED.value: 2,  # each 429 it answered, to a submit and to a status read
        Metric.STATUS_READS.value: len(status_gets),
        Metric.DOWNLOAD_BYTES.value: cdn_output_bytes(firered_emulator),
        Metric.EDITS_REUSED.value: 2,
        Metric.JOBS_COMPLETED.value: 5,
        Metric.JOBS_FAILED.value: 1,
        Metric.JOBS_ERRORED.value: 1,
    }, lines
    # One timer per job that ended, by the gateway's clock (milliseconds).
    assert len(durations) == 7
    assert all(0 <= ms < 60_000 for ms in durations)
    # Submits and jobs carry the model; downloads do not know it.
    for name, tags, _value, _kind in lines:
        if name in (Metric.SUBMITS_SENT.value, Metric.JOBS_COMPLETED.value, Metric.JOB_DURATION.value):
            assert tags == {"model": V11}, (name, tags)
        if name == Metric.DOWNLOAD_BYTES.value:
            assert tags == {}
