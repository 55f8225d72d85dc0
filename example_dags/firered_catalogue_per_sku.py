"""
### Catalogue re-edit, one mapped task per SKU (small catalogues)

The per-SKU pattern, for small catalogues: it reads a **catalogue manifest** (one row per product:
`sku`, `image_url`, `prompt`), maps one `FireRedEditOperator` over the rows and stores the edited
images under `<output_root>/<run date>/<sku>/`. A final task writes `summary.json` beside them.
For large catalogues use `firered_catalogue_reedit`, which maps `FireRedBatchEditOperator` over
batches of SKUs instead.

* **Airflow maps at most `[core] max_map_length` items** (1,024 by default): a larger manifest fails
  the mapped task. Every SKU is also its own task instance (scheduling, a row in the metadata DB,
  an XCom), which is fine for tens or hundreds of SKUs, not for tens of thousands.
* **One mapped task per SKU** (`edit`, dynamic task mapping): a failed SKU fails alone, the others
  still run, and the summary reports every one of them.
* **Deferrable**: while the gateway works, the edits wait in the triggerer and hold no worker slot.
  A retried task resumes the request it already submitted instead of paying for a new one, and a
  SKU whose job ends `FAILED` (charged: a problem with its input) is not retried at all.
* **Pool `firered_gateway`** caps how many jobs are in flight at the gateway at once. Create it so
  that deferred tasks count, otherwise waiting jobs would not be capped:

      airflow pools set firered_gateway 4 "FireRed gateway jobs in flight" --include-deferred

  Without the pool the scheduler does not start the edits (it logs "Tasks using non-existent pool");
  `airflow dags test` ignores pools, so local tests work without it.
* **Not scheduled**: trigger it by hand, or give it a `schedule` when you adopt it.

**Settings** (a run's *params*, else an Airflow Variable, else the default):

| param | Variable | default |
|---|---|---|
| `manifest` | `firered_manifest` | the sample `firered_catalogue_manifest.csv` beside this file |
| `image_base_url` | `firered_image_base_url` | none: relative `image_url`s are resolved against it |
| `output_root` | `firered_per_sku_output_root` | `$AIRFLOW_HOME/firered-catalogue-per-sku` (path or URL) |
| `firered_conn_id` | | `firered_default` |
| `model`, `parameters`, `poll_interval` | | `firered-image-edit-v1-1`, `{"output_format": "png"}`, 10 s |

**Where a run may point**: as in `firered_catalogue_reedit`, a run's `manifest` and `output_root`
params are accepted only under a prefix an admin lists in the Variable
`firered_catalogue_allowed_prefixes` (a JSON list of absolute paths and URLs, shared by both catalogue
DAGs); unset, a param may only name its default. Anything else fails `load_manifest` before anything
is read or sent, naming the param and what is allowed.

The manifest is CSV (with a header row) or JSON (a list of objects with the same keys).
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from airflow.configuration import conf
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException
from airflow.sdk import DAG, ObjectStoragePath, Param, Variable, get_current_context, task

from airflow_provider_firered.batch.locations import allowed_prefixes, is_url, location_param
from airflow_provider_firered.operators.firered import FireRedEditOperator

DAG_ID = "firered_catalogue_per_sku"
POOL = "firered_gateway"
LOAD_TASK_ID = "load_manifest"
EDIT_TASK_ID = "edit"
SAMPLE_MANIFEST = Path(__file__).with_name("firered_catalogue_manifest.csv")
MANIFEST_FIELDS = ("sku", "image_url", "prompt")


def _setting(params: dict[str, Any], name: str, variable: str | None, default: str) -> str:
    """A run's param if set, else the Airflow Variable, else ``default`` (read at run time, not parse)."""
    value = params.get(name)
    if value not in (None, ""):
        return str(value)
    if variable:
        return str(Variable.get(variable, default=default) or default)
    return default


