"""
Deferrable edits whose outputs go to S3, with quick retries: the Celery and S3 e2e test kills the
worker that runs them. ``firered_celery_s3_batch`` edits FIRERED_CELERY_S3_EDITS items in waves of
FIRERED_CELERY_S3_IN_FLIGHT; ``firered_celery_s3_single`` is one edit.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator
from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

EDITS = int(os.environ.get("FIRERED_CELERY_S3_EDITS", "6"))
IN_FLIGHT = int(os.environ.get("FIRERED_CELERY_S3_IN_FLIGHT", "3"))
#: The prompts, which tell this DAG's submits apart at the gateway.
BATCH_PROMPT = "Celery S3 batch edit {n}"
SINGLE_PROMPT = "Celery S3 single edit"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
#: Quick retries: the test waits for the one after the kill.
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=1)}

with DAG(
    "firered_celery_s3_batch", schedule=None, start_date=START, catchup=False, default_args=RETRIES
) as batch_dag:
    FireRedBatchEditOperator(
        task_id="edit",
        edits=[
            {
                "key": f"SKU-{n:02d}",
                "prompt": BATCH_PROMPT.format(n=n),
                "images": ["{{ var.value.firered_image }}"],
            }
            for n in range(EDITS)
        ],
        output_root="{{ var.value.firered_s3_root }}/crash-batch",
        deferrable=True,
        poll_interval=1,
        max_in_flight=IN_FLIGHT,
    )

with DAG(
    "firered_celery_s3_single", schedule=None, start_date=START, catchup=False, default_args=RETRIES
) as single_dag:
    FireRedEditOperator(
        task_id="edit",
        prompt=SINGLE_PROMPT,
        images=["{{ var.value.firered_image }}"],
        output_dir="{{ var.value.firered_s3_root }}/crash-single",
        deferrable=True,
        poll_interval=1,
    )
