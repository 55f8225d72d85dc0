"""
A. What waiting costs: N status waits in one event loop, three ways, on the same jobs and timings.

- ``floor``: a bare aiohttp loop with one session (GET, parse, sleep): the least any waiter can do;
- ``firered``: ``FireRedStatusTrigger``, as the triggerer runs it;
- ``generic``: ``HttpSensorTrigger`` from apache-airflow-providers-http. It fires on the first answer
  that is not a 404, so the emulator answers 404 while a job is unfinished (fault ``pending_status``),
  which is the only way that trigger can wait for a job at all.

The emulator runs in its own process (pinned to the first CPU), each contender in a fresh process of
its own (pinned to the others), one after the other. The N waits make the same number of status reads
per second at every N (``--rate``; the poll interval is N / rate, at least 1 s) and each job runs
``--polls-per-job`` intervals. A contender starts its waits at random points of the first interval,
as a triggerer picks them up, and reports its CPU time from the first wait to the last event, its
peak RSS above the idle process, its peak of open files (sockets included: FireRed's shared pool
is bounded, see ``loop_shared.POOL_LIMIT``), and when each event came; the emulator's record gives
the status reads. Each N runs ``--rounds`` rounds (contender order rotating) and keeps each
contender's median.

    python benchmarks/trigger_cost.py                      # N = 100, 1,000, 5,000 (about 4 minutes)
    python benchmarks/trigger_cost.py --sizes 1000 --contenders firered --profile /tmp/profiles
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

KEY = "benchmark-key"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
SUBMIT_PATH = "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request"
STATUS_PATH = "/v2/requests/status/"
TERMINAL = ("COMPLETED", "FAILED", "ERROR")
CONTENDERS = ("floor", "firered", "generic")


# -- contender side: one process per (contender, N) -------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_files() -> int:
    """Open file descriptors of this process (sockets included): what ``ulimit -n`` bounds."""
    return len(os.listdir("/proc/self/fd"))


async def floor_waits(gateway: str, poll: float) -> Callable[[str], Awaitable[bool]]:
    session = aiohttp.ClientSession(headers={KEY_HEADER: KEY})

    async def wait(request_id: str) -> bool:
        while True:
            async with session.get(gateway + STATUS_PATH + request_id) as response:
                body = await response.json()
            if body["status"] in TERMINAL:
                return bool(body["status"] == "COMPLETED")
            await asyncio.sleep(poll)

    return wait


# Every waiter takes the gateway's URL; this one reaches it through the firered_default connection.
async def firered_waits(gateway: str, poll: float) -> Callable[[str], Awaitable[bool]]:  # noqa: ARG001
    from airflow_provider_firered.triggers.firered import FireRedStatusTrigger

    async def wait(request_id: str) -> bool:
        trigger = FireRedStatusTrigger(
            request_id, poll_interval=poll, deadline=time.time() + 600, timeout=600
        )
        events = [event.payload async for event in trigger.run()]
        return bool(events[0]["status"] == "success")

    return wait


# Every waiter takes the gateway's URL; this one reaches it through the firered_http connection.
async def generic_waits(gateway: str, poll: float) -> Callable[[str], Awaitable[bool]]:  # noqa: ARG001
    from airflow.providers.http.triggers.http import HttpSensorTrigger

    async def wait(request_id: str) -> bool:
        trigger = HttpSensorTrigger(
            endpoint=STATUS_PATH.lstrip("/") + request_id,
            http_conn_id="firered_http",
            method="GET",
            poke_interval=poll,
        )
        events = [event.payload async for event in trigger.run()]
        return events == [True]

    return wait


WAITERS = {"floor": floor_waits, "firered": firered_waits, "generic": generic_waits}


async def contend(
    name: str, gateway: str, poll: float, limit: float, report: TextIO, profile: Path | None
) -> dict[str, Any]:
    wait = await WAITERS[name](gateway, poll)
    warm = json.loads(sys.stdin.readline())  # one job, waited for before measuring: imports, first calls
    await asyncio.wait_for(wait(warm[0]), limit)
    print("ready", file=report, flush=True)
    request_ids: list[str] = json.loads(sys.stdin.readline())
    gc.collect()
    idle_rss = peak_rss = rss_bytes()
    peak_fds = open_files()
    events: dict[str, float] = {}
    succeeded = 0

    # A triggerer picks waits up over time: each starts at a random point of the first interval
    # (seeded: every waiter gets the same starts), unrelated to when its job completes.
    starts = random.Random(len(request_ids)).sample(range(len(request_ids)), len(request_ids))

    async def one(index: int, request_id: str) -> None:
        nonlocal succeeded
        await asyncio.sleep(starts[index] * poll / len(request_ids))
        ok = await wait(request_id)
        succeeded += ok
        events[request_id] = time.time()

    async def sample_rss() -> None:
        nonlocal peak_rss, peak_fds
        while True:
            peak_rss = max(peak_rss, rss_bytes())
            peak_fds = max(peak_fds, open_files())
            await asyncio.sleep(0.2)

    sampler = asyncio.ensure_future(sample_rss())
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler  # where a contender's CPU goes (--profile DIR)

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    cpu = time.process_time()
    await asyncio.wait_for(asyncio.gather(*(one(i, r) for i, r in enumerate(request_ids))), limit)
    cpu = time.process_time() - cpu
    if profiler is not None and profile is not None:
        profiler.stop()
        text = profiler.output_text(unicode=True, show_all=False)
        await asyncio.to_thread(profile.write_text, text)
    sampler.cancel()
    peak_rss = max(peak_rss, rss_bytes())
    return {
        "cpu_seconds": cpu,
        "idle_rss": idle_rss,
        "peak_rss": peak_rss,
        "peak_fds": peak_fds,
        "succeeded": succeeded,
        "events": events,
    }


def contender_main(args: argparse.Namespace) -> int:
    # Talk to the orchestrator on our own copy of stdout; logs (Airflow writes some to stdout) go
    # where stderr goes, as a triggerer's go to its log files.
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if args.pool_limit is not None:
        from airflow_provider_firered import loop_shared

        loop_shared.POOL_LIMIT = args.pool_limit
    result = asyncio.run(
        contend(args.contender, args.gateway, args.poll_interval, args.limit, report, args.profile_to)
    )
    print(json.dumps(result), file=report, flush=True)
    return 0


# -- orchestrator side -----------------------------------------------------------------------------


class BenchEmulator:
    """The emulator CLI in its own process, pinned to one CPU, with cheap (unrendered) jobs."""

    def __init__(self, cpu: int | None) -> None:
        # Imported here: the contender processes run this file too and must not load the emulator.
        from airflow_provider_firered.emulator.process import start_emulator_process

        self.process = start_emulator_process(
            "--queued-seconds", "0", "--processing-seconds", "1", "--no-render", "--job-ttl", "3600", cpu=cpu
        )
        self.gateway: str = self.process.gateway_url
        self.image: str = self.process.sample_images[0]
        self.job_seconds = 1.0  # set per run by prepare()

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the admin API; a record of thousands of requests may take a while to serialize."""
        return self.process.control(method, path, body, timeout=120)

    def prepare(self, contender: str, job_seconds: float) -> None:
        """Forget earlier jobs and records; set the job length and the generic waiter's 404s."""
        self.admin("POST", "reset")
        self.admin("POST", "timings", {"processing_seconds": job_seconds})
        self.job_seconds = job_seconds
        if contender == "generic":
            fault = {"target": "status", "kind": "pending_status", "status_code": 404, "count": None}
            self.admin("POST", "faults", fault)

    async def submit(self, count: int, concurrency: int = 32) -> dict[str, float]:
        """Submit ``count`` jobs; return each request id with the time its job completes."""
        done_at: dict[str, float] = {}
        body = {"prompt": "benchmark", "image_urls": [self.image], "output_format": "png"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers={KEY_HEADER: KEY}, timeout=timeout) as session:

            async def submitter(share: int) -> None:
                for _ in range(share):
                    async with session.post(self.gateway + SUBMIT_PATH, json=body) as response:
                        assert response.status == 202, response.status
                        answer = await response.json()
                    done_at[answer["request_id"]] = time.time() + self.job_seconds

            shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
            await asyncio.gather(*(submitter(s) for s in shares if s))
        return done_at

    def status_polls(self) -> int:
        records = self.admin("GET", "requests")
        return sum(1 for r in records if r["method"] == "GET" and r["path"].startswith(STATUS_PATH))

    def stop(self) -> None:
        self.process.stop(grace=30)


