"""
A worker lost after the submit, on a real Airflow deployment: the edit was posted and its request id
stored, then the worker and its task died (here while collecting the outputs after the wait; between
the submit and the deferral the operator makes no network call, so that window is too short to hit
from outside, and the retry takes the same path from either). The retry must resume that request
(Airflow 3.3's task_state_store) and the gateway must see exactly one POST.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
from firered_devtools.deployment import AirflowDeployment, start_emulator

from tests.e2e.conftest import TEST_DAGS, needs_task_state_store, running_deployment

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(420),
    needs_task_state_store,
]

DAG_ID = "firered_worker_crash"
RUN_ID = "e2e_worker_crash"
BUDGET_SECONDS = 360
#: The first output download hangs this long: the window in which the worker dies.
HANG_SECONDS = 20


def busy_workers(deployment: AirflowDeployment) -> list[int]:
    return [
        pid
        for pid, title in deployment.titles().items()
        if "LocalExecutor" in title and "<idle>" not in title
    ]


def test_worker_killed_after_submit_resumes_the_same_request(tmp_path: Path) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    with running_deployment(tmp_path / "airflow-home", TEST_DAGS) as deployment:
        # --no-render: the emulator fetches no input itself, so the CDN's first request is the download.
        emulator = start_emulator(
            deployment, "--queued-seconds", "1", "--processing-seconds", "3", "--no-render"
        )
        emulator.control(
            "POST", "faults", {"target": "cdn", "kind": "delay", "delay_seconds": HANG_SECONDS, "count": 1}
        )
        deployment.env.update(
            {
                "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                    {"conn_type": "firered", "host": emulator.gateway_url, "password": "crash-key"}
                ),
                "AIRFLOW_VAR_FIRERED_IMAGE": emulator.sample_images[0],
                "AIRFLOW_VAR_FIRERED_OUTPUT_ROOT": str(tmp_path / "out"),
                # A dead task is noticed after 10 s without a heartbeat, instead of 5 minutes.
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            }
        )
        deployment.cli("db", "migrate")
        deployment.start_all()
        deployment.wait_healthy(timeout=deadline - time.monotonic())
        deployment.wait_parsed(DAG_ID, deadline)
        deployment.trigger(DAG_ID, RUN_ID)

        # The POST is in, the task deferred, the job ended and the task resumed on a worker, where
        # the download of its output hangs: that worker dies with the request id long stored.
        for state in ("deferred", "running"):  # running again: resumed after the wait
            while deployment.query(
                "SELECT state FROM task_instance WHERE run_id = ? AND task_id = 'edit'", (RUN_ID,)
            ) != [(state,)]:
                assert time.monotonic() < deadline, f"the task never got {state}:\n{deployment.tail_logs()}"
                deployment.check_running()
                time.sleep(0.2)
        while not busy_workers(deployment):
            assert time.monotonic() < deadline, f"no worker runs the task:\n{deployment.tail_logs()}"
            deployment.check_running()
            time.sleep(0.2)
        time.sleep(1)
        titles = deployment.titles()
        killed = deployment.kill_busy_workers()
        assert killed, f"no busy worker was found to kill among {titles}"

        state = deployment.wait_run(RUN_ID, deadline)

        ((ti_state, try_number),) = deployment.query(
            "SELECT state, try_number FROM task_instance WHERE run_id = ? AND task_id = 'edit'", (RUN_ID,)
        )
        logs = deployment.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={RUN_ID}" / "task_id=edit"
        second_try = "\n".join(p.read_text(errors="replace") for p in logs.glob("attempt=2.log*"))
        context = f"{state=} {ti_state=} {try_number=}\n{deployment.tail_logs()}"
        assert (state, ti_state) == ("success", "success"), context
        assert try_number >= 2, context  # the crashed try did not finish: another one did
        (post,) = emulator.control("GET", "submissions")  # exactly one edit was paid for
        assert post["status"] == 202
        ((stored,),) = deployment.query(
            "SELECT value FROM xcom WHERE run_id = ? AND task_id = 'edit' AND key = 'request_id'", (RUN_ID,)
        )
        request_id = json.loads(stored)
        assert f"Request {request_id} already COMPLETED" in second_try, second_try
        assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{request_id}_0.png"]
