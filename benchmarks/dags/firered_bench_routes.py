"""
The same K edits three ways, for benchmarks/worker_cost.py (K from FIRERED_BENCH_EDITS, the poll
interval from FIRERED_BENCH_POLL):

- ``bench_deferrable``: FireRedEditOperator waiting in the triggerer;
- ``bench_blocking``: FireRedEditOperator with ``deferrable=False`` (polls in its worker slot);
- ``bench_generic``: HttpOperator to submit, HttpSensor with a JSON ``response_check`` in
  ``reschedule`` mode to wait (the route without this provider).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

EDITS = int(os.environ.get("FIRERED_BENCH_EDITS", "20"))
POLL = float(os.environ.get("FIRERED_BENCH_POLL", "5"))
PROMPTS = [f"Bench edit {i}" for i in range(EDITS)]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
IMAGE = "{{ var.value.firered_image }}"


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, max_active_tasks=EDITS)


for dag_id, deferrable in (("bench_deferrable", True), ("bench_blocking", False)):
    with _dag(dag_id):
        FireRedEditOperator.partial(
            task_id="edit", images=[IMAGE], deferrable=deferrable, poll_interval=POLL
        ).expand(prompt=PROMPTS)


def request_id(response: Any) -> str:
    return str(response.json()["request_id"])


def job_done(response: Any) -> bool:
    status = response.json()["status"]
    if status in ("FAILED", "ERROR"):
        raise ValueError(f"job {status}: {response.json().get('error')}")
    return bool(status == "COMPLETED")


with _dag("bench_generic"):
    submitted = HttpOperator.partial(
        task_id="submit",
        http_conn_id="firered_http",
        method="POST",
        endpoint="firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request",
        headers={"Content-Type": "application/json"},
        response_filter=request_id,
    ).expand(data=[json.dumps({"prompt": p, "image_urls": [IMAGE]}) for p in PROMPTS])
    HttpSensor.partial(
        task_id="wait",
        http_conn_id="firered_http",
        method="GET",
        response_check=job_done,
        mode="reschedule",
        poke_interval=POLL,
        timeout=3600,
        # Airflow 3.3 can fail a reschedule-mode sensor between two pokes (apache/airflow#71172:
        # a stale executor success for the previous poke); a user's retries carry it through.
        retries=10,
        retry_delay=timedelta(seconds=POLL),
    ).expand(endpoint=submitted.output.map(lambda rid: f"v2/requests/status/{rid}"))
