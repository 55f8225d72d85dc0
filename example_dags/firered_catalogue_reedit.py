"""
### Nightly catalogue re-edit with FireRed, in batches

Every night at 02:00 UTC this DAG reads a **catalogue manifest** (one row per product: `sku`,
`image_url`, `prompt`), splits it into batches of `batch_size` SKUs and maps one
`FireRedBatchEditOperator` task over each batch. A final task reads the batches' result manifests
and writes `summary.json` and `index.html` (a contact sheet: each SKU's input and output side by
side, each failure with its error) in the run folder. Open `index.html` in a browser.

* **Batches, not one task per SKU**: 10,000 SKUs at the default `batch_size` of 500 are 20 mapped
  tasks, so any catalogue up to `[core] max_map_length` (1,024) times `batch_size` fits. Each batch
  keeps at most `max_in_flight` jobs at the gateway and waits deferred, holding no worker slot.
  (`firered_catalogue_per_sku` keeps the one-task-per-SKU pattern for small catalogues.)
* **Where things go**: the run folder is `<output_root>/<run date>/` for scheduled runs and
  `<output_root>/<date>T<time>Z/` for any other run (two manual runs never share a folder). Batch
  `N` writes to `<run folder>/batch-NNNN/`: its `_manifest.jsonl` and one folder per SKU.
* **Nothing is paid twice for the same edit**: each run passes the latest earlier run folder under
  `output_root` as `previous`; a SKU whose prompt, image and options did not change since it was
  edited there is copied from it instead of being submitted again.
* **A failed SKU fails alone**: the batches collect every SKU they can; the summary lists each
  failure with its error, then fails the run so that it shows as failed.
* **A spending limit** (`max_paid_edits`, none by default): each batch task sends at most that many
  paid edits over all its tries (a retry or a clear counts what earlier tries sent; reused SKUs cost
  nothing), so a night of *B* batch tasks pays for at most *B* x `max_paid_edits` edits (the
  `load_manifest` log says the night's ceiling). The SKUs beyond it are not sent: they are
  `over_budget` in the manifests, the summary and the contact sheet, and the run fails saying how many.
  To send them, raise the param (or the Variable) and trigger a new run: what this one edited is
  reused from it.
* **A dry run** (`dry_run: true`) turns the night into a plan: every SKU is checked, compared with
  the earlier run and fingerprinted, and nothing is sent. The run folder is
  `<output_root>/<date>T<time>Z-dry-run/` (never taken as an earlier run); each SKU is `would_edit`,
  `would_reuse`, `would_fail` (unchanged since it ended `FAILED`), `invalid` or `over_budget`, with
  its reason, in the manifests, `summary.json` and `index.html`. The run succeeds unless a manifest
  has a problem.
* **A person approves before publishing** (Airflow 3.1+, `review` on): after `summarise`, the
  `review` task (the standard provider's human-in-the-loop `ApprovalOperator`) asks in Airflow's UI
  (*Required Actions*, or the task instance) whether to publish the night, giving its counts and
  links to each batch's contact sheet in the UI (and the `index.html` file). `publish` runs only on
  *Approve*; *Reject* skips it, and so does no answer within 12 hours (the default answer then is
  *Reject*, so that the next night is not held up). Nothing is paid again: the next run reuses the
  edits. With `review` off (the default, so that the nightly run stays unattended, as it always
  was), `review` approves by itself, as it does for a dry run. A run with failed SKUs fails in
  `summarise` and is never published. `publish` only logs what would go to the shop: replace it
  with your shop's call. On Airflow 3.3+ it also records an event on the asset `firered_catalogue`
  with the night's figures, which `firered_catalogue_publish` runs on.
  **Airflow 3.0** has no human-in-the-loop operators (they need 3.1): there is no `review` task
  and `publish` follows `summarise`.
* **Pool `firered_gateway`**: a batch task takes one slot while it runs or waits, so at most
  *slots x max_in_flight* jobs are at the gateway at once, whatever the number of batches (and
  across every DAG using the pool). Create it so that deferred tasks count:

      airflow pools set firered_gateway 2 "FireRed batches in flight" --include-deferred

  Without the pool the scheduler does not start the batches (it logs "Tasks using non-existent
  pool"); `airflow dags test` ignores pools, so local tests work without it.
* **The shortest night**: one batch per pool slot, i.e. `batch_size` of about SKUs / slots (10,000
  SKUs and 4 slots: 2,500). Each batch's first wave and its start and end are a hand-over the
  gateway waits through; later waves come back ahead of their end. Smaller batches cost a longer
  night (benchmark D, 10,000 SKUs, 4 slots of 125: 501 s at 500 SKUs a batch, 462 s at 2,500).

**Settings** (a run's *params*, else an Airflow Variable, else the default):

| param | Variable | default |
|---|---|---|
| `manifest` | `firered_manifest` | the sample `firered_catalogue_manifest.csv` beside this file |
| `image_base_url` | `firered_image_base_url` | none: relative `image_url`s are resolved against it |
| `output_root` | `firered_output_root` | `$AIRFLOW_HOME/firered-catalogue` (path or URL: `s3://b/x`) |
| `batch_size` | `firered_batch_size` | 500 SKUs per batch task |
| `max_in_flight` | `firered_max_in_flight` | 500 jobs at the gateway per batch task |
| `max_paid_edits` | `firered_max_paid_edits` | none: no limit (else paid edits per batch task) |
| `dry_run` | | `false` (`true`: plan the night, send nothing) |
| `review` | `firered_catalogue_review` | `false` (`true`: a person approves before `publish`; 3.1+) |
| `firered_conn_id` | | `firered_default` |
| `model`, `parameters`, `poll_interval` | | `firered-image-edit-v1-1`, `{"output_format": "png"}`, 10 s |

**Where a run may point** (`manifest`, and `output_root`, which is also where earlier runs are
looked for): a user who may trigger the DAG must not make the worker read or write wherever they
like, so these params are accepted only under a prefix an admin lists in the Variable
`firered_catalogue_allowed_prefixes`, a JSON list of absolute paths and URLs:

    airflow variables set firered_catalogue_allowed_prefixes '["/data/catalogue", "s3://bucket/catalogue"]'

Unset, a param may only name its default (from its Variable, else the built-in one); Variables are
set by admins and are not checked. A prefix matches whole path segments after `~`, `..` and
symlinks are resolved (`/data/catalogue` takes `/data/catalogue/2026/m.csv`, not
`/data/catalogue-evil` nor `/data/catalogue/../../etc`); a URL must also have the prefix's scheme,
user, host and port, and a `.` or `..` in its path is refused. Anything else fails `load_manifest`
before anything is read or sent, naming the param and what is allowed. `image_base_url` is not
checked: the worker reads no file through it (image URLs go to the gateway, and a batch's
fingerprint requests go only to the hosts the connection's media host policy allows).

The manifest is CSV (with a header row) or JSON (a list of objects with the same keys). Every row
is checked before anything is sent: a missing field, a SKU that is not a plain folder name
(letters, digits, `.`, `_`, `-`) or is repeated, or an image that is not an http(s) URL fails the
run with the row and field named.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from airflow.configuration import conf
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException
from airflow.sdk import DAG, Asset, ObjectStoragePath, Param, Variable, get_current_context, task

from airflow_provider_firered.batch import report as catalogue_report
from airflow_provider_firered.batch.items import KEY_PATTERN
from airflow_provider_firered.batch.locations import allowed_prefixes, is_url, location_param
from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator
from airflow_provider_firered.plugins.links import sheet_path
from airflow_provider_firered.version_compat import AIRFLOW_V_3_3_PLUS

try:  # Airflow 3.1+: human-in-the-loop operators (the standard provider refuses them on 3.0)
    from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException
    from airflow.providers.standard.operators.hitl import ApprovalOperator
except (ImportError, AirflowOptionalProviderFeatureException):
    HAS_REVIEW = False
else:
    HAS_REVIEW = True

DAG_ID = "firered_catalogue_reedit"
POOL = "firered_gateway"
LOAD_TASK_ID = "load_manifest"
EDIT_TASK_ID = "edit_batch"
#: `publish` records an event on it once the night is approved, the night's figures in the extra
#: (`firered_catalogue_publish` runs on it). A static name: local and s3 output roots alike. Airflow 3.3+:
#: 3.0 refuses to run a task whose outlet asset no DAG processor registered yet (as in `dag.test()`).
CATALOGUE_ASSET = Asset(name="firered_catalogue")
#: The figures of summarise's XCom that go into the asset event.
NIGHT_FIGURES = ("total", "edited", "reused", "failed", "over_budget", "paid")
SAMPLE_MANIFEST = Path(__file__).with_name("firered_catalogue_manifest.csv")
MANIFEST_FIELDS = ("sku", "image_url", "prompt")
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
DEFAULT_MAX_IN_FLIGHT = 500
#: Run folders: a scheduled run's date, or any other run's date and time; both sort by time.
RUN_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{6}Z)?")
#: How many earlier run folders are looked into for one with results to reuse.
PREVIOUS_CANDIDATES = 5
#: Row errors listed in one failure message (the count says how many more there are).
ROW_ERRORS_SHOWN = 20
SUMMARISE_TASK_ID = "summarise"
REVIEW_TASK_ID = "review"
PUBLISH_TASK_ID = "publish"
#: How long the review waits for an answer: well before the next night (max_active_runs is 1).
REVIEW_TIMEOUT = timedelta(hours=12)


def _setting(params: dict[str, Any], name: str, variable: str | None, default: str) -> str:
    """A run's param if set, else the Airflow Variable, else ``default`` (read at run time, not parse)."""
    value = params.get(name)
    if value not in (None, ""):
        return str(value)
    if variable:
        return str(Variable.get(variable, default=default) or default)
    return default


