"""
Concurrent deferrable edits for the several-triggerers test on PostgreSQL (the count comes from
FIRERED_TRIGGERERS_EDITS): every edit waits in a trigger long enough for a triggerer to be killed.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

EDITS = int(os.environ.get("FIRERED_TRIGGERERS_EDITS", "40"))

with DAG(
    "firered_postgres_triggerers",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_tasks=EDITS,
) as dag:
    # No retries: a failed try is a failure of the test, and a retry could hide a second POST.
    FireRedEditOperator.partial(
        task_id="edit",
        images=["{{ var.value.firered_image }}"],
        output_dir="{{ var.value.firered_output_root }}/{{ ti.map_index }}",
        deferrable=True,
        poll_interval=2,
    ).expand(prompt=[f"Triggerer edit {i}" for i in range(EDITS)])
