"""Many concurrent deferrable edits, for the load test (the count comes from FIRERED_LOAD_EDITS)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

EDITS = int(os.environ.get("FIRERED_LOAD_EDITS", "200"))

with DAG(
    "firered_load",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_tasks=EDITS,
) as dag:
    FireRedEditOperator.partial(
        task_id="edit",
        images=["{{ var.value.firered_image }}"],
        output_dir="{{ var.value.firered_output_root }}/{{ ti.map_index }}",
        deferrable=True,
        poll_interval=2,
        # A status read that exhausts its retries in a storm fails the try; the retry resumes it.
        retries=3,
        retry_delay=timedelta(seconds=1),
    ).expand(prompt=[f"Load edit {i}" for i in range(EDITS)])
