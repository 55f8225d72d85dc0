"""
B. What K edits cost a real Airflow: the same edits through scheduler + triggerer + LocalExecutor,
three ways (benchmarks/dags/firered_bench_routes.py): the deferrable FireRedEditOperator, the same
operator with ``deferrable=False``, and HttpOperator + HttpSensor(``reschedule``, JSON check).

One deployment (api-server, scheduler, dag-processor, triggerer on SQLite:
``firered_devtools.deployment``, as in the end-to-end tests) runs the three DAGs one
after the other against the emulator. For each run: worker-slot-seconds (LocalExecutor
workers busy with a task, sampled every 0.2 s), CPU seconds of every Airflow process (their own and
their reaped children's, read from /proc), wall time from trigger to the run's end, and the status
requests the emulator answered.

    python benchmarks/worker_cost.py --edits 20 --job-seconds 30 --poll-interval 5 --parallelism 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from firered_devtools.deployment import AirflowDeployment, start_emulator
from firered_devtools.processes import descendants

#: This repository (the benchmark DAGs are in ``benchmarks/dags``).
ROOT = Path(__file__).resolve().parents[1]

ROUTES = ("bench_deferrable", "bench_blocking", "bench_generic")
KEY = "benchmark-key"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and of the children they have reaped."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone since it was listed: its time is in its parent's reaped-children time
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def airflow_pids(deployment: AirflowDeployment) -> list[int]:
    roots = [p.pid for p in deployment.processes if p.name != "emulator" and p.running()]
    return [pid for root in roots for pid in (root, *descendants(root))]


class SlotSampler(threading.Thread):
    """Integrates the number of busy LocalExecutor workers over time."""

    def __init__(self, deployment: AirflowDeployment, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.deployment, self.period = deployment, period
        self.slot_seconds = 0.0
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(self.period):
            titles = self.deployment.titles()
            workers = {pid for pid, title in titles.items() if "LocalExecutor" in title}
            # A worker's forked task process inherits its title: count the workers only.
            busy = sum("<idle>" not in titles[pid] and parent_pid(pid) not in workers for pid in workers)
            now = time.monotonic()
            self.slot_seconds += busy * (now - last)
            self.peak = max(self.peak, busy)
            last = now


def run_route(
    deployment: AirflowDeployment, emulator: Any, dag_id: str, edits: int, limit: float
) -> dict[str, Any]:
    emulator.control("POST", "reset")
    deadline = time.monotonic() + limit
    deployment.wait_parsed(dag_id, deadline)
    sampler = SlotSampler(deployment)
    cpu = cpu_seconds(airflow_pids(deployment))
    started = time.monotonic()
    sampler.start()
    run_id = f"bench_{dag_id}"
    deployment.trigger(dag_id, run_id)
    state = deployment.wait_run(run_id, deadline)
    wall = time.monotonic() - started
    sampler.stopped.set()
    sampler.join(5)
    cpu = cpu_seconds(airflow_pids(deployment)) - cpu
    records = emulator.control("GET", "requests")
    polls = sum(1 for r in records if r["method"] == "GET" and r["path"].startswith("/v2/requests/status/"))
    submits = sum(1 for r in records if r["method"] == "POST" and r["status"] == 202)
    (retries,) = deployment.query(
        "SELECT COALESCE(SUM(try_number - 1), 0) FROM task_instance WHERE dag_id = ? AND run_id = ?",
        (dag_id, run_id),
    )[0]
    return {
        "route": dag_id,
        "task_retries": int(retries),
        "state": state,
        "edits": edits,
        "submissions": submits,
        "status_requests": polls,
        "worker_slot_seconds": sampler.slot_seconds,
        "peak_busy_slots": sampler.peak,
        "airflow_cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| route | state | worker-slot-s | peak busy slots | Airflow CPU s | wall s | submits | status reads "
        "| task retries |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r['route']} | {r['state']} | {r['worker_slot_seconds']:.0f} | {r['peak_busy_slots']} "
            f"| {r['airflow_cpu_seconds']:.0f} | {r['wall_seconds']:.0f} | {r['submissions']} "
            f"| {r['status_requests']} | {r['task_retries']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--edits", type=int, default=20, help="K: edits per route")
    parser.add_argument("--job-seconds", type=float, default=30.0, help="how long each job runs")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between status reads")
    parser.add_argument("--parallelism", type=int, default=8, help="LocalExecutor worker slots")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--limit", type=float, default=900.0, help="seconds allowed per route")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="firered-bench-airflow-"))
    deployment = AirflowDeployment(
        home=home, dags_folder=ROOT / "benchmarks" / "dags", parallelism=args.parallelism
    )
    results = []
    try:
        emulator = start_emulator(
            deployment, "--queued-seconds", "0", "--processing-seconds", str(args.job_seconds), "--no-render"
        )
        port = int(emulator.gateway_url.rsplit(":", 1)[1])
        deployment.env.update(
            {
                "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                    {"conn_type": "firered", "host": emulator.gateway_url, "password": KEY}
                ),
                "AIRFLOW_CONN_FIRERED_HTTP": json.dumps(
                    {
                        "conn_type": "http",
                        "host": "127.0.0.1",
                        "port": port,
                        "extra": {"Ocp-Apim-Subscription-Key": KEY},
                    }
                ),
                "AIRFLOW_VAR_FIRERED_IMAGE": emulator.sample_images[0],
                "FIRERED_BENCH_EDITS": str(args.edits),
                "FIRERED_BENCH_POLL": str(args.poll_interval),
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(args.edits),
            }
        )
        deployment.cli("db", "migrate")
        deployment.start_all()
        deployment.wait_healthy(timeout=180)
        for dag_id in args.routes.split(","):
            result = run_route(deployment, emulator, dag_id, args.edits, args.limit)
            results.append(result)
            print(
                f"{dag_id:<17} {result['state']:<8} {result['worker_slot_seconds']:6.0f} slot-s "
                f"{result['airflow_cpu_seconds']:6.0f} CPU-s {result['wall_seconds']:5.0f} s wall "
                f"{result['status_requests']} status reads",
                flush=True,
            )
    finally:
        left = deployment.stop_all()
        if left:
            print(f"processes left running: {left}", file=sys.stderr)
    print()
    print(
        f"K={args.edits} edits of {args.job_seconds:g} s, poll every {args.poll_interval:g} s, "
        f"{args.parallelism} worker slots"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results and all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    # `kill` or a test's timeout: unwind through the finally blocks so every server it started stops.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    sys.exit(main())