def _number(params: dict[str, Any], name: str, variable: str, default: int, maximum: int) -> int:
    text = _setting(params, name, variable, str(default))
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise AirflowFailException(f"{name}: must be a whole number from 1 to {maximum}, got {text!r}")
    return value


def _budget(params: dict[str, Any]) -> int | None:
    """The run's ``max_paid_edits`` (param, else Variable); None for no limit."""
    text = _setting(params, "max_paid_edits", "firered_max_paid_edits", "").strip()
    if text.lower() in ("", "none", "null"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise AirflowFailException(
            f"max_paid_edits: must be a whole number of at least 1, or empty for no limit, got {text!r}"
        )
    return value


def _location(text: str) -> ObjectStoragePath | Path:
    if is_url(text):
        return ObjectStoragePath(text)
    return Path(text.removeprefix("file://")).expanduser()


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


def _row_errors(row: dict[str, Any], base_url: str, seen: set[str]) -> tuple[dict[str, str], list[str]]:
    """One row's item (``image_url`` resolved) and what is wrong with it, by field."""
    item = {f: str(row.get(f) if row.get(f) is not None else "").strip() for f in MANIFEST_FIELDS}
    errors = [f"field {f}: missing" for f in MANIFEST_FIELDS if not item[f]]
    sku = item["sku"]
    if sku and not KEY_PATTERN.fullmatch(sku):
        errors.append(
            f"field sku: {sku!r} is not allowed: it names a folder, so letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    elif sku in seen:
        errors.append(f"field sku: {sku!r} is a duplicate")
    seen.add(sku)
    if item["image_url"]:
        try:
            item["image_url"] = resolve_image_url(item["image_url"], base_url)
        except AirflowFailException as err:
            errors.append(f"field image_url: {err}")
        else:
            if not catalogue_report.is_web_url(item["image_url"]):
                errors.append(f"field image_url: {item['image_url']!r} is not an http(s) URL")
    return item, errors


def parse_manifest(text: str, name: str, base_url: str = "") -> list[dict[str, str]]:
    """
    Parse and check a catalogue manifest (CSV with a header, or a JSON list of objects).

    Every row is checked before anything is sent; all problems are reported at once, each with its
    row number and field.

    :param text: the manifest's content.
    :param name: its path or URL (``.json`` means JSON), for the messages.
    :param base_url: what relative ``image_url`` values are resolved against.
    :return: the rows, ``image_url`` made absolute.
    """
    if name.lower().endswith(".json"):
        try:
            rows = json.loads(text)
        except ValueError as err:
            raise AirflowFailException(f"manifest {name}: not JSON ({err})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise AirflowFailException(f"manifest {name}: expected a JSON list of objects")
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    items: list[dict[str, str]] = []
    errors: list[str] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        item, problems = _row_errors(row, base_url, seen)
        errors.extend(f"row {number}, {problem}" for problem in problems)
        items.append(item)
    if errors:
        more = f"\n... and {len(errors) - ROW_ERRORS_SHOWN} more" if len(errors) > ROW_ERRORS_SHOWN else ""
        raise AirflowFailException(
            f"manifest {name}: {len(errors)} problem(s), nothing was sent:\n"
            + "\n".join(errors[:ROW_ERRORS_SHOWN])
            + more
        )
    if not items:
        raise AirflowFailException(f"manifest {name}: no rows")
    return items


def run_folder_name(run_type: str, logical_date: datetime | None, run_after: datetime) -> str:
    """``YYYY-MM-DD`` for a scheduled run, ``YYYY-MM-DDTHHMMSSZ`` for any other (manual, backfill ...)."""
    when = (logical_date or run_after).astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d" if run_type == "scheduled" else "%Y-%m-%dT%H%M%SZ")


def find_previous(output_root: str, current: str) -> str | None:
    """
    The latest run folder under ``output_root`` that sorts before ``current`` and holds a batch
    manifest, or None: the results this run may reuse.
    """
    root = _location(output_root)
    if not root.is_dir():
        return None
    names = sorted(
        (c.name for c in root.iterdir() if RUN_FOLDER.fullmatch(c.name) and c.name < current), reverse=True
    )
    for name in names[:PREVIOUS_CANDIDATES]:
        folder = f"{output_root.rstrip('/')}/{name}"
        if catalogue_report.find_batch_folders(folder):
            return folder
    return None


def review_wanted(params: dict[str, Any]) -> bool:
    """Whether a person approves before publishing: the ``review`` param, else its Variable, else no."""
    text = _setting(params, "review", "firered_catalogue_review", "false").strip().lower()
    return text in ("true", "1", "yes", "on")


def review_text(dag_id: str, run_id: str, summary: dict[str, Any], batches: int) -> str:
    """
    The review's text (Markdown): the night's counts and where to look at its edits.

    :param dag_id: this DAG.
    :param run_id: the run under review.
    :param summary: what ``summarise`` returned (the figures, ``summary`` and ``contact_sheet``).
    :param batches: how many batch tasks the run mapped.
    """
    base = urlsplit(conf.get("api", "base_url", fallback="") or "")
    origin = f"{base.scheme}://{base.netloc}" if base.scheme and base.netloc else ""
    names = ("edited", "reused", "failed", "over_budget")
    counts = ", ".join(f"{int(summary.get(name) or 0)} {name.replace('_', ' ')}" for name in names)
    lines = [
        f"**{int(summary.get('total') or 0)} SKU(s)**: {counts}.",
        "",
        "Contact sheet in Airflow, one page per batch task (input beside output, failures first):",
        "",
        *(
            f"- [batch-{index:04d}]({origin}{sheet_path(dag_id, run_id, EDIT_TASK_ID, index)})"
            for index in range(batches)
        ),
        "",
        f"The whole night in one file: `{summary.get('contact_sheet', '')}`",
        "",
        "*Approve* publishes the night; *Reject* publishes nothing (a later run reuses these edits).",
    ]
    return "\n".join(lines)


if HAS_REVIEW:

    class CatalogueReview(ApprovalOperator):
        """Ask a person whether to publish the night; approve without asking when review is off or a plan."""

        def execute(self, context: Any) -> Any:
            params = dict(context["params"])
            if params.get("dry_run") or not review_wanted(params):
                why = "a dry run publishes nothing" if params.get("dry_run") else "review is off"
                print(f"Not asking a person: {why} (param review, Variable firered_catalogue_review)")
                return {"chosen_options": [self.APPROVE], "params_input": {}, "responded_by_user": None}
            ti = context["ti"]
            summary = ti.xcom_pull(task_ids=SUMMARISE_TASK_ID) or {}
            batches = len(ti.xcom_pull(task_ids=LOAD_TASK_ID) or [])
            self.body = review_text(ti.dag_id, ti.run_id, summary, batches)
            return super().execute(context)


with DAG(
    dag_id=DAG_ID,
    description="Re-edit the product catalogue with FireRed every night, in batches",
    schedule="0 2 * * *",
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # two nightly runs never edit the same catalogue at once
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "manifest": Param("", type="string", description="Manifest path or URL (CSV or JSON)."),
        "image_base_url": Param("", type="string", description="Base URL for relative image_url values."),
        "output_root": Param("", type="string", description="Where edited images go (path or URL)."),
        "batch_size": Param(
            None, type=["null", "integer"], minimum=1, maximum=MAX_BATCH_SIZE, description="SKUs per batch."
        ),
        "max_in_flight": Param(
            None, type=["null", "integer"], minimum=1, description="Jobs at the gateway per batch task."
        ),
        "firered_conn_id": Param("firered_default", type="string", minLength=1),
        "model": Param("firered-image-edit-v1-1", enum=["firered-image-edit-v1-1", "firered-image-edit"]),
        "parameters": Param({"output_format": "png"}, type="object", description="The model's options."),
        "poll_interval": Param(10, type="number", minimum=1, description="Seconds between status polls."),
        "max_paid_edits": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Most paid edits per batch task (empty: the Variable, else no limit).",
        ),
        "dry_run": Param(
            False, type="boolean", description="Plan the night: check and compare, send nothing."
        ),
        "review": Param(
            None,
            type=["null", "boolean"],
            description="A person approves before publishing (empty: the Variable, else no). Airflow 3.1+.",
        ),
    },
    doc_md=__doc__,
    tags=["firered", "example"],
) as dag:

    @task(task_id=LOAD_TASK_ID)
    def load_manifest() -> list[dict[str, Any]]:
        """Read and check the manifest; return the arguments of each batch task."""
        context = get_current_context()
        params = dict(context["params"])
        # Checked before anything is read: where the worker reads and writes is the admin's choice.
        prefixes = allowed_prefixes()
        manifest = location_param(
            params, "manifest", _setting({}, "manifest", "firered_manifest", str(SAMPLE_MANIFEST)), prefixes
        )
        base_url = _setting(params, "image_base_url", "firered_image_base_url", "")
        default_root = os.path.join(os.environ.get("AIRFLOW_HOME", "~/airflow"), "firered-catalogue")
        output_root = location_param(
            params, "output_root", _setting({}, "output_root", "firered_output_root", default_root), prefixes
        )
        if "://" not in output_root:
            output_root = str(Path(output_root).expanduser().resolve())
        output_root = output_root.rstrip("/")
        batch_size = _number(params, "batch_size", "firered_batch_size", DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)
        max_in_flight = _number(
            params, "max_in_flight", "firered_max_in_flight", DEFAULT_MAX_IN_FLIGHT, 10**6
        )

        budget = _budget(params)
        dry_run = bool(params.get("dry_run"))

        items = parse_manifest(_location(manifest).read_text(), manifest, base_url)
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        limit = conf.getint("core", "max_map_length")
        if len(batches) > limit:
            raise AirflowFailException(
                f"batch_size: {len(items)} SKUs in batches of {batch_size} are {len(batches)} tasks, more "
                f"than Airflow maps ([core] max_map_length = {limit}); raise batch_size"
            )
        dag_run = context["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        name = run_folder_name(run_type, dag_run.logical_date, dag_run.run_after)
        previous = find_previous(output_root, name)
        # A plan's folder does not match RUN_FOLDER: no later run takes it for an earlier run's results.
        run_folder = f"{output_root}/{name}" + ("-dry-run" if dry_run else "")
        ceiling = "no limit" if budget is None else f"at most {budget * len(batches)} paid edit(s)"
        print(
            f"Manifest {manifest}: {len(items)} SKU(s) in {len(batches)} batch(es) of up to {batch_size}; "
            f"outputs under {run_folder}; {'dry run: nothing is sent' if dry_run else ceiling}; "
            # Last on the line: tools read the earlier run folder from the end of it.
            f"reusing results from {previous or 'no earlier run'}"
        )
        context["ti"].xcom_push(key="run_folder", value=run_folder)
        return [
            {
                "edits": [
                    {"key": item["sku"], "prompt": item["prompt"], "images": [item["image_url"]]}
                    for item in batch
                ],
                "output_root": f"{run_folder}/batch-{number:04d}",
                "previous": previous,
                "model": params["model"],
                "parameters": params["parameters"],
                "firered_conn_id": params["firered_conn_id"],
                "poll_interval": params["poll_interval"],
                "max_in_flight": max_in_flight,
                "max_paid_edits": budget,
                "dry_run": dry_run,
            }
            for number, batch in enumerate(batches)
        ]

    batches = load_manifest()

    edit = FireRedBatchEditOperator.partial(
        task_id=EDIT_TASK_ID,
        pool=POOL,
        deferrable=True,
        # A failed SKU does not fail its batch (which a retry would submit again): the summary
        # reports it and fails the run. A batch task fails only when the batch itself could not run.
        max_failed=MAX_BATCH_SIZE,
        # The UI shows each mapped task by its batch folder's name.
        map_index_template="{{ task.output_root.rstrip('/').rsplit('/', 1)[-1] }}",
    ).expand_kwargs(batches)

    @task(task_id=SUMMARISE_TASK_ID, trigger_rule="all_done")  # report whatever happened to the batches
    def summarise() -> dict[str, Any]:
        """Read every batch's manifest, write summary.json and index.html; fail if any SKU failed."""
        ti = get_current_context()["ti"]
        # Pulled here, not passed in: when the manifest was refused there is nothing to report.
        batches = ti.xcom_pull(task_ids=LOAD_TASK_ID)
        run_folder = ti.xcom_pull(task_ids=LOAD_TASK_ID, key="run_folder")
        if not batches or not run_folder:
            raise AirflowSkipException(f"{LOAD_TASK_ID} planned no batches: nothing to report")
        report = catalogue_report.read_run(run_folder, catalogue_report.batch_items(batches))
        figures = report.figures()  # the same figures as the batch tasks' XCom
        title = f"{ti.dag_id}: {ti.run_id}" + (" (dry run: a plan)" if figures.dry_run else "")
        summary = catalogue_report.write_summary(report, dag_id=ti.dag_id, run_id=ti.run_id)
        sheet = catalogue_report.write_contact_sheet(report, title=title)
        for item in report.items:
            outputs = ", ".join(item.outputs) or "-"
            shown = item.error if item.is_failure or item.dry_run else outputs
            print(f"{item.key:<16} {item.outcome:<11} {shown}")
        for problem in report.problems:
            print(f"problem: {problem}")
        counted = ", ".join(f"{value} {name}" for name, value in figures.counts().items() if name != "total")
        print(f"{figures.total} SKU(s): {counted}; summary {summary}; contact sheet {sheet}")
        failed = [item.key for item in report.items if item.is_failure]
        if report.problems or (failed and not figures.dry_run):
            over = (
                f"; {figures.over_budget} not sent, over max_paid_edits: raise the max_paid_edits param "
                "(or the Variable firered_max_paid_edits) and run again"
                if figures.over_budget
                else ""
            )
            raise AirflowFailException(
                f"{len(failed)} of {figures.total} SKU(s) failed ({', '.join(failed[:20]) or 'none'}), "
                f"{len(report.problems)} problem(s) in the result manifests{over}; see {sheet}"
            )
        return {**figures.as_dict(), "summary": summary, "contact_sheet": sheet}

    # The asset event comes after the review, not from the batch tasks: what runs on it (the shop's
    # update, `firered_catalogue_publish`) must never see a night nobody approved.
    @task(task_id=PUBLISH_TASK_ID, outlets=[CATALOGUE_ASSET] if AIRFLOW_V_3_3_PLUS else [])
    def publish() -> dict[str, Any]:
        """Publish the approved night: here, log what would go to the shop (replace with its call)."""
        context = get_current_context()
        ti = context["ti"]
        summary = ti.xcom_pull(task_ids=SUMMARISE_TASK_ID) or {}
        dry_run = bool(context["params"].get("dry_run"))
        if AIRFLOW_V_3_3_PLUS:  # the night's figures, as summarise counted them from the manifests
            figures = {name: int(summary.get(name) or 0) for name in NIGHT_FIGURES}
            context["outlet_events"][CATALOGUE_ASSET].extra = {
                **figures,
                "dry_run": dry_run,
                "manifest": summary.get("summary"),
                "contact_sheet": summary.get("contact_sheet"),
            }
        if dry_run:
            print("A dry run: a plan, nothing to publish")
            return {"published": False, "summary": summary.get("summary")}
        answer = (ti.xcom_pull(task_ids=REVIEW_TASK_ID) if HAS_REVIEW else None) or {}
        who = (answer.get("responded_by_user") or {}).get("name") or "nobody: no review asked"
        published = int(summary.get("edited") or 0) + int(summary.get("reused") or 0)
        print(
            f"Publishing {published} SKU(s) (approved by {who}): summary {summary.get('summary')}, "
            f"contact sheet {summary.get('contact_sheet')}"
        )
        return {"published": True, "approved_by": who, "skus": published, "summary": summary.get("summary")}

    summary = summarise()
    edit >> summary
    if HAS_REVIEW:
        review = CatalogueReview(
            task_id=REVIEW_TASK_ID,
            subject="Publish tonight's catalogue edits?",
            # Written when the review starts, from summarise's figures (see review_text).
            body="",
            defaults=ApprovalOperator.REJECT,  # no answer in time: nothing is published
            response_timeout=REVIEW_TIMEOUT,
            retries=0,  # a retry would ask again, for another REVIEW_TIMEOUT
        )
        summary >> review >> publish()  # a rejection skips publish
    else:  # Airflow 3.0: no human-in-the-loop operators, published without the step (see the doc)
        summary >> publish()
