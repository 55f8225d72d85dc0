"""The provider's metrics: names, tags, and a stats backend that fails never reaching the caller."""

from __future__ import annotations

import logging
import re
import sys
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_firered import version_compat
from airflow_provider_firered.utils import metrics
from airflow_provider_firered.utils.metrics import METRIC_NAMES, TIMERS, Metric


class FakeStats:
    """Records what the provider asks of Airflow's stats client."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, Any] | None]] = []
        self.fail = fail

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: dict[str, Any] | None = None) -> None:
        if self.fail:
            raise OSError("statsd is down")
        self.calls.append(("incr", stat, count, tags) if rate == 1 else ("incr-sampled", stat, count, tags))

    def timing(self, stat: str, dt: timedelta, *, tags: dict[str, Any] | None = None) -> None:
        if self.fail:
            raise OSError("statsd is down")
        self.calls.append(("timing", stat, dt, tags))


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> FakeStats:
    fake = FakeStats()
    monkeypatch.setattr(version_compat, "stats_client", lambda: fake)
    return fake


def test_every_name_is_under_firered_and_valid_for_every_backend() -> None:
    for metric in Metric:
        assert metric.value.startswith("firered.")
        # Airflow's stat name rule (and OpenTelemetry's): ASCII letters, digits, "_", "." and "-".
        assert re.fullmatch(r"[a-z0-9_.-]+", metric.value)
    assert len({m.value for m in Metric}) == len(Metric)


def test_metric_names_documents_every_metric_and_only_them() -> None:
    assert list(METRIC_NAMES) == [m.value for m in Metric]
    assert all(meaning.strip() for meaning in METRIC_NAMES.values())
    assert set(TIMERS) == {Metric.JOB_DURATION}


def test_the_module_docstring_table_lists_every_name_with_its_type() -> None:
    doc = metrics.__doc__ or ""
    for metric in Metric:
        kind = "timer" if metric in TIMERS else "counter"
        assert re.search(rf"``{re.escape(metric.value)}``\s+{kind}\b", doc), metric


def test_markdown_table_has_a_row_per_metric() -> None:
    table = metrics.markdown_table().splitlines()
    assert table[:2] == ["| Name | Type | Meaning |", "| --- | --- | --- |"]
    assert table[2:] == [
        f"| `{name}` | {'timer' if Metric(name) in TIMERS else 'counter'} | {meaning} |"
        for name, meaning in METRIC_NAMES.items()
    ]


@pytest.mark.parametrize("metric", [m for m in Metric if m not in TIMERS])
def test_count_increments_the_counter_tagged_by_model(stats: FakeStats, metric: Metric) -> None:
    metrics.count(metric, 2, model="firered-image-edit")

    assert stats.calls == [("incr", metric.value, 2, {"model": "firered-image-edit"})]


def test_count_defaults_to_one_and_no_tags_without_a_model(stats: FakeStats) -> None:
    metrics.count(Metric.SUBMITS_SENT)
    metrics.count(Metric.STATUS_READS, model="  ")

    assert stats.calls == [
        ("incr", "firered.submits.sent", 1, None),
        ("incr", "firered.status_reads", 1, None),
    ]


def test_count_takes_a_name_as_well(stats: FakeStats) -> None:
    metrics.count("firered.download_bytes", 4096)  # type: ignore[arg-type]

    assert stats.calls == [("incr", "firered.download_bytes", 4096, None)]


@pytest.mark.parametrize("n", [0, -3, True, 1.5, "2", None])
def test_count_sends_nothing_for_no_positive_whole_number(stats: FakeStats, n: Any) -> None:
    metrics.count(Metric.SUBMITS_SENT, n)

    assert stats.calls == []


def test_count_of_a_timer_or_an_unknown_name_sends_nothing(stats: FakeStats) -> None:
    metrics.count(Metric.JOB_DURATION)
    metrics.count("firered.nothing")  # type: ignore[arg-type]

    assert stats.calls == []


def test_model_tag_keeps_only_characters_every_backend_takes() -> None:
    assert metrics.model_tags("FireRed/Image Edit,v=1") == {"model": "FireRed_Image_Edit_v_1"}
    assert metrics.model_tags(" m-1.0_x ") == {"model": "m-1.0_x"}
    assert metrics.model_tags("x" * 200) == {"model": "x" * 64}
    assert metrics.model_tags(None) is None
    assert metrics.model_tags("") is None


def test_job_duration_records_a_timedelta_tagged_by_model(stats: FakeStats) -> None:
    metrics.job_duration(12.25, model="m1")
    metrics.job_duration(0)

    assert stats.calls == [
        ("timing", "firered.job_duration", timedelta(seconds=12.25), {"model": "m1"}),
        ("timing", "firered.job_duration", timedelta(0), None),
    ]


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), True, "3", None])
def test_job_duration_sends_nothing_for_no_duration(stats: FakeStats, seconds: Any) -> None:
    metrics.job_duration(seconds)

    assert stats.calls == []


def test_a_failing_backend_never_reaches_the_caller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(version_compat, "stats_client", lambda: FakeStats(fail=True))
    monkeypatch.setattr(metrics, "_warned", False)

    with caplog.at_level(logging.DEBUG, logger=metrics.__name__):
        metrics.count(Metric.SUBMITS_SENT, model="m")
        metrics.count(Metric.RATE_LIMITED)
        metrics.job_duration(1.0)

    records = [r for r in caplog.records if r.name == metrics.__name__]
    assert len(records) == 3
    # One warning per process; later losses are logged at debug level.
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "firered.submits.sent" in records[0].getMessage()
    assert "statsd is down" in records[0].getMessage()


def test_a_stats_client_that_cannot_be_had_never_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise ImportError("no stats module")

    monkeypatch.setattr(version_compat, "stats_client", broken)

    metrics.count(Metric.JOBS_COMPLETED)
    metrics.job_duration(3.0, model="m")


def test_stats_client_is_the_one_of_this_airflow_version() -> None:
    client = version_compat.stats_client()

    if version_compat.AIRFLOW_V_3_3_PLUS:
        from airflow.sdk.observability import stats

        assert client is stats
    else:
        from airflow.stats import Stats

        assert client is Stats
    assert callable(client.incr)
    assert callable(client.timing)


@pytest.mark.skipif(
    not version_compat.AIRFLOW_V_3_3_PLUS, reason="the task SDK's stats client arrived in Airflow 3.3"
)
def test_stats_client_configures_the_sdk_client_where_nobody_has(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.observability import stats

    module = sys.modules[stats.incr.__module__]
    initialized: list[dict[str, Any]] = []
    monkeypatch.setattr(module, "_factory", None)
    monkeypatch.setattr(stats, "initialize", lambda **kwargs: initialized.append(kwargs))

    assert version_compat.stats_client() is stats

    assert len(initialized) == 1
    assert callable(initialized[0]["factory"])
    assert isinstance(initialized[0]["export_legacy_names"], bool)


@pytest.mark.skipif(
    not version_compat.AIRFLOW_V_3_3_PLUS, reason="the task SDK's stats client arrived in Airflow 3.3"
)
def test_stats_client_leaves_a_configured_sdk_client_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.observability import stats

    module = sys.modules[stats.incr.__module__]
    monkeypatch.setattr(module, "_factory", lambda: None)
    monkeypatch.setattr(stats, "initialize", lambda **_: pytest.fail("initialized again"))

    assert version_compat.stats_client() is stats


def test_with_airflow_as_configured_by_default_metrics_send_nothing_and_raise_nothing() -> None:
    # No [metrics] backend is on in the tests' Airflow home: Airflow's client drops what it is given.
    metrics.count(Metric.SUBMITS_SENT, model="m")
    metrics.job_duration(0.5, model="m")


@pytest.mark.parametrize(
    ("status", "metric"),
    [
        ("COMPLETED", Metric.JOBS_COMPLETED),
        ("success", Metric.JOBS_COMPLETED),  # a trigger event's spelling
        ("FAILED", Metric.JOBS_FAILED),
        ("failed", Metric.JOBS_FAILED),
        ("ERROR", Metric.JOBS_ERRORED),
        ("error", Metric.JOBS_ERRORED),
    ],
)
def test_job_ended_counts_the_final_status_and_times_the_job(
    stats: FakeStats, status: str, metric: Metric
) -> None:
    metrics.job_ended(status, model="m1", seconds=2.5)

    assert stats.calls == [
        ("incr", metric.value, 1, {"model": "m1"}),
        ("timing", "firered.job_duration", timedelta(seconds=2.5), {"model": "m1"}),
    ]


def test_job_ended_without_a_duration_counts_without_a_timer(stats: FakeStats) -> None:
    metrics.job_ended("COMPLETED", model="m1")

    assert stats.calls == [("incr", "firered.jobs.completed", 1, {"model": "m1"})]


@pytest.mark.parametrize(
    "status", ["QUEUED", "PROCESSING", "UNKNOWN", "timeout", "start_timeout", "api_error", "API_ERROR", ""]
)
def test_job_ended_counts_nothing_for_a_status_that_is_not_final(stats: FakeStats, status: str) -> None:
    metrics.job_ended(status, model="m1", seconds=1.0)

    assert stats.calls == []


def _ended(status: str, created: str | None, completed: str | None) -> Any:
    from airflow_provider_firered.gateway.results import JobStatusResult

    data: dict[str, Any] = {"status": status, "created_at": created, "completed_at": completed}
    if status == "COMPLETED":
        data["output"] = {"media_url": ["https://cdn.test/out.png"]}
    return JobStatusResult.from_json(data, "firered-image-edit_1")


def test_a_job_duration_is_taken_from_the_gateways_timestamps() -> None:
    job = _ended("COMPLETED", "2026-03-31T10:00:00.000Z", "2026-03-31T10:00:15.250Z")
    assert job.duration == 15.25
    assert _ended("ERROR", "2026-03-31T10:00:00+02:00", "2026-03-31T08:00:01Z").duration == 1.0


@pytest.mark.parametrize(
    ("status", "created", "completed"),
    [
        ("PROCESSING", "2026-03-31T10:00:00.000Z", "2026-03-31T10:00:15.000Z"),  # not ended
        ("COMPLETED", "2026-05-22T13:17:32.110Z", "2026-05-22 13:19:23"),  # no offset: not guessed
        ("COMPLETED", None, "2026-03-31T10:00:15.000Z"),
        ("FAILED", "2026-03-31T10:00:15.000Z", None),
        ("COMPLETED", "2026-03-31T10:00:15.000Z", "2026-03-31T10:00:00.000Z"),  # ends before it began
        ("COMPLETED", "yesterday", "today"),
    ],
)
def test_no_job_duration_is_invented(status: str, created: str | None, completed: str | None) -> None:
    assert _ended(status, created, completed).duration is None


def test_the_trigger_events_carry_the_duration_to_the_worker_only_when_known() -> None:
    from airflow_provider_firered.triggers.events import BatchEvent, EndedJob, StatusEvent

    job = _ended("COMPLETED", "2026-03-31T10:00:00.000Z", "2026-03-31T10:00:04.000Z")
    wire = StatusEvent.ended(job).to_dict()
    assert wire["duration"] == 4.0
    assert StatusEvent.from_dict(wire).duration == 4.0
    batch = BatchEvent({job.request_id: EndedJob.ended(job)}).to_dict()
    assert batch["ended"][job.request_id]["duration"] == 4.0
    assert BatchEvent.from_dict(batch).ended[job.request_id].duration == 4.0
    unknown = _ended("FAILED", None, None)
    assert "duration" not in StatusEvent.ended(unknown).to_dict()
    assert "duration" not in EndedJob.ended(unknown).to_dict()
