"""
### One FireRed image edit

Edits one image with **FireRed Image Edit 1** (`firered-image-edit`) and downloads the result.

* `prompt` and `image_url` come from the run's params (trigger the DAG with your own).
  A relative `image_url` (`shoe.png`) is resolved against the `firered_image_base_url` Variable,
  which is handy with the offline emulator (`firered-emulator` prints its sample images).
* The options are the model's documented ones, by their API names: a fixed `seed` makes the edit
  reproducible, `aspect_ratio` crops to a square, `output_format`/`output_quality` pick the file.
* The edit waits **deferred**: no worker slot is held while the gateway works.
* Outputs are written to `<output_root>/firered-single/<run date>/`, where `output_root` is the
  `firered_output_root` Variable (default `$AIRFLOW_HOME/firered-output`); any
  `ObjectStoragePath` URL such as `s3://bucket/edits` works too. The task's return value (XCom)
  lists the request id, the media URLs and the downloaded files.

The connection is `firered_default`: type `firered`, the API key as its password.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit

from airflow.sdk import DAG, Param, Variable

from airflow_provider_firered.operators.firered import FireRedEditOperator

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
    dag_id="firered_edit_single",
    description="One FireRed image edit, downloaded",
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={
        "prompt": Param(
            "Change the background to a soft studio grey and add a warm rim light",
            type="string",
            minLength=1,
        ),
        "image_url": Param(DEFAULT_IMAGE_URL, type="string", minLength=1),
    },
    # Rendered in the task at run time, so the Variables are not read while the file is parsed.
    user_defined_macros={"firered_image": firered_image, "firered_output_root": firered_output_root},
    doc_md=__doc__,
    tags=["firered", "example"],
) as dag:
    FireRedEditOperator(
        task_id="edit_image",
        model="firered-image-edit",
        prompt="{{ params.prompt }}",
        images=["{{ firered_image(params.image_url) }}"],
        parameters={
            "seed": 42,
            "aspect_ratio": "1:1",
            "output_format": "png",
            "output_quality": 90,
            "num_inference_steps": 30,
        },
        output_dir="{{ firered_output_root() }}/firered-single/" + RUN_DATE,
        deferrable=True,
        poll_interval=5,
        timeout=1800,
        retries=1,
        doc_md="Submits the edit, waits in the triggerer, downloads every output image.",
    )