def _read_text(location: str) -> str:
    if is_url(location):
        return ObjectStoragePath(location).read_text()
    return Path(location.removeprefix("file://")).expanduser().read_text(encoding="utf-8")


def parse_manifest(text: str, name: str) -> list[dict[str, str]]:
    """
    Parse a catalogue manifest (CSV with a header, or a JSON list of objects).

    Problems with the file itself (missing columns, duplicate or unsafe SKUs) fail the run at once;
    a bad prompt or image URL on one row is left to that SKU's edit, so it fails alone.
    """
    if name.lower().endswith(".json"):
        rows = json.loads(text)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise AirflowFailException(f"manifest {name}: expected a JSON list of objects")
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    items: list[dict[str, str]] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        missing = [f for f in MANIFEST_FIELDS if not str(row.get(f) or "").strip()]
        if missing:
            raise AirflowFailException(f"manifest {name}, row {number}: missing {', '.join(missing)}")
        item = {f: str(row[f]).strip() for f in MANIFEST_FIELDS}
        sku = item["sku"]
        # The SKU names an output folder: keep it to one plain path segment.
        if sku in (".", "..") or any(c in sku for c in "/\\\0"):
            raise AirflowFailException(f"manifest {name}, row {number}: SKU {sku!r} is not a folder name")
        if sku in seen:
            raise AirflowFailException(f"manifest {name}, row {number}: duplicate SKU {sku!r}")
        seen.add(sku)
        items.append(item)
    return items


def resolve_image_url(image_url: str, base_url: str) -> str:
    """Absolute URLs are kept; a relative one (``shoe.png``) is resolved against ``base_url``."""
    if urlsplit(image_url).scheme:
        return image_url
    if not base_url:
        raise AirflowFailException(
            f"image_url {image_url!r} is relative: set the run's image_base_url param or the "
            "firered_image_base_url Variable to the URL it is relative to"
        )
    return urljoin(base_url.rstrip("/") + "/", image_url)


