"""
Outcomes that no Airflow retry can change, through real Airflow (``dag.test()``) against the emulator.

A ``FAILED`` job was charged: a retry would submit the same input and pay again, so the task fails for
good whatever its ``retries``. A deterministic download failure (not an image) would fail the same way
on every try. ``ERROR`` (not charged) and transient download failures keep Airflow's retries.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.emulator import Emulator, Fault
from tests.conftest import run_dag_source
from tests.integration.operators.test_firered import in_log, run_dag, xcom
from tests.integration.sensors.test_firered import run_sense_dag

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("airflow_db")

needs_task_state_store = pytest.mark.skipif(
    "not __import__('airflow').__version__.startswith('3.3')", reason="task_state_store needs Airflow 3.3+"
)
needs_task_callbacks = pytest.mark.skipif(
    "__import__('airflow').__version__.startswith('3.0')",
    reason="Airflow 3.0's task runner calls no task failure callbacks",
)


def cdn_gets(emulator: Emulator) -> list[Any]:
    return [r for r in emulator.requests if r.origin == "cdn"]


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
@pytest.mark.usefixtures("firered_conn")
def test_failed_job_fails_for_good_and_is_paid_once(
    firered_emulator: Emulator, deferrable: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_next_outcome("FAILED", "NSFW content detected")
    _, ti = run_dag(
        f"final_failed_{deferrable}",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=deferrable,
        poll_interval=1,
        retries=3,
        retry_delay=0,
    )
    out = capfd.readouterr().out
    assert ti.state == "failed"
    (_post,) = firered_emulator.submit_attempts()  # one paid job, however many retries the task has
    assert ti.try_number == 1  # no retry
    request_id = xcom(ti, "request_id")
    assert in_log(f"FireRed job {request_id} ended FAILED: NSFW content detected", out)
    assert in_log("the gateway charged for this job and its outcome is final", out)


@pytest.mark.usefixtures("firered_conn")
def test_error_job_keeps_airflow_retries(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    # ERROR is not charged: the task fails normally and its retry submits the edit again.
    firered_emulator.set_next_outcome("ERROR", "GPU lost")
    _, ti = run_dag(
        "final_error_retried",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=False,
        poll_interval=1,
        retries=1,
        retry_delay=0,
    )
    assert ti.state == "success"
    assert ti.try_number == 2
    assert len(firered_emulator.submissions()) == 2
    assert in_log("ERROR jobs are not charged", capfd.readouterr().out)


@needs_task_state_store
@pytest.mark.usefixtures("firered_conn")
def test_failed_job_seen_by_a_retry_is_final_too(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    # The first try times out before the job ends FAILED; the retry resumes the request, sees FAILED
    # and fails for good instead of submitting the edit again.
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=2.5)
    firered_emulator.set_next_outcome("FAILED", "bad input image")
    _, ti = run_dag(
        "final_failed_after_timeout",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=False,
        poll_interval=1,
        timeout=1,
        retries=3,
        retry_delay=0,
    )
    out = capfd.readouterr().out
    assert in_log("did not finish within 1s", out)
    assert ti.state == "failed"
    assert 2 <= ti.try_number < 4  # a retry ran and ended on FAILED with retries left
    assert len(firered_emulator.submit_attempts()) == 1
    assert in_log("ended FAILED: bad input image", out)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "poke"])
@pytest.mark.usefixtures("firered_conn")
def test_sensor_failed_job_fails_for_good(
    firered_emulator: Emulator, deferrable: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_next_outcome("FAILED", "NSFW content detected")
    tis = run_sense_dag(
        f"final_sense_failed_{deferrable}",
        firered_emulator.sample_images[:1],
        poke_interval=1,
        timeout=30,
        deferrable=deferrable,
        retries=3,
        retry_delay=0,
    )
    out = capfd.readouterr().out
    assert tis["sense"].state == "failed"
    assert tis["sense"].try_number == 1  # no retry
    assert in_log("ended FAILED: NSFW content detected", out)
    assert in_log("the gateway charged for this job and its outcome is final", out)
    assert len(firered_emulator.submit_attempts()) == 1


@pytest.mark.usefixtures("firered_conn")
def test_download_of_a_non_image_fails_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import conn_uri_json

    # render_edits=False: the job completes without fetching its input, so the CDN fault below is
    # met only by the operator's download of the output.
    with Emulator(render_edits=False).start() as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator.gateway_url))
        emulator.inject(Fault(target="cdn", kind="wrong_content_type", count=None))
        _, ti = run_dag(
            "final_download_not_image",
            prompt="x",
            images=emulator.sample_images[:1],
            deferrable=False,
            poll_interval=1,
            retries=2,
            retry_delay=0,
            output_dir=str(tmp_path),
        )
        gets = cdn_gets(emulator)
        posts = emulator.submit_attempts()
    assert ti.state == "failed"
    assert ti.try_number == 1
    assert len(posts) == 1
    assert len(gets) == 1  # neither the download's own retries nor Airflow's fetch it again
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("firered_conn")
def test_transient_download_failure_keeps_airflow_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import conn_uri_json

    with Emulator(render_edits=False).start() as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator.gateway_url))
        # More 503s than one try's download retries (4 attempts on the test connection).
        emulator.inject(Fault(target="cdn", kind="status", status_code=503, count=4))
        _, ti = run_dag(
            "final_download_transient",
            prompt="x",
            images=emulator.sample_images[:1],
            deferrable=False,
            poll_interval=1,
            retries=3,
            retry_delay=0,
            output_dir=str(tmp_path),
        )
    assert ti.state == "success"
    assert ti.try_number >= 2
    assert len(list(tmp_path.iterdir())) == 1


CALLBACK_TEMPLATE = """
import json
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator


def record(context):
    error = context["exception"]
    with open({record!r}, "w") as out:
        json.dump(
            {{"type": type(error).__name__, "module": type(error).__module__,
              "request_id": getattr(error, "request_id", None)}},
            out,
        )


with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedEditOperator(
        task_id="edit",
        prompt="x",
        images={images!r},
        deferrable={deferrable!r},
        poll_interval=1,
        timeout={timeout!r},
        on_failure_callback=record,
    )
"""


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
@pytest.mark.parametrize(
    ("outcome", "kind"),
    [("FAILED", "FireRedJobFailedError"), ("timeout", "FireRedTimeoutError")],
)
@pytest.mark.usefixtures("firered_conn")
@needs_task_callbacks
def test_the_failure_callback_sees_the_providers_own_error(
    firered_emulator: Emulator, tmp_path: Path, deferrable: bool, outcome: str, kind: str
) -> None:
    # Both ways of waiting raise the same type for the same outcome, and Airflow hands it on as is.
    if outcome == "FAILED":
        firered_emulator.set_next_outcome("FAILED", "NSFW content detected")
    else:
        firered_emulator.set_timings(processing_seconds=30)
    record = tmp_path / "callback.json"
    dag_id = f"final_callback_{outcome}_{deferrable}".lower()
    (ti,) = run_dag_source(
        dag_id,
        CALLBACK_TEMPLATE.format(
            dag_id=dag_id,
            record=str(record),
            images=firered_emulator.sample_images[:1],
            deferrable=deferrable,
            timeout=0.5 if outcome == "timeout" else 60,
        ),
    ).get_task_instances()
    assert ti.state == "failed"
    seen = json.loads(record.read_text())
    assert seen == {
        "type": kind,
        "module": "airflow_provider_firered.exceptions",
        "request_id": xcom(ti, "request_id"),
    }
