"""The provider's metrics reach a StatsD server through Airflow's own stats client, configured as users do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

from airflow_provider_firered.utils.metrics import METRIC_NAMES, TIMERS, Metric

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip(
    "statsd", reason="Airflow's StatsD client needs the statsd package (apache-airflow[statsd])"
)

PREFIX = "ftest"
MODEL = "firered/image-edit v1"
#: What Airflow's InfluxDB-style tags make of MODEL: characters a stat name refuses become "_".
MODEL_TAG = "firered_image-edit_v1"

#: Emits every metric once: each counter 3 times over (one datagram of 3), the timer 1.5 s.
EMIT = textwrap.dedent(
    f"""
    from airflow_provider_firered.utils import metrics

    for metric in metrics.Metric:
        if metric not in metrics.TIMERS:
            metrics.count(metric, 3, model={MODEL!r})
    metrics.job_duration(1.5, model={MODEL!r})
    print("emitted")
    """
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A UDP socket on a free loopback port, standing in for the StatsD server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def _emit(port: int, **metrics_options: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__METRICS__", "OPENLINEAGE"))}
    env.update(
        AIRFLOW__METRICS__STATSD_ON="True",
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(port),
        AIRFLOW__METRICS__STATSD_PREFIX=PREFIX,
        **{f"AIRFLOW__METRICS__{k.upper()}": v for k, v in metrics_options.items()},
    )
    done = subprocess.run(
        [sys.executable, "-c", EMIT], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "emitted" in done.stdout


def _datagrams(sock: socket.socket, expected: int, timeout: float = 10.0) -> list[str]:
    """Read the provider's datagrams (Airflow sends its own too) until ``expected`` arrived or ``timeout``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < expected and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        lines.extend(line for line in data.decode().split("\n") if line.startswith(f"{PREFIX}.firered."))
    return lines


def _parse(line: str) -> tuple[str, float, str]:
    name, _, rest = line.partition(":")
    value, _, kind = rest.partition("|")
    return name, float(value), kind


def test_every_metric_reaches_statsd_with_its_name_value_and_type(listener: socket.socket) -> None:
    _emit(listener.getsockname()[1])

    lines = _datagrams(listener, expected=len(Metric))

    received = {name: (value, kind) for name, value, kind in map(_parse, lines)}
    expected = {f"{PREFIX}.{m.value}": ((1500.0, "ms") if m in TIMERS else (3.0, "c")) for m in Metric}
    assert received == expected, lines
    # Plain StatsD carries no tags: the names are the documented ones, nothing appended.
    assert {name.removeprefix(f"{PREFIX}.") for name in received} == set(METRIC_NAMES)


def test_metrics_are_tagged_by_model_where_statsd_carries_tags(listener: socket.socket) -> None:
    _emit(listener.getsockname()[1], statsd_influxdb_enabled="True")

    lines = _datagrams(listener, expected=len(Metric))

    received = {name: (value, kind) for name, value, kind in map(_parse, lines)}
    expected = {
        f"{PREFIX}.{m.value},model={MODEL_TAG}": ((1500.0, "ms") if m in TIMERS else (3.0, "c"))
        for m in Metric
    }
    assert received == expected, lines