def run_contender(
    emulator: BenchEmulator,
    name: str,
    size: int,
    args: argparse.Namespace,
    cpus: set[int] | None,
    log: Path,
) -> dict[str, Any]:
    port = emulator.gateway.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
            {"conn_type": "firered", "host": emulator.gateway, "password": KEY}
        ),
        # The generic route keeps the key in the connection's extra, sent as a header.
        "AIRFLOW_CONN_FIRERED_HTTP": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": int(port), "extra": {KEY_HEADER: KEY}}
        ),
    }
    poll = max(1.0, size / args.rate)  # the same request rate at every N
    job_seconds = args.polls_per_job * poll
    limit = job_seconds + 10 * poll + 60
    argv = [sys.executable, __file__, "--contender", name, "--gateway", emulator.gateway]
    argv += ["--poll-interval", str(poll), "--limit", str(limit)]
    if args.pool_limit is not None:
        argv += ["--pool-limit", str(args.pool_limit)]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        argv += ["--profile-to", str(args.profile / f"{name}-{size}.txt")]
    with log.open("a") as stderr:
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        try:
            if cpus:
                os.sched_setaffinity(process.pid, cpus)
            assert process.stdin is not None
            assert process.stdout is not None
            emulator.prepare(name, job_seconds=0.2)
            warm = asyncio.run(emulator.submit(1))
            process.stdin.write(json.dumps(list(warm)) + "\n")
            process.stdin.flush()
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{name} did not start; see {log}")
            emulator.prepare(name, job_seconds)  # count only the measured requests
            done_at = asyncio.run(emulator.submit(size))
            process.stdin.write(json.dumps(list(done_at)) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    if not line:
        raise RuntimeError(f"{name} with N={size} failed; see {log}")
    result = json.loads(line)
    polls = emulator.status_polls()
    latencies = sorted(result["events"][r] - done for r, done in done_at.items())
    return {
        "contender": name,
        "n": size,
        "succeeded": result["succeeded"],
        "polls": polls,
        "cpu_seconds": result["cpu_seconds"],
        "cpu_per_poll_us": result["cpu_seconds"] / polls * 1e6,
        "rss_per_wait_kib": (result["peak_rss"] - result["idle_rss"]) / size / 1024,
        "peak_rss_mib": result["peak_rss"] / 2**20,
        "peak_open_files": result["peak_fds"],
        "polls_per_job": polls / size,
        "latency_p50": statistics.median(latencies),
        "latency_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "latency_deciles": [round(latencies[len(latencies) * i // 10], 3) for i in range(10)],
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| N | waiter | CPU µs / poll | x floor | KiB RSS / wait | peak RSS MiB | peak open files "
        "| polls / job | latency p50 s | p95 s | ok |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floors = {r["n"]: r for r in results if r["contender"] == "floor"}
    for r in results:
        ratio = r["cpu_per_poll_us"] / floors[r["n"]]["cpu_per_poll_us"] if r["n"] in floors else float("nan")
        rows.append(
            f"| {r['n']:,} | {r['contender']} | {r['cpu_per_poll_us']:,.0f} | {ratio:.2f} "
            f"| {r['rss_per_wait_kib']:,.1f} | {r['peak_rss_mib']:,.0f} | {r['peak_open_files']:,} "
            f"| {r['polls_per_job']:.2f} "
            f"| {r['latency_p50']:.2f} | {r['latency_p95']:.2f} | {r['succeeded']:,}/{r['n']:,} |"
        )
    return "\n".join(rows)


def pool_limit() -> int:
    """The bound on the shared session's pool that the ``firered`` contender runs with."""
    from airflow_provider_firered.loop_shared import POOL_LIMIT

    return POOL_LIMIT


def headline(results: list[dict[str, Any]]) -> str:
    lines = []
    by = {(r["n"], r["contender"]): r for r in results}
    for size in sorted({r["n"] for r in results}):
        ours, floor, generic = by.get((size, "firered")), by.get((size, "floor")), by.get((size, "generic"))
        if ours and floor and generic:
            lines.append(
                f"N={size:,}: FireRedStatusTrigger {ours['cpu_per_poll_us'] / floor['cpu_per_poll_us']:.2f}x "
                f"the floor's CPU per poll; HttpSensorTrigger "
                f"{generic['cpu_per_poll_us'] / ours['cpu_per_poll_us']:.2f}x ours"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="comma-separated numbers of waits")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="status reads per second the N waits make together"
    )
    parser.add_argument("--polls-per-job", type=int, default=4, help="a job runs this many poll intervals")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender per N (median kept)")
    parser.add_argument(
        "--one-round-from", type=int, default=1000, help="from this N on, one round (long, steady runs)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--pool-limit",
        type=int,
        help="run FireRed's shared session with this pool bound instead of the provider's (0: unbounded)",
    )
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile per run into this folder")
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        return contender_main(args)

    if args.profile and importlib.util.find_spec("pyinstrument") is None:
        parser.error("--profile needs pyinstrument (pip install pyinstrument)")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    emulator_cpu, contender_cpus = (cpus[0], set(cpus[1:])) if len(cpus) > 1 else (None, None)
    emulator = BenchEmulator(emulator_cpu)
    results = []
    log = Path(tempfile.mkdtemp(prefix="firered-bench-")) / "contenders.log"
    contenders = args.contenders.split(",")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
            for round_index in range(args.rounds if size < args.one_round_from else 1):
                # Each round starts with another contender: a slow spell of the machine hits all.
                shift = round_index % len(contenders)
                for name in contenders[shift:] + contenders[:shift]:
                    started = time.monotonic()
                    result = run_contender(emulator, name, size, args, contender_cpus, log)
                    rounds[name].append(result)
                    print(
                        f"N={size:>5} {name:<8} {result['cpu_per_poll_us']:8.0f} µs/poll "
                        f"{result['rss_per_wait_kib']:7.1f} KiB/wait {result['peak_open_files']:5} files "
                        f"{result['polls_per_job']:.2f} polls/job "
                        f"p50 {result['latency_p50']:.2f} s p95 {result['latency_p95']:.2f} s "
                        f"ok {result['succeeded']}/{size} ({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
            for name in contenders:  # the round with the median CPU per poll stands for the contender
                ranked = sorted(rounds[name], key=lambda r: float(r["cpu_per_poll_us"]))
                results.append({**ranked[len(ranked) // 2], "rounds": len(ranked)})
    finally:
        emulator.stop()
    print()
    bound = pool_limit() if args.pool_limit is None else args.pool_limit
    pool = f"at most {bound} sockets" if bound else "unbounded"
    print(f"FireRed's shared aiohttp pool per event loop: {pool}")
    print(table(results))
    print()
    print(headline(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["succeeded"] == r["n"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
