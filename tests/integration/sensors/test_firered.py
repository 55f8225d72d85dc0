"""FireRedStatusSensor on a request submitted with wait_for_completion=False, through dag.test()."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from tests.conftest import run_dag_source
from tests.integration.operators.test_firered import in_log, xcom

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_firered.emulator import Emulator

pytestmark = pytest.mark.usefixtures("airflow_db")

SENSE_TEMPLATE = """
import json
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator
from airflow_provider_firered.sensors.firered import FireRedStatusSensor

ARGS = json.loads({args!r})

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    submit = FireRedEditOperator(
        task_id="submit", prompt="x", images=ARGS["images"], wait_for_completion=False
    )
    sense = FireRedStatusSensor(
        task_id="sense",
        request_id="{{{{ ti.xcom_pull(task_ids='submit', key='request_id') }}}}",
        **ARGS["sensor"],
    )
    submit >> sense
"""


def run_sense_dag(dag_id: str, images: list[str], **sensor: Any) -> dict[str, Any]:
    run = run_dag_source(
        dag_id, SENSE_TEMPLATE.format(args=json.dumps({"images": images, "sensor": sensor}), dag_id=dag_id)
    )
    return {t.task_id: t for t in run.get_task_instances()}


@pytest.mark.parametrize(
    "mode",
    [
        {"deferrable": True},
        {"deferrable": False, "mode": "poke"},
        {"deferrable": False, "mode": "reschedule"},
    ],
    ids=["deferrable", "poke", "reschedule"],
)
@pytest.mark.usefixtures("firered_conn")
def test_sensor_collects_the_result(firered_emulator: Emulator, tmp_path: Path, mode: dict[str, Any]) -> None:
    firered_emulator.set_timings(processing_seconds=0.5)
    tis = run_sense_dag(
        f"sense_{mode.get('mode', 'deferred')}",
        firered_emulator.sample_images[:1],
        poke_interval=1,
        timeout=30,
        output_dir=str(tmp_path),
        **mode,
    )
    assert tis["submit"].state == "success"
    assert tis["sense"].state == "success"
    result = xcom(tis["sense"])
    assert result["request_id"] == xcom(tis["submit"], "request_id")
    assert result["status"] == "COMPLETED"
    (path,) = result["output_paths"]
    with Image.open(path) as img:
        assert img.format == "PNG"
    assert len(firered_emulator.submissions()) == 1


@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.usefixtures("firered_conn")
def test_sensor_fails_on_failed_job(firered_emulator: Emulator, deferrable: bool) -> None:
    firered_emulator.set_next_outcome("FAILED", "bad input")
    tis = run_sense_dag(
        f"sense_fail_{deferrable}",
        firered_emulator.sample_images[:1],
        poke_interval=1,
        timeout=30,
        deferrable=deferrable,
    )
    assert tis["sense"].state == "failed"


@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.usefixtures("firered_conn")
def test_sensor_soft_fail_skips(firered_emulator: Emulator, deferrable: bool) -> None:
    firered_emulator.set_next_outcome("ERROR", "system")
    tis = run_sense_dag(
        f"sense_soft_{deferrable}",
        firered_emulator.sample_images[:1],
        poke_interval=1,
        timeout=30,
        soft_fail=True,
        deferrable=deferrable,
    )
    assert tis["sense"].state == "skipped"


@pytest.mark.usefixtures("firered_conn")
def test_sensor_timeout(firered_emulator: Emulator) -> None:
    firered_emulator.set_timings(processing_seconds=30)
    tis = run_sense_dag(
        "sense_timeout", firered_emulator.sample_images[:1], poke_interval=1, timeout=0.5, deferrable=True
    )
    assert tis["sense"].state == "failed"


@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.usefixtures("firered_conn")
def test_poke_interval_below_a_second_is_refused(
    firered_emulator: Emulator, deferrable: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    tis = run_sense_dag(
        f"sense_fast_poke_{deferrable}",
        firered_emulator.sample_images[:1],
        poke_interval=0.2,
        timeout=30,
        deferrable=deferrable,
        retries=2,
    )
    assert tis["sense"].state == "failed"
    assert tis["sense"].try_number == 1  # bad input: no retries
    assert in_log("Invalid input: poke_interval: must be at least 1 second", capfd.readouterr().out)
    assert not [r for r in firered_emulator.requests if "/status/" in r.path]  # refused before any read
