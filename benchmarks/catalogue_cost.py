"""
D. What the nightly catalogue costs a real Airflow at store size: the catalogue example DAG itself
(``example_dags/firered_catalogue_reedit.py``, unmodified: batches of FireRedBatchEditOperator between
``load_manifest`` and ``summarise``) against one deferrable FireRedEditOperator per SKU
(``bench_catalogue_per_sku`` in benchmarks/catalogue_dags/firered_bench_catalogue.py).

For each catalogue size, one deployment (api-server, scheduler with LocalExecutor, dag-processor and
two triggerers, on PostgreSQL: ``firered_devtools``) runs against the emulator
(``--no-render``, jobs of ``--job-seconds``, ``--max-concurrent-jobs`` unfinished jobs at most). Its DAG
folder (``<work>/dags``) holds symlinks to the example DAG file (and the sample manifest beside it, as
deployed) and to the per-SKU DAG file, nothing else; the script checks that the dag-processor parsed
exactly those two DAGs without import errors. The pool ``firered_gateway`` the example uses is created
with ``--include-deferred``, its slots = batches at once, and each run gets
``max_in_flight = max_concurrent_jobs // slots``.

The batch variant runs up to three nights, each a manual run of ``firered_catalogue_reedit`` with
params ``manifest`` (a CSV the script writes: ``sku,image_url,prompt``, images from the emulator),
``output_root`` (one folder for every night of a size), ``batch_size``, ``max_in_flight`` and
``poll_interval``; the Variable ``firered_catalogue_allowed_prefixes`` lists ``--work`` (set as an
admin would, in the deployment's environment), so the example accepts those paths. The DAG names
each manual run's folder by its date and time to the second and reuses the latest earlier one
(``previous``): the first night edits everything, the second has nothing changed (it reuses the
first), the third has 1% of the prompts changed (it reuses the second). The
example's own ``retries=2, retry_delay=2 min`` stay (that is what users run): the tries are reported.
After each night the run folder's ``summary.json`` (written with ``index.html`` by ``summarise``) is
checked against the batches' manifests. The per-SKU variant runs the first night only (it has no
notion of an earlier night) and has no summary task: a cheaper, i.e. conservative, baseline.

For each run: wall time from trigger to the run's end (``load_manifest`` and ``summarise`` included,
the latter's duration also on its own, from ``task_instance``); worker-slot-seconds (busy
LocalExecutor workers, sampled); CPU seconds of each Airflow process (its own and its reaped
children's, from /proc) split into scheduler, workers, triggerers, api-server, dag-processor, with
PostgreSQL's and the emulator's beside them; task starts (task tries, ``load_manifest`` and
``summarise`` included, plus deferral resumptions, from the metadata DB, cross-checked against the
task logs); POSTs and status reads from the emulator's record; and the length of the ``trigger``
rows' kwargs, sampled while the tasks wait.

With ``--deployment celery-s3`` the batch nights run on the deployment a catalogue team runs, started
as tests/e2e/test_celery_s3_e2e.py starts it (``firered_devtools``): the CeleryExecutor with a Redis
broker and ``--celery-workers`` Celery workers (each its own process and working folder, sharing
``--parallelism`` slots), PostgreSQL as metadata database and result backend, two triggerers, and
``output_root`` on S3 (SeaweedFS, through an ``aws`` connection): ``s3://firered_s3@firered/catalogue/
batch-<SKUs>``, the manifests uploaded beside it. Worker-slot-seconds are then sampled from the
workers' processes (a prefork pool process supervising a task process); task instances in state
``running`` in the metadata DB are integrated beside it as a cross-check. Celery workers (with their
pool and task processes) count as ``workers``; Redis's and SeaweedFS's CPU is reported beside.
``--max-in-flight`` sets each batch's share of the gateway; with ``--concurrent-batches`` times it above
the gateway's limit, batches overlap: one facing a full gateway waits (``429``) for the next wave.

    python benchmarks/catalogue_cost.py --skus 1000 --variants batch,per-sku --nights 3
    python benchmarks/catalogue_cost.py --skus 10000 --variants batch --nights 3 --json d.json
    python benchmarks/catalogue_cost.py --skus 10000 --variants batch --deployment celery-s3 --json d.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalogue_outputs import CelerySlotSampler, LocalOutputs, S3Outputs, read_json
from firered_devtools.celery import CeleryDeployment
from firered_devtools.deployment import AirflowDeployment, start_emulator
from firered_devtools.postgres import PostgresCluster
from firered_devtools.processes import descendants
from worker_cost import SlotSampler

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.process import EmulatorProcess

#: This repository.
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DAG = ROOT / "example_dags" / "firered_catalogue_reedit.py"
#: The files the deployment's DAG folder links to: the catalogue example as a user deploys it (with the
#: sample manifest beside it, its fallback when no manifest is given) and the per-SKU baseline.
DEPLOYED_FILES = (
    EXAMPLE_DAG,
    EXAMPLE_DAG.with_name("firered_catalogue_manifest.csv"),
    ROOT / "benchmarks" / "catalogue_dags" / "firered_bench_catalogue.py",
)
VARIANTS = {"batch": "firered_catalogue_reedit", "per-sku": "bench_catalogue_per_sku"}
NIGHTS = ("first", "unchanged", "1% changed")
#: The pool the example's batch tasks run in (its POOL).
POOL = "firered_gateway"
#: The example's tasks before and after the batches, timed on their own.
PLAN_TASK, SUMMARY_TASK = "load_manifest", "summarise"
RUN_FOLDER_FORMAT = "%Y-%m-%dT%H%M%SZ"
#: What ``load_manifest`` logs about the earlier run folder it reuses.
REUSING = re.compile(r"reusing results from (.+)$")
KEY = "benchmark-key"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The emulator keeps this many records; a run that reaches it undercounts its requests.
EMULATOR_RECORD_CAP = 100_000
#: Airflow's processes, by the deployment's names (``triggerer-1``, ... count as ``triggerers``;
#: ``celery-worker-1``, ... as ``workers``).
AIRFLOW_PARTS = ("scheduler", "workers", "triggerers", "api-server", "dag-processor")
#: The deployments: the LocalExecutor on one machine, outputs on its disk; or the CeleryExecutor with
#: two workers and a Redis broker, outputs on S3 (SeaweedFS).
DEPLOYMENTS = ("local", "celery-s3")
#: The S3 connection, bucket and the prefixes (outputs, manifests) of the celery-s3 deployment.
S3_CONN, BUCKET = "firered_s3", "firered"
S3_ROOT = f"s3://{S3_CONN}@{BUCKET}"


# -- CPU by process ---------------------------------------------------------------------------------


def _times(pid: int) -> tuple[float, float]:
    """(own user + system CPU, reaped children's user + system CPU) of ``pid``, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0  # gone since it was listed: its time is in its parent's reaped-children time
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, (
        int(fields[13]) + int(fields[14])
    ) / CLOCK_TICKS


def _tree(pid: int) -> float:
    """CPU of ``pid`` and of all its descendants, live or reaped."""
    return sum(sum(_times(p)) for p in (pid, *descendants(pid)))


def cpu_by_part(
    deployment: AirflowDeployment, postgres_pid: int | None, others: dict[str, int | None] | None = None
) -> dict[str, float]:
    """
    CPU seconds so far of each part. The LocalExecutor workers (and the task processes they start)
    are the scheduler's children: the scheduler's own time is ``scheduler``, its children's ``workers``.
    Celery workers (``celery-worker-<n>``, with their pool and task processes) are ``workers``; the
    scheduler is then its whole tree. ``others`` (Redis, SeaweedFS) are reported beside, by name.
    """
    parts: dict[str, float] = {}
    celery = any(proc.name.startswith("celery-worker-") for proc in deployment.processes)
    for proc in deployment.processes:
        if not proc.running():
            continue
        if proc.name.startswith("celery-worker-"):
            parts["workers"] = parts.get("workers", 0.0) + _tree(proc.pid)
        elif proc.name == "scheduler" and celery:
            parts["scheduler"] = _tree(proc.pid)
        elif proc.name == "scheduler":
            own, reaped = _times(proc.pid)
            parts["scheduler"] = own
            parts["workers"] = reaped + sum(sum(_times(p)) for p in descendants(proc.pid))
        else:
            name = "triggerers" if proc.name.startswith("triggerer") else proc.name
            parts[name] = parts.get(name, 0.0) + _tree(proc.pid)
    if postgres_pid is not None:
        parts["postgres"] = _tree(postgres_pid)
    for name, pid in (others or {}).items():
        if pid is not None:
            parts[name] = _tree(pid)
    return parts


def postmaster_pid(cluster: PostgresCluster | None) -> int | None:
    if cluster is None:
        return None
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- sampling while a run goes -------------------------------------------------------------------------


class TriggerSampler(threading.Thread):
    """Samples the ``trigger`` table's rows (count, kwargs lengths) while the tasks wait."""

    def __init__(self, deployment: AirflowDeployment, period: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.deployment, self.period = deployment, period
        self.stopped = threading.Event()
        self.peak_rows = 0
        self.max_bytes = 0
        self.row_samples = 0
        self.byte_samples = 0

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                ((rows, longest, total),) = self.deployment.query(
                    "SELECT COUNT(*), COALESCE(MAX(LENGTH(kwargs)), 0), COALESCE(SUM(LENGTH(kwargs)), 0) "
                    "FROM trigger"
                )
            except Exception:  # a sample lost to a busy database is only a sample
                continue
            self.peak_rows = max(self.peak_rows, int(rows))
            self.max_bytes = max(self.max_bytes, int(longest))
            self.row_samples += int(rows)
            self.byte_samples += int(total)

    @property
    def mean_bytes(self) -> float:
        return self.byte_samples / self.row_samples if self.row_samples else 0.0


# -- the catalogue ------------------------------------------------------------------------------------


def catalogue_rows(skus: int, images: list[str], changed: int) -> list[dict[str, str]]:
    """``skus`` rows ``{"sku", "prompt", "image"}``; ``changed`` of them with another prompt."""
    step = skus // changed if changed else 0
    rows = []
    for i in range(skus):
        prompt = f"Catalogue photo of item {i}: white background, soft shadow"
        if step and i % step == 0:
            prompt += ", brighter"
        rows.append({"sku": f"sku-{i:06d}", "prompt": prompt, "image": images[i % len(images)]})
    return rows


def write_catalogue(path: Path, rows: list[dict[str, str]]) -> None:
    """The per-SKU DAG's catalogue: JSON lines ``{"sku", "prompt", "image"}``."""
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """The example DAG's manifest: CSV with the header ``sku,image_url,prompt``."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("sku", "image_url", "prompt"))
        writer.writerows((row["sku"], row["image"], row["prompt"]) for row in rows)


def changed_count(skus: int) -> int:
    """1% of the catalogue, at least one SKU."""
    return max(1, math.ceil(skus / 100))


# -- one run ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One DAG run to measure."""

    size: int
    variant: str
    night: int
    #: The batch variant's CSV manifest (a path, or an S3 URL); the per-SKU variant's JSON-lines
    #: catalogue.
    catalogue: Path | str
    #: The batch variant's ``output_root`` (every night's run folder is made in it by the DAG); the
    #: per-SKU variant's run folder.
    folder: Path
    changed: int
    #: The batch variant's ``output_root`` (local or S3), where each night's run folder is made.
    outputs: LocalOutputs | S3Outputs | None = None

    @property
    def run_id(self) -> str:
        return f"bench_{self.variant.replace('-', '_')}_{self.size}_night{self.night + 1}"

    @property
    def dag_id(self) -> str:
        return VARIANTS[self.variant]

    def conf(self, args: argparse.Namespace, max_in_flight: int) -> dict[str, Any]:
        """The run's conf: the example's params for a batch run, the per-SKU DAG's otherwise."""
        if self.variant == "batch":
            return {
                "manifest": str(self.catalogue),
                "output_root": self.outputs.url if self.outputs else str(self.folder),
                "batch_size": args.batch_size,
                "max_in_flight": max_in_flight,
                "poll_interval": args.poll_interval,
            }
        return {
            "catalogue": str(self.catalogue),
            "run_folder": str(self.folder),
            "previous": "",
            "batch_size": args.batch_size,
        }


def wait_end(deployment: AirflowDeployment, run_id: str, deadline: float) -> str:
    """The run's final state, or ``timeout`` once ``deadline`` (monotonic) passes first."""
    while (state := deployment.run_state(run_id)) not in ("success", "failed"):
        if time.monotonic() > deadline:
            return "timeout"
        deployment.check_running()
        time.sleep(1)
    return str(state)


def task_starts(deployment: AirflowDeployment, run: Run, triggers_created: int, state: str) -> dict[str, Any]:
    """
    Task starts of the run, two ways. From the metadata DB: every try of every task instance plus
    every resumption after a deferral (one per trigger created; PostgreSQL only). From the task logs:
    every start of a task process logs "DAG bundles loaded" once. The DB count is used on PostgreSQL
    for a finished run; the logs' otherwise (a cut-short run's tries include tasks only scheduled).
    Every task counts: for the example, ``load_manifest`` and ``summarise`` too.
    """
    rows = deployment.query(
        "SELECT task_id, COUNT(*), COALESCE(SUM(try_number), 0) FROM task_instance "
        "WHERE dag_id = ? AND run_id = ? AND try_number > 0 GROUP BY task_id",
        (run.dag_id, run.run_id),
    )
    instances = sum(int(count) for _, count, _ in rows)
    tries = sum(int(total) for _, _, total in rows)
    logs = deployment.home / "logs" / f"dag_id={run.dag_id}" / f"run_id={run.run_id}"
    from_logs = sum(
        path.read_text(errors="replace").count("DAG bundles loaded")
        for path in logs.rglob("attempt=*.log")
        if ".trigger." not in path.name
    )
    from_db = tries + triggers_created
    return {
        "task_instances": instances,
        "task_tries": tries,
        # Tries beyond each task instance's first (the example retries twice, 2 minutes apart).
        "task_retries": tries - instances,
        "task_tries_by_task": {str(task_id): int(total) for task_id, _, total in sorted(rows)},
        "deferrals": triggers_created if deployment.on_postgres else max(0, from_logs - tries),
        "task_starts": from_db if deployment.on_postgres and state != "timeout" else from_logs,
        "task_starts_in_logs": from_logs,
    }


def _moment(value: Any) -> datetime:
    """A timestamp column's value: a datetime on PostgreSQL, its text on SQLite."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def task_seconds(deployment: AirflowDeployment, run: Run) -> dict[str, float]:
    """How long the example's ``load_manifest`` and ``summarise`` ran (their last tries), by task."""
    rows = deployment.query(
        "SELECT task_id, start_date, end_date FROM task_instance "
        "WHERE dag_id = ? AND run_id = ? AND task_id IN (?, ?)",
        (run.dag_id, run.run_id, PLAN_TASK, SUMMARY_TASK),
    )
    return {
        str(task_id): round((_moment(end) - _moment(start)).total_seconds(), 1)
        for task_id, start, end in rows
        if start and end
    }


def trigger_sequence(deployment: AirflowDeployment) -> int:
    """How many triggers were ever created (PostgreSQL's sequence; 0 on SQLite, which has none)."""
    if not deployment.on_postgres:
        return 0
    ((value, called),) = deployment.query("SELECT last_value, is_called FROM trigger_id_seq")
    return int(value) if called else 0


def gateway_counts(emulator: EmulatorProcess) -> dict[str, Any]:
    """POSTs, 429s and status reads the emulator recorded since its last reset."""
    records = emulator.control("GET", "requests", timeout=120)
    gateway = [r for r in records if r["origin"] == "gateway"]
    return {
        "submits": sum(r["method"] == "POST" and r["status"] == 202 for r in gateway),
        "submits_refused_429": sum(r["method"] == "POST" and r["status"] == 429 for r in gateway),
        "status_reads": sum(
            r["method"] == "GET" and r["path"].startswith("/v2/requests/status/") for r in gateway
        ),
        "cdn_requests": sum(r["origin"] == "cdn" for r in records),
        "emulator_record_truncated": len(records) >= EMULATOR_RECORD_CAP,
    }


def outcomes(run: Run, run_folder: str | None) -> dict[str, int]:
    """How the items ended: from the batches' manifests, or (per SKU) the output folders filled."""
    counts: Counter[str] = Counter()
    if run.outputs is not None:
        if run_folder:
            counts = run.outputs.outcomes(run_folder)
    else:
        folders = [p for p in run.folder.iterdir() if p.is_dir()] if run.folder.exists() else []
        counts["edited"] = sum(any(f.is_file() for f in folder.iterdir()) for folder in folders)
    return {name: counts.get(name, 0) for name in ("edited", "reused", "failed", "pending")}


# -- the example's run folders --------------------------------------------------------------------------


def wait_for_a_new_folder_name(existing: set[str]) -> None:
    """
    The example names a manual run's folder by the second it was triggered, and reuses the latest
    earlier folder: wait until a run triggered now gets a name after every existing one, so that no
    two nights share a folder and each night reuses the one before it.
    """
    while existing and datetime.now(timezone.utc).strftime(RUN_FOLDER_FORMAT) <= max(existing):
        time.sleep(0.2)


def planned_previous(deployment: AirflowDeployment, run: Run) -> str | None:
    """
    The earlier run folder ``load_manifest`` said it reuses ("" for none), from its log (its last
    try's); None when the log has no such line.
    """
    folder = deployment.home / "logs" / f"dag_id={run.dag_id}" / f"run_id={run.run_id}"
    found: str | None = None
    for path in sorted((folder / f"task_id={PLAN_TASK}").glob("attempt=*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            event = str(record.get("event", "")) if isinstance(record, dict) else line
            if match := REUSING.search(event):
                found = match.group(1).strip()
    return None if found is None else ("" if found == "no earlier run" else found)


def summary_counts(outputs: LocalOutputs | S3Outputs, run_folder: str | None) -> dict[str, int] | None:
    """``summary.json``'s counts (total, edited, reused, failed), or None without one."""
    summary = read_json(outputs, run_folder, "summary.json") if run_folder else None
    if not isinstance(summary, dict):
        return None
    return {name: int(summary.get(name) or 0) for name in ("total", "edited", "reused", "failed")}


def check_night(
    run: Run, state: str, new_folders: list[str], result: dict[str, Any], expected_previous: str
) -> list[str]:
    """What is wrong with a batch night's folders and summary (nothing, normally)."""
    problems = []
    if len(new_folders) != 1:
        where = run.outputs.url if run.outputs else run.folder
        problems.append(f"expected one new run folder under {where}, found {new_folders}")
    if result["previous"] is not None and result["previous"] != expected_previous:
        problems.append(f"reused {result['previous'] or 'nothing'}, not {expected_previous or 'nothing'}")
    summary = result["summary"]
    if summary is None:
        if state != "timeout":
            problems.append(f"no summary.json in {result['run_folder']}")
        return problems
    manifests = {name: result[name] for name in ("edited", "reused", "failed")}
    if {name: summary[name] for name in manifests} != manifests:
        problems.append(f"summary.json counts {summary} differ from the batch manifests' {manifests}")
    if state == "success" and summary["total"] != run.size:
        problems.append(f"summary.json counts {summary['total']} SKUs, not {run.size}")
    if run.outputs is not None and new_folders and run.outputs.read(new_folders[-1], "index.html") is None:
        problems.append(f"no index.html in {result['run_folder']}")
    return problems


def measure(
    deployment: AirflowDeployment,
    emulator: EmulatorProcess,
    cluster: PostgresCluster | None,
    run: Run,
    args: argparse.Namespace,
    max_in_flight: int,
    expected_previous: str = "",
    others: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """
    Trigger ``run`` and measure it until it ends or ``args.limit`` seconds pass.

    :param max_in_flight: each batch's share of the gateway's limit.
    :param expected_previous: the run folder a batch night should reuse ("" for none).
    :param others: servers whose CPU is reported beside Airflow's (Redis, SeaweedFS), by name.
    """
    emulator.control("POST", "reset")
    deadline = time.monotonic() + args.limit
    deployment.wait_parsed(run.dag_id, deadline)
    conf = run.conf(args, max_in_flight)
    folders_before = run.outputs.folders() if run.outputs else set()
    wait_for_a_new_folder_name(folders_before)
    postgres = postmaster_pid(cluster)
    slots: SlotSampler | CelerySlotSampler = (
        CelerySlotSampler(deployment, period=0.5)
        if isinstance(deployment, CeleryDeployment)
        else SlotSampler(deployment, period=0.5)
    )
    triggers = TriggerSampler(deployment)
    triggers_before = trigger_sequence(deployment)
    load_before = os.getloadavg()
    cpu_before = cpu_by_part(deployment, postgres, others)
    started = time.monotonic()
    slots.start()
    triggers.start()
    deployment.trigger(run.dag_id, run.run_id, conf)
    state = wait_end(deployment, run.run_id, deadline)
    wall = time.monotonic() - started
    cpu_after = cpu_by_part(deployment, postgres, others)
    load_after = os.getloadavg()
    for sampler in (slots, triggers):
        sampler.stopped.set()
        sampler.join(10)
    cpu = {part: round(cpu_after.get(part, 0.0) - cpu_before.get(part, 0.0), 1) for part in cpu_after}
    airflow_cpu = sum(cpu.get(part, 0.0) for part in AIRFLOW_PARTS)
    gateway = gateway_counts(emulator)
    floor = gateway["submits"] * args.job_seconds / args.max_concurrent_jobs
    starts = task_starts(deployment, run, trigger_sequence(deployment) - triggers_before, state)
    if run.outputs is not None:
        new_folders = sorted(run.outputs.folders() - folders_before)
        run_folder = new_folders[-1] if new_folders else None
        folder_url = run.outputs.folder_url(run_folder) if run_folder else None
    else:
        new_folders, run_folder, folder_url = [], None, str(run.folder)
    ended = outcomes(run, run_folder)
    # A run cut short by the limit is judged per SKU it finished.
    done = run.size if state != "timeout" else max(1, ended["edited"] + ended["reused"] + ended["failed"])
    result: dict[str, Any] = {
        "skus": run.size,
        "variant": run.variant,
        "dag_id": run.dag_id,
        "night": NIGHTS[run.night],
        "run_id": run.run_id,
        "state": state,
        "changed_skus": run.changed,
        **ended,
        "run_folder": folder_url,
        "previous": planned_previous(deployment, run) if run.variant == "batch" else None,
        "summary": summary_counts(run.outputs, run_folder) if run.outputs else None,
        "wall_seconds": round(wall, 1),
        "gateway_floor_seconds": round(floor, 1),
        "wall_over_floor": round(wall / floor, 2) if floor else None,
        "task_seconds": task_seconds(deployment, run),
        "worker_slot_seconds": round(slots.slot_seconds, 1),
        # Celery: the figure above is from the workers' processes; this from ``running`` task instances.
        "running_task_seconds": round(slots.running_seconds, 1)
        if isinstance(slots, CelerySlotSampler)
        else None,
        "peak_busy_slots": slots.peak,
        "airflow_cpu_seconds": round(airflow_cpu, 1),
        "cpu_seconds_by_part": cpu,
        **starts,
        **gateway,
        "trigger_rows_peak": triggers.peak_rows,
        "trigger_kwargs_max_bytes": triggers.max_bytes,
        "trigger_kwargs_mean_bytes": round(triggers.mean_bytes),
        "per_sku": {
            "worker_slot_seconds": round(slots.slot_seconds / done, 4),
            "airflow_cpu_seconds": round(airflow_cpu / done, 4),
            "status_reads": round(gateway["status_reads"] / done, 2),
        },
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }
    result["problems"] = (
        check_night(run, state, new_folders, result, expected_previous) if run.variant == "batch" else []
    )
    # No run but the benchmark's: no cron run (the deployment turns the job schedule off), no other DAG.
    ((strangers,),) = deployment.query(
        "SELECT COUNT(*) FROM dag_run WHERE run_type <> 'manual' OR run_id NOT LIKE 'bench%'"
    )
    if int(strangers):
        result["problems"].append(f"{strangers} DAG run(s) other than the benchmark's manual runs")
    return result


# -- one size ----------------------------------------------------------------------------------------------


def plan_runs(
    size: int, variants: list[str], nights: int, work: Path, images: list[str], s3: S3Outputs | None = None
) -> list[Run]:
    """
    The runs for one catalogue size: the batch nights first, then the per-SKU first night.

    :param s3: with the celery-s3 deployment, the S3 ``output_root`` of the batch nights (their
        manifests go to S3 too, beside it); None for a local folder.
    """
    base = catalogue_rows(size, images, 0)
    revised = catalogue_rows(size, images, changed_count(size))
    runs: list[Run] = []
    if "batch" in variants:
        output_root = work / f"batch-{size}"
        outputs = s3 or LocalOutputs(output_root)
        if outputs.folders():
            raise RuntimeError(
                f"{outputs.url} holds earlier runs (the first night would reuse them): use a fresh --work"
            )
        manifests: list[Path | str] = [work / f"manifest-{size}.csv", work / f"manifest-{size}-revised.csv"]
        for path, rows in zip(manifests, (base, revised), strict=True):
            write_manifest(Path(path), rows)
        if s3 is not None:  # every worker reads it: the manifest goes to the shared store too
            manifests = [
                s3.put(f"manifests/{Path(path).name}", Path(path).read_bytes()) for path in manifests
            ]
        for night in range(nights):
            changed = (size, 0, changed_count(size))[night]
            runs.append(Run(size, "batch", night, manifests[night == 2], output_root, changed, outputs))
    if "per-sku" in variants:
        catalogue = work / f"catalogue-{size}.jsonl"
        write_catalogue(catalogue, base)
        runs.append(Run(size, "per-sku", 0, catalogue, work / f"per-sku-{size}" / "night-1", size))
    return runs


def dag_folder(work: Path) -> Path:
    """
    The deployment's DAG folder: links to the example DAG file as it is in the repository (and to the
    sample manifest beside it) and to the per-SKU DAG file. Nothing else: no other DAG is scheduled.
    """
    folder = work / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    for source in DEPLOYED_FILES:
        link = folder / source.name
        link.unlink(missing_ok=True)
        link.symlink_to(source)
    return folder


def check_parsed(deployment: AirflowDeployment, timeout: float) -> list[str]:
    """Wait until the dag-processor has parsed both DAGs; fail on an import error or any other DAG."""
    deadline = time.monotonic() + timeout
    for dag_id in VARIANTS.values():
        deployment.wait_parsed(dag_id, deadline)
    dag_ids = sorted(str(dag_id) for (dag_id,) in deployment.query("SELECT dag_id FROM dag"))
    errors = deployment.query("SELECT filename, stacktrace FROM import_error")
    if errors or set(dag_ids) != set(VARIANTS.values()):
        raise RuntimeError(
            f"the DAG folder {deployment.dags_folder} gave DAGs {dag_ids}, import errors {errors}"
        )
    return dag_ids


def configure(
    deployment: AirflowDeployment,
    emulator: EmulatorProcess,
    args: argparse.Namespace,
    size: int,
    work: Path,
    store: Any = None,
) -> tuple[int, int]:
    """
    Connection, Variables and Airflow's concurrency settings for one size; return the batches at once
    (the pool's slots) and each batch's ``max_in_flight``.

    :param store: the S3 store of the celery-s3 deployment (``SeaweedS3``), else None.
    """
    batches = math.ceil(size / args.batch_size)
    concurrent = max(1, min(args.concurrent_batches, batches))
    max_in_flight = args.max_in_flight or max(1, args.max_concurrent_jobs // concurrent)
    allowed = [str(work)] if store is None else [str(work), f"{S3_ROOT}/catalogue", f"{S3_ROOT}/manifests"]
    if store is not None:
        deployment.env[f"AIRFLOW_CONN_{S3_CONN.upper()}"] = store.connection()
    deployment.env.update(
        {
            "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                {"conn_type": "firered", "host": emulator.gateway_url, "password": KEY}
            ),
            # Set as an admin would: the example accepts a run's manifest and output_root params
            # only under these prefixes.
            "AIRFLOW_VAR_FIRERED_CATALOGUE_ALLOWED_PREFIXES": json.dumps(allowed),
            # The per-SKU DAG's poll interval (the example's is a param of each run).
            "FIRERED_BENCH_POLL": str(args.poll_interval),
            "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(args.parallelism),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, size)),
        }
    )
    return int(concurrent), int(max_in_flight)


def start_celery_s3(
    parts: contextlib.ExitStack, home: Path, dags: Path, args: argparse.Namespace
) -> tuple[CeleryDeployment, Any, dict[str, int | None]]:
    """
    Redis, SeaweedFS and a CeleryExecutor deployment, as tests/e2e/test_celery_s3_e2e.py starts them:
    two Celery workers, each with ``parallelism / 2`` slots; each part stopped by ``parts``. Return the
    deployment, the S3 store and the servers' pids (their CPU is reported beside Airflow's).
    """
    from firered_devtools.redis_server import RedisServer
    from firered_devtools.seaweedfs import SeaweedS3

    redis = RedisServer().start()
    parts.callback(redis.stop)
    store = SeaweedS3(buckets=(BUCKET,)).start()
    parts.callback(store.stop)
    deployment = CeleryDeployment(
        home=home,
        dags_folder=dags,
        parallelism=args.parallelism,
        broker_url=redis.url,
        workers=args.celery_workers,
        worker_concurrency=max(1, args.parallelism // args.celery_workers),
        triggerers=args.triggerers,
    )
    return deployment, store, {"redis": redis.pid, "seaweedfs": store.pid}


def run_size(size: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Start a deployment for one catalogue size, measure its runs, stop it."""
    home = work / f"airflow-{size}"
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as parts:
        cluster: PostgresCluster | None = None
        if args.database == "postgres":
            cluster = PostgresCluster().start()
            parts.callback(cluster.stop)
        store: Any = None
        others: dict[str, int | None] = {}
        deployment: AirflowDeployment
        if args.deployment == "celery-s3":
            deployment, store, others = start_celery_s3(parts, home, dag_folder(work), args)
        else:
            deployment = AirflowDeployment(
                home=home, dags_folder=dag_folder(work), parallelism=args.parallelism
            )
        parts.callback(stop_deployment, deployment)
        if cluster is not None:
            deployment.use_database(cluster.url)
        results = measure_size(deployment, cluster, store, others, size, args, work)
    return results


def stop_deployment(deployment: AirflowDeployment) -> None:
    left = deployment.stop_all()
    if left:
        print(f"processes left running: {left}", file=sys.stderr)


def measure_size(
    deployment: AirflowDeployment,
    cluster: PostgresCluster | None,
    store: Any,
    others: dict[str, int | None],
    size: int,
    args: argparse.Namespace,
    work: Path,
) -> list[dict[str, Any]]:
    """Set one size's deployment up (it is stopped by the caller) and measure its runs."""
    results: list[dict[str, Any]] = []
    emulator = start_emulator(
        deployment,
        "--queued-seconds",
        "0",
        "--processing-seconds",
        str(args.job_seconds),
        "--max-concurrent-jobs",
        str(args.max_concurrent_jobs),
        "--no-render",
    )
    concurrent, max_in_flight = configure(deployment, emulator, args, size, work, store)
    s3 = None if store is None else S3Outputs(store, S3_CONN, BUCKET, f"catalogue/batch-{size}")
    runs = plan_runs(size, args.variants, args.nights, work, list(emulator.sample_images), s3)
    deployment.cli("db", "migrate", timeout=600)
    # The example's pool. Counts deferred batches too: slots x max_in_flight is what the DAG keeps
    # at the gateway.
    deployment.cli("pools", "set", POOL, str(concurrent), "catalogue batches", "--include-deferred")
    deployment.start_all(triggerers=args.triggerers)
    deployment.wait_healthy(timeout=300)
    dag_ids = check_parsed(deployment, timeout=300)
    print(
        f"{size} SKUs: deployment up ({args.deployment}, {args.database}, {args.triggerers} "
        f"triggerer(s), parallelism {args.parallelism}, {concurrent} batch(es) at once of "
        f"max_in_flight {max_in_flight}, DAGs {', '.join(dag_ids)}); "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    previous = ""
    for run in runs:
        result = measure(deployment, emulator, cluster, run, args, max_in_flight, previous, others)
        result["deployment"] = args.deployment
        result["concurrent_batches"] = concurrent if run.variant == "batch" else None
        result["max_in_flight"] = max_in_flight if run.variant == "batch" else None
        result["deployed_dag_ids"] = dag_ids
        results.append(result)
        if args.json:  # this size's nights so far: a run stopped early keeps the nights it finished
            args.json.with_suffix(f".{size}.partial.json").write_text(json.dumps(results, indent=2))
        print(summary_line(result), flush=True)
        for problem in result["problems"]:
            print(f"{run.run_id}: {problem}", flush=True)
        if run.variant == "batch":
            previous = result["run_folder"] or ""
        if result["state"] != "success":
            print(f"{run.run_id} ended {result['state']}: the later runs of this size are skipped")
            break
    return results


# -- reporting -----------------------------------------------------------------------------------------------


def _summarise_seconds(r: dict[str, Any]) -> str:
    seconds = r["task_seconds"].get(SUMMARY_TASK)
    return "-" if seconds is None else f"{seconds:.0f}"


def summary_line(r: dict[str, Any]) -> str:
    return (
        f"{r['skus']:>6} {r['variant']:<8} {r['night']:<11} {r['state']:<8} wall {r['wall_seconds']:6.0f}s "
        f"(floor {r['gateway_floor_seconds']:.0f}s, summarise {_summarise_seconds(r)}s) "
        f"{r['edited']}/{r['reused']}/{r['failed']} edited/reused/failed "
        f"slot-s/SKU {r['per_sku']['worker_slot_seconds']:.3f} "
        f"CPU-s/SKU {r['per_sku']['airflow_cpu_seconds']:.3f} starts {r['task_starts']} "
        f"(retries {r['task_retries']}) POSTs {r['submits']} reads/SKU {r['per_sku']['status_reads']:.1f} "
        f"load {r['loadavg_before'][0]:.2f}->{r['loadavg_after'][0]:.2f}"
    )


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| SKUs | variant | night | state | edited / reused / failed | wall s | gateway floor s "
        "| wall / floor | summarise s | worker-slot-s per SKU | Airflow CPU-s per SKU | task starts "
        "| retries | POSTs | status reads per SKU "
        "| trigger kwargs max / mean bytes | load 1 min before / after |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        ratio = "-" if r["wall_over_floor"] is None else f"{r['wall_over_floor']:.2f}"
        rows.append(
            f"| {r['skus']} | {r['variant']} | {r['night']} | {r['state']} "
            f"| {r['edited']} / {r['reused']} / {r['failed']} | {r['wall_seconds']:.0f} "
            f"| {r['gateway_floor_seconds']:.0f} | {ratio} | {_summarise_seconds(r)} "
            f"| {r['per_sku']['worker_slot_seconds']:.3f} | {r['per_sku']['airflow_cpu_seconds']:.3f} "
            f"| {r['task_starts']} | {r['task_retries']} | {r['submits']} "
            f"| {r['per_sku']['status_reads']:.2f} | {r['trigger_kwargs_max_bytes']} / "
            f"{r['trigger_kwargs_mean_bytes']} | {r['loadavg_before'][0]:.2f} / {r['loadavg_after'][0]:.2f} |"
        )
    return "\n".join(rows)


def cpu_table(results: list[dict[str, Any]]) -> str:
    servers = [
        name for name in ("redis", "seaweedfs") if any(name in r["cpu_seconds_by_part"] for r in results)
    ]
    parts = (*AIRFLOW_PARTS, "postgres", *servers, "emulator")
    rows = [
        "| SKUs | variant | night | " + " | ".join(parts) + " |",
        "|---:|---|---|" + "---:|" * len(parts),
    ]
    for r in results:
        split = r["cpu_seconds_by_part"]
        cells = " | ".join(f"{split.get(part, 0.0):.1f}" for part in parts)
        rows.append(f"| {r['skus']} | {r['variant']} | {r['night']} | {cells} |")
    return "\n".join(rows)


def _csv_ints(value: str) -> list[int]:
    sizes = [int(v) for v in value.split(",") if v]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be positive whole numbers, comma-separated, got {value!r}")
    return sizes


def _variants(value: str) -> list[str]:
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in VARIANTS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"must be some of {', '.join(VARIANTS)}, got {value!r}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--skus", type=_csv_ints, default=[1000], help="catalogue sizes, e.g. 1000,10000")
    parser.add_argument("--variants", type=_variants, default=list(VARIANTS), help="batch,per-sku")
    parser.add_argument(
        "--nights", type=int, choices=(1, 2, 3), default=3, help="batch nights: first, unchanged, 1%% changed"
    )
    parser.add_argument(
        "--per-sku-max", type=int, default=1000, help="largest size the per-SKU variant runs at"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="items per batch task")
    parser.add_argument(
        "--concurrent-batches", type=int, default=4, help="batch tasks at the gateway at once"
    )
    parser.add_argument("--job-seconds", type=float, default=20.0, help="how long each emulated job runs")
    parser.add_argument(
        "--max-concurrent-jobs", type=int, default=500, help="the gateway's unfinished-job limit"
    )
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between status reads")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="each batch's max_in_flight (default: the gateway's limit // batches at once); more makes "
        "batches overlap at the gateway",
    )
    parser.add_argument(
        "--parallelism", type=int, default=8, help="worker slots (Celery: shared among the workers)"
    )
    parser.add_argument("--triggerers", type=int, default=2)
    parser.add_argument(
        "--deployment",
        choices=DEPLOYMENTS,
        default="local",
        help="local: LocalExecutor, outputs on disk; celery-s3: CeleryExecutor, Redis, outputs on S3",
    )
    parser.add_argument("--celery-workers", type=int, default=2, help="Celery workers (celery-s3)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--limit", type=float, default=1500.0, help="seconds allowed per run")
    parser.add_argument("--work", type=Path, help="where catalogues, outputs and AIRFLOW_HOMEs go")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.concurrent_batches < 1 or args.max_concurrent_jobs < 1:
        parser.error("--batch-size, --concurrent-batches and --max-concurrent-jobs must be at least 1")
    if args.poll_interval < 1 and "batch" in args.variants:
        parser.error("--poll-interval must be at least 1 for the batch variant (the example's param minimum)")
    if args.deployment == "celery-s3" and (args.database != "postgres" or args.variants != ["batch"]):
        parser.error("--deployment celery-s3 runs the batch variant on PostgreSQL only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Absolute: the Airflow processes run in their own home, and the example resolves its output_root.
    work = (args.work or Path(tempfile.mkdtemp(prefix="firered-bench-catalogue-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        for size in args.skus:
            variants = [v for v in args.variants if v == "batch" or size <= args.per_sku_max]
            size_args = argparse.Namespace(**{**vars(args), "variants": variants})
            results.extend(run_size(size, size_args, work))
            if args.json:  # written after every size: a later size that overruns loses nothing
                args.json.write_text(json.dumps(results, indent=2))
    finally:
        print()
        print(
            f"jobs of {args.job_seconds:g} s, gateway limit {args.max_concurrent_jobs} unfinished jobs, "
            f"poll every {args.poll_interval:g} s, batches of {args.batch_size}, {args.parallelism} worker "
            f"slots, {args.triggerers} triggerer(s) on {args.database}"
        )
        print(table(results))
        print()
        print("CPU seconds by process")
        print(cpu_table(results))
    return 0 if results and all(r["state"] == "success" and not r["problems"] for r in results) else 1


if __name__ == "__main__":
    # `kill` or a test's timeout: unwind through the finally blocks so every server it started stops.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    sys.exit(main())
