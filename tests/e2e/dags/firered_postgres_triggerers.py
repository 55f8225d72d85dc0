"""
Batches of deferrable edits for the several-triggerers test on PostgreSQL (the counts come from
FIRERED_TRIGGERERS_EDITS and FIRERED_TRIGGERERS_BATCHES): every batch waits in one trigger long enough
for a triggerer to be killed.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

EDITS = int(os.environ.get("FIRERED_TRIGGERERS_EDITS", "40"))
BATCHES = int(os.environ.get("FIRERED_TRIGGERERS_BATCHES", "8"))
SIZE = -(-EDITS // BATCHES)

with DAG(
    "firered_postgres_triggerers",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_tasks=BATCHES,
) as dag:
    # No retries: a failed try is a failure of the test, and a retry could hide a second POST.
    FireRedBatchEditOperator.partial(
        task_id="edit",
        output_root="{{ var.value.firered_output_root }}/batch-{{ ti.map_index }}",
        deferrable=True,
        poll_interval=2,
        max_in_flight=SIZE,
    ).expand(
        edits=[
            [
                {
                    "key": f"SKU-{n:03d}",
                    "prompt": f"Triggerer edit {n}",
                    "images": ["{{ var.value.firered_image }}"],
                }
                for n in range(start, min(start + SIZE, EDITS))
            ]
            for start in range(0, EDITS, SIZE)
        ]
    )
