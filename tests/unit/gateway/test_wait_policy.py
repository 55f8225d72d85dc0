"""The waiting policy's arguments are checked, naming the field, before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.gateway.results import JobStatus
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, not_started_in_time
from airflow_provider_firered.sensors.firered import FireRedStatusSensor
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger


@pytest.mark.parametrize(
    ("arguments", "field", "allowed"),
    [
        ({"max_poll_interval": 0.5}, "max_poll_interval", "at least 5 seconds"),
        ({"max_poll_interval": float("inf")}, "max_poll_interval", "at least 5 seconds"),
        ({"max_poll_interval": "60"}, "max_poll_interval", "at least 5 seconds"),
        ({"start_timeout": 0}, "start_timeout", "a positive number of seconds"),
        ({"start_timeout": -3}, "start_timeout", "a positive number of seconds"),
        ({"start_timeout": float("nan")}, "start_timeout", "a positive number of seconds"),
        ({"start_timeout": True}, "start_timeout", "a positive number of seconds"),
        ({"poll_interval": 0.2}, "poll_interval", "at least 1 second"),
    ],
)
def test_bad_policy_arguments_name_the_field(arguments: dict[str, Any], field: str, allowed: str) -> None:
    settings = {"poll_interval": 5.0, **arguments}
    with pytest.raises(FireRedValidationError, match=f"^{field}: must be {allowed}") as info:
        WaitPolicy(**settings)
    assert info.value.field == field
    # The trigger checks the same, so a trigger built directly cannot hold a bad policy either.
    with pytest.raises(FireRedValidationError, match=f"^{field}: "):
        FireRedStatusTrigger("req-1", **settings)


def test_the_interval_grows_only_while_processing() -> None:
    policy = WaitPolicy(2, max_poll_interval=5)
    assert policy.next_interval(2, JobStatus.PROCESSING) == 3
    assert policy.next_interval(4, JobStatus.PROCESSING) == 5  # capped
    assert policy.next_interval(4, JobStatus.QUEUED) == 2  # back to the poll interval
    assert policy.next_interval(4, None) == 4  # an unreadable status keeps the pace
    assert WaitPolicy(2).next_interval(2, JobStatus.PROCESSING) == 2  # no cap: no growth


def test_only_a_queued_job_misses_its_start_deadline() -> None:
    assert not_started_in_time(JobStatus.QUEUED, 100.0, 100.0)
    assert not not_started_in_time(JobStatus.QUEUED, 100.0, 99.9)
    assert not not_started_in_time(JobStatus.PROCESSING, 100.0, 500.0)
    assert not not_started_in_time(JobStatus.QUEUED, None, 500.0)
    assert WaitPolicy(5, start_timeout=30).start_deadline(1000.0) == 1030.0
    assert WaitPolicy(5).start_deadline(1000.0) is None


def test_the_sensor_refuses_max_poll_interval_outside_the_triggerer() -> None:
    sensor = FireRedStatusSensor(
        task_id="sense", request_id="firered-image-edit-v1-1_abc", poke_interval=5, max_poll_interval=60
    )
    with pytest.raises(
        FireRedValidationError, match=r"^Invalid input: max_poll_interval: applies to deferrable"
    ):
        sensor._check_arguments()
    sensor.deferrable = True
    sensor._check_arguments()  # accepted where the trigger waits


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"timeout": 0}, "timeout: must be a positive number of seconds, got 0"),
        ({"timeout": "60"}, "timeout: must be a positive number of seconds, got '60'"),
        ({"max_in_flight": 0}, "max_in_flight: must be a whole number from 1 to 10000, got 0"),
        ({"max_in_flight": True}, "max_in_flight: must be a whole number from 1 to 10000, got True"),
        ({"max_failed": -1}, "max_failed: must be a whole number at least 0, got -1"),
        ({"download_threads": 65}, "download_threads: must be a whole number from 1 to 64, got 65"),
        ({"output_root": ""}, "output_root: must be a folder path or URL"),
        ({"output_root": "file://elsewhere/x"}, "output_root: a file:// URL must name no host or localhost"),
        ({"previous": ["ok", ""]}, "previous: must be a path or URL, or a list of them"),
        ({"poll_interval": 0.5}, "poll_interval: must be at least 1 second"),
        ({"start_timeout": 0}, "start_timeout: must be a positive number of seconds"),
    ],
)
def test_the_batch_operators_arguments_are_checked_naming_the_field(
    arguments: dict[str, Any], message: str
) -> None:
    from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

    settings = {"task_id": "batch", "edits": [], "output_root": "/tmp/out", **arguments}
    with pytest.raises(FireRedValidationError) as info:
        FireRedBatchEditOperator(**settings)._check_arguments()
    assert str(info.value).startswith(message)