with DAG(
    dag_id=DAG_ID,
    description="Re-edit a small catalogue with FireRed, one mapped task per SKU",
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # two nightly runs never edit the same catalogue at once
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "manifest": Param("", type="string", description="Manifest path or URL (CSV or JSON)."),
        "image_base_url": Param("", type="string", description="Base URL for relative image_url values."),
        "output_root": Param("", type="string", description="Where edited images go (path or URL)."),
        "firered_conn_id": Param("firered_default", type="string", minLength=1),
        "model": Param("firered-image-edit-v1-1", enum=["firered-image-edit-v1-1", "firered-image-edit"]),
        "parameters": Param({"output_format": "png"}, type="object", description="The model's options."),
        "poll_interval": Param(10, type="number", minimum=1, description="Seconds between status polls."),
    },
    doc_md=__doc__,
    tags=["firered", "example"],
) as dag:

    @task(task_id=LOAD_TASK_ID)
    def load_manifest() -> list[dict[str, Any]]:
        """Read the manifest and turn each row into the arguments of one edit."""
        context = get_current_context()
        params = dict(context["params"])
        # Checked before anything is read: where the worker reads and writes is the admin's choice.
        prefixes = allowed_prefixes()
        manifest = location_param(
            params, "manifest", _setting({}, "manifest", "firered_manifest", str(SAMPLE_MANIFEST)), prefixes
        )
        base_url = _setting(params, "image_base_url", "firered_image_base_url", "")
        default_root = os.path.join(os.environ.get("AIRFLOW_HOME", "~/airflow"), "firered-catalogue-per-sku")
        output_root = location_param(
            params,
            "output_root",
            _setting({}, "output_root", "firered_per_sku_output_root", default_root),
            prefixes,
        )
        if "://" not in output_root:
            output_root = str(Path(output_root).expanduser().resolve())
        # A manual run may have no logical date: then the day it was triggered names the folder.
        dag_run = context["dag_run"]
        run_date = (dag_run.logical_date or dag_run.run_after).strftime("%Y-%m-%d")
        run_folder = f"{output_root.rstrip('/')}/{run_date}"

        items = parse_manifest(_read_text(manifest), manifest)
        limit = conf.getint("core", "max_map_length")
        if len(items) > limit:
            raise AirflowFailException(
                f"manifest {manifest}: {len(items)} SKUs, more than Airflow maps ([core] max_map_length "
                f"= {limit}); use the batched firered_catalogue_reedit DAG for large catalogues"
            )
        print(f"Manifest {manifest}: {len(items)} SKU(s); outputs under {run_folder}")
        edits = [
            {
                "prompt": item["prompt"],
                "images": [resolve_image_url(item["image_url"], base_url)],
                "output_dir": f"{run_folder}/{item['sku']}",
                "model": params["model"],
                "parameters": params["parameters"],
                "firered_conn_id": params["firered_conn_id"],
                "poll_interval": params["poll_interval"],
            }
            for item in items
        ]
        # Mapping needs the edits as the return value; the summary reads these two beside them.
        context["ti"].xcom_push(key="skus", value=[item["sku"] for item in items])
        context["ti"].xcom_push(key="run_folder", value=run_folder)
        return edits

    manifest = load_manifest()

    edit = FireRedEditOperator.partial(
        task_id=EDIT_TASK_ID,
        pool=POOL,
        deferrable=True,
        timeout=3600,  # seconds each try may wait for the gateway; a retry resumes the same request
        # The UI shows each mapped edit by its SKU, the last folder of its output_dir.
        map_index_template="{{ task.output_dir.rstrip('/').rsplit('/', 1)[-1] }}",
    ).expand_kwargs(manifest)

    @task(trigger_rule="all_done")  # run whatever happened to the edits
    def summarise() -> dict[str, Any]:
        """Report every SKU, whatever happened to the others; fail the run if any SKU failed."""
        context = get_current_context()
        ti = context["ti"]
        # Pulled here, not passed in: when the manifest was refused there is nothing to report (a
        # missing argument would fail this task and have it retried for nothing).
        skus = ti.xcom_pull(task_ids=LOAD_TASK_ID, key="skus")
        run_folder = ti.xcom_pull(task_ids=LOAD_TASK_ID, key="run_folder")
        if not skus or not run_folder:
            raise AirflowSkipException(f"{LOAD_TASK_ID} planned no edits: nothing to report")
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[EDIT_TASK_ID], run_ids=[ti.run_id])
        run_states = states.get(ti.run_id, {})
        rows = []
        for index, sku in enumerate(skus):
            result = ti.xcom_pull(task_ids=EDIT_TASK_ID, map_indexes=index) or {}
            request_id = result.get("request_id") or ti.xcom_pull(
                task_ids=EDIT_TASK_ID, map_indexes=index, key="request_id"
            )
            state = run_states.get(f"{EDIT_TASK_ID}_{index}")
            rows.append(
                {
                    "sku": sku,
                    "state": str(getattr(state, "value", state) or "unknown"),
                    "request_id": request_id,
                    "job_status": result.get("status"),
                    "output_paths": result.get("output_paths") or [],
                }
            )
        failed = [row["sku"] for row in rows if row["state"] != "success"]
        report = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "run_folder": run_folder,
            "succeeded": len(rows) - len(failed),
            "failed": failed,
            "skus": rows,
        }
        text = json.dumps(report, indent=2)
        target = f"{run_folder}/summary.json"
        if "://" in target:
            ObjectStoragePath(target).write_text(text)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text(text, encoding="utf-8")
        for row in rows:
            print(f"{row['sku']:<16} {row['state']:<16} {', '.join(row['output_paths']) or '-'}")
        print(f"{report['succeeded']} of {len(rows)} SKU(s) edited; summary in {target}")
        if failed:
            ti.xcom_push(key="summary", value=report)
            raise AirflowFailException(f"{len(failed)} of {len(rows)} SKU(s) failed: {', '.join(failed)}")
        return report

    edit >> summarise()
