"""
The one-task-per-SKU baseline of benchmarks/catalogue_cost.py (its ``per-sku`` variant; the ``batch``
variant runs the catalogue example DAG itself, ``example_dags/firered_catalogue_reedit.py``):

- ``bench_catalogue_per_sku``: one deferrable FireRedEditOperator per SKU, writing to
  ``<run_folder>/<sku>/``; no summary task.

It reads the catalogue from the JSON-lines file named by the ``catalogue`` param (one
``{"sku", "prompt", "image"}`` object a line), so the DAG file itself stays small at any size.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_firered.operators.firered import FireRedEditOperator

POLL = float(os.environ.get("FIRERED_BENCH_POLL", "5"))
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
#: Airflow 3.3 can fail a task that resumed from a deferral quickly: the executor's stale "success"
#: for the deferring workload arrives while the resumed one runs (apache/airflow#71172's family). A
#: retry resumes the stored request ids: nothing is paid twice. Retries count as task starts.
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=2)}
PARAMS = {
    "catalogue": Param("", type="string", description="JSON-lines catalogue: sku, prompt, image"),
    "run_folder": Param("", type="string", description="where this night's outputs go"),
    "previous": Param("", type="string", description="an earlier night's run folder, or empty"),
    "batch_size": Param(500, type="integer", minimum=1),
}


def read_catalogue(path: str) -> list[dict[str, Any]]:
    """The catalogue's rows, in order."""
    with Path(path).open(encoding="utf-8") as source:
        return [json.loads(line) for line in source if line.strip()]


@task
def plan_skus(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One FireRedEditOperator's arguments per SKU."""
    assert params is not None
    return [
        {
            "prompt": row["prompt"],
            "images": [row["image"]],
            "output_dir": f"{params['run_folder']}/{row['sku']}",
        }
        for row in read_catalogue(params["catalogue"])
    ]


with DAG(
    "bench_catalogue_per_sku", schedule=None, start_date=START, catchup=False, params=PARAMS
) as per_sku_dag:
    FireRedEditOperator.partial(task_id="edit", deferrable=True, poll_interval=POLL, **RETRIES).expand_kwargs(
        plan_skus()
    )
