"""One deferrable edit with quick retries: the e2e test kills its worker once the request is stored."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

with DAG(
    "firered_worker_crash",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
) as dag:
    FireRedEditOperator(
        task_id="edit",
        prompt="Survive a worker crash",
        images=["{{ var.value.firered_image }}"],
        output_dir="{{ var.value.firered_output_root }}",
        deferrable=True,
        poll_interval=1,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
