"""
### Submit now, wait later

Splits an edit in two tasks:

1. `submit` posts the edit with `wait_for_completion=False` and returns at once with the request id
   (no waiting, no download).
2. `wait_for_edit` is a `FireRedStatusSensor` in **deferrable** mode: it waits for that request id in
   the triggerer, holding no worker slot, downloads the outputs and returns the same result as the
   operator.

Use this shape when the submit and the wait belong to different tasks: a request id recorded
elsewhere, or work to do between the two.

`image_url` may be relative (`shoe.png`), resolved against the `firered_image_base_url` Variable
(handy with the offline emulator). Outputs go to `<output_root>/firered-sensed/<run date>/`, where
`output_root` is the `firered_output_root` Variable (default `$AIRFLOW_HOME/firered-output`).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

from airflow.sdk import DAG, Param, Variable, task

from airflow_provider_firered.operators.firered import FireRedEditOperator
from airflow_provider_firered.sensors.firered import FireRedStatusSensor

#: The sample input of the FireRed reference documentation.
DEFAULT_IMAGE_URL = "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/f1.png"
#: The run's date: a manual run may have no logical date, then the day it was triggered counts.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"


def firered_image(url: str) -> str:
    """Keep an absolute URL; resolve a relative one against the ``firered_image_base_url`` Variable."""
    if urlsplit(url).scheme:
        return url
    base: str = Variable.get("firered_image_base_url", default="")
    if not base:
        raise ValueError(f"image_url {url!r} is relative and the firered_image_base_url Variable is not set")
    return urljoin(base.rstrip("/") + "/", url)


def firered_output_root() -> str:
    """The ``firered_output_root`` Variable, else ``$AIRFLOW_HOME/firered-output``."""
    default = os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "firered-output")
    return str(Variable.get("firered_output_root", default=default) or default).rstrip("/")


with DAG(
    dag_id="firered_submit_then_sense",
    description="Submit a FireRed edit, then wait for it with a deferrable sensor",
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={
        "prompt": Param("Turn the sky into a golden-hour sunset", type="string", minLength=1),
        "image_url": Param(DEFAULT_IMAGE_URL, type="string", minLength=1),
    },
    user_defined_macros={"firered_image": firered_image, "firered_output_root": firered_output_root},
    doc_md=__doc__,
    tags=["firered", "example"],
) as dag:
    submit = FireRedEditOperator(
        task_id="submit",
        model="firered-image-edit-v1-1",
        prompt="{{ params.prompt }}",
        images=["{{ firered_image(params.image_url) }}"],
        parameters={"num_images": 1, "output_format": "webp"},
        wait_for_completion=False,
    )

    wait_for_edit = FireRedStatusSensor(
        task_id="wait_for_edit",
        request_id="{{ ti.xcom_pull(task_ids='submit', key='request_id') }}",
        deferrable=True,
        poke_interval=5,
        timeout=1800,
        output_dir="{{ firered_output_root() }}/firered-sensed/" + RUN_DATE,
    )

    @task
    def report(result: dict[str, Any]) -> None:
        """Use the result: here, just show it."""
        print(f"Request {result['request_id']} is {result['status']}; files: {result['output_paths']}")

    submit >> wait_for_edit
    report(wait_for_edit.output)  # type: ignore[arg-type]  # Airflow types an upstream's output as XComArg
