"""
A user stops a deferred task (Airflow 3.3 calls the trigger's ``on_kill``): the log says what runs on
and is charged, and where the request ids are kept; nothing is sent to the gateway, nothing deleted.

``on_kill`` is called directly here (the triggerer calls it with the same bound on time);
:func:`test_the_triggerer_calls_on_kill_on_a_user_action` checks that Airflow's triggerer calls it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.firered_batch import FireRedBatchStatusTrigger
from tests.conftest import conn_uri_json

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator

RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-{:012d}"


@pytest.fixture
def gateway(firered_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(firered_emulator.gateway_url))
    return firered_emulator


def kill(trigger: FireRedStatusTrigger | FireRedBatchStatusTrigger, capfd: pytest.CaptureFixture[str]) -> str:
    """Call ``on_kill`` as the triggerer does (bounded), return what it logged as a warning."""
    capfd.readouterr()
    asyncio.run(asyncio.wait_for(trigger.on_kill(), timeout=5))
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if "warning" in line.lower()]
    assert lines, out + err
    return "\n".join(lines)


def test_a_stopped_single_edit_says_its_job_runs_on_and_where_its_id_is(
    gateway: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    before = len(gateway.requests)
    text = kill(FireRedStatusTrigger(RID.format(1), timeout=60), capfd)
    assert "the FireRed gateway has no cancel endpoint, so 1 FireRed job is still running" in text
    assert "will be charged" in text
    assert RID.format(1) in text
    assert "task_state_store key 'firered_request_id'" in text
    assert "collects the job instead of paying again if the edit is unchanged" in text
    assert len(gateway.requests) == before  # nothing sent


def test_a_stopped_batch_counts_its_jobs_names_a_few_and_points_to_the_manifest(
    gateway: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    before = len(gateway.requests)
    requests: list[list[object]] = [[RID.format(n), None] for n in range(40)]
    trigger = FireRedBatchStatusTrigger(requests, deadline=1e10, manifest="/data/run/_manifest.jsonl")
    text = kill(trigger, capfd)
    assert "so 40 FireRed jobs are still running and will be charged" in text
    assert f"({RID.format(0)}, {RID.format(1)}, {RID.format(2)} and 37 more)" in text
    assert RID.format(3) not in text
    assert "task_state_store keys 'firered_batch_ids:<n>' and the manifest /data/run/_manifest.jsonl" in text
    assert (
        "clearing it runs the batch again: it collects the jobs still running of items left unchanged" in text
    )
    assert "instead of paying again" in text
    assert len(gateway.requests) == before  # nothing sent


def test_the_text_promises_nothing_airflow_does_not_do(capfd: pytest.CaptureFixture[str]) -> None:
    text = kill(FireRedStatusTrigger(RID.format(1), timeout=60), capfd)
    assert "Airflow deletes no task_state_store entry when a task is marked failed or cleared" in text
    assert "unless [state_store] clear_on_success is set" in text
    assert "A task marked failed or success is not retried by Airflow" in text


def test_the_triggerer_calls_on_kill_on_a_user_action() -> None:
    # Airflow 3.3+: a trigger cancelled with the user-action message gets on_kill; a shutdown does not.
    runner = pytest.importorskip("airflow.jobs.triggerer_job_runner")
    message = getattr(runner, "_USER_ACTION_CANCEL_MSG", None)
    if message is None:
        pytest.skip("this Airflow's triggerer has no on_kill (3.3+)")
    import inspect

    source = inspect.getsource(runner.TriggerRunner.run_trigger)
    assert "trigger.on_kill()" in source
    assert "_USER_ACTION_CANCEL_MSG" in source
