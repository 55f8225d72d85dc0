"""
A. What waiting costs: N status waits in one event loop, four ways, on the same jobs and timings.

- ``grid-floor``: a bare aiohttp loop with one session (GET, parse, sleep) that wakes on the same grid
  as ``FireRedStatusTrigger`` (it calls the trigger module's ``grid_point``): the least any waiter
  can do, and the floor every ratio is taken against;
- ``firered``: ``FireRedStatusTrigger``, as the triggerer runs it;
- ``generic``: ``HttpSensorTrigger`` from apache-airflow-providers-http. It fires on the first answer
  that is not a 404, so the emulator answers 404 while a job is unfinished (fault ``pending_status``),
  which is the only way that trigger can wait for a job at all;
- ``floor``: the same bare loop waking once per poll (no grid), kept as a reference: a process woken
  once per poll pays more per poll than one whose polls share wake-ups.

The emulator runs in its own process (pinned to the first CPU), each contender in a fresh process of
its own (pinned to the others), one after the other. The N waits make the same number of status reads
per second at every N (``--rate``; the poll interval is N / rate, at least 1 s), or all poll every
``--poll`` seconds. Each job runs a random time (seeded: the same durations for every contender),
uniform between ``--polls-per-job`` - 0.5 and + 0.5 intervals, so no job ends on a whole number of
intervals. A contender starts its waits at random points of the first interval, as a triggerer picks
them up, and reports its CPU time from the first wait to the last event, its peak RSS above the idle
process, its peak of open files (sockets included: FireRed's shared pool is bounded, see
``loop_shared.POOL_LIMIT``), and when each event came; the emulator's record gives the status reads,
and its own CPU time over the same window shows it kept up. Each N runs ``--rounds`` rounds
(contender order rotating; one round from ``--one-round-from`` on) and keeps each contender's median
round; "x grid floor" is the median, over the rounds, of its CPU per poll over the grid floor's in
the same round (run back to back, so a slow spell of a shared machine weighs on both).

    python benchmarks/trigger_cost.py     # make bench: N = 100, 1,000 at 1 s polls, 4 waiters (3 min)
    # The recorded runs (docs/benchmarks.md), three rounds at every N:
    python benchmarks/trigger_cost.py --sizes 1000 --rounds 3 --one-round-from 0
    python benchmarks/trigger_cost.py --sizes 3000 --rate 3000 --rounds 3 --one-round-from 0 \
        --contenders grid-floor,firered            # 3,000 reads a second: as many as one core can make
    python benchmarks/trigger_cost.py --sizes 100,1000,10000 --poll 10 --polls-per-job 2 \
        --rounds 3 --one-round-from 0 --contenders grid-floor,firered    # 10 s polls: is the cost flat?
    # Where the CPU goes (a sampling profile of each run, standard library only):
    python benchmarks/trigger_cost.py --sizes 1000 --polls-per-job 15 --contenders grid-floor,firered \
        --rounds 1 --profile /tmp/profiles
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import math
import os
import random
import signal
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
    from types import FrameType

KEY = "benchmark-key"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
SUBMIT_PATH = "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request"
STATUS_PATH = "/v2/requests/status/"
TERMINAL = ("COMPLETED", "FAILED", "ERROR")
CONTENDERS = ("grid-floor", "firered", "generic", "floor")
#: The contender every ratio is taken against.
FLOOR = "grid-floor"
#: Distinct job durations drawn per run: each is set on the emulator, then its jobs are submitted.
DURATION_DRAWS = 100


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


async def grid_floor_waits(gateway: str, poll: float) -> Callable[[str], Awaitable[bool]]:
    """The bare loop, planned and woken exactly as the trigger plans and wakes its polls."""
    from airflow_provider_firered.triggers.polling import grid_point

    session = aiohttp.ClientSession(headers={KEY_HEADER: KEY})
    loop = asyncio.get_running_loop()

    async def wait(request_id: str) -> bool:
        planned = loop.time()
        while True:
            async with session.get(gateway + STATUS_PATH + request_id) as response:
                body = await response.json()
            if body["status"] in TERMINAL:
                return bool(body["status"] == "COMPLETED")
            planned += poll
            now = loop.time()
            if planned <= now:
                planned = now + poll
            await asyncio.sleep(max(0.0, grid_point(planned, poll) - now))

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


WAITERS = {
    "grid-floor": grid_floor_waits,
    "floor": floor_waits,
    "firered": firered_waits,
    "generic": generic_waits,
}


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
    began: dict[str, float] = {}
    succeeded = 0

    # A triggerer picks waits up over time: each starts at a random point of the first interval
    # (seeded: every waiter gets the same starts), unrelated to when its job completes.
    starts = random.Random(len(request_ids)).sample(range(len(request_ids)), len(request_ids))

    async def one(index: int, request_id: str) -> None:
        nonlocal succeeded
        await asyncio.sleep(starts[index] * poll / len(request_ids))
        began[request_id] = time.time()
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
    profiler = Sampler() if profile is not None else None  # where the CPU goes (--profile DIR)
    if profiler is not None:
        profiler.start()
    cpu = time.process_time()
    await asyncio.wait_for(asyncio.gather(*(one(i, r) for i, r in enumerate(request_ids))), limit)
    cpu = time.process_time() - cpu
    if profiler is not None and profile is not None:
        profiler.stop()
        await asyncio.to_thread(profile.write_text, profiler.report(len(request_ids), cpu))
    sampler.cancel()
    peak_rss = max(peak_rss, rss_bytes())
    return {
        "cpu_seconds": cpu,
        "idle_rss": idle_rss,
        "peak_rss": peak_rss,
        "peak_fds": peak_fds,
        "succeeded": succeeded,
        "events": events,
        "began": began,
    }


class Sampler:
    """
    A sampling profiler from the standard library: every millisecond of the process's CPU time
    (``ITIMER_PROF``; sleeping in ``epoll`` takes no samples), note the Python stack that runs. Its
    cost is one stack walk per sample, so the profiled run's CPU stays close to an unprofiled one.

    :param interval: CPU seconds between samples.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.samples = 0
        self.own: collections.Counter[str] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()
        self.areas: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def _sample(self, _signum: int, frame: FrameType | None) -> None:
        self.samples += 1
        seen: set[str] = set()
        first = True
        while frame is not None:
            code = frame.f_code
            name = f"{_area(code.co_filename)}:{code.co_name}:{code.co_firstlineno}"
            if first:
                self.own[name] += 1
                self.areas[_area(code.co_filename)] += 1
                first = False
            if name not in seen:
                seen.add(name)
                self.inclusive[name] += 1
            frame = frame.f_back

    def report(self, waits: int, cpu: float) -> str:
        """Where the samples fell: by area (package or module), by function's own time, inclusive."""
        total = max(1, self.samples)
        lines = [
            f"{self.samples} samples of {self.interval * 1e3:g} ms CPU; {waits} waits; {cpu:.2f} s CPU",
            "",
        ]
        for title, counter, top in (
            ("own time by area", self.areas, 25),
            ("own time by function", self.own, 40),
            ("inclusive time by function", self.inclusive, 60),
        ):
            lines.append(f"-- {title}")
            lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)]
            lines.append("")
        return "\n".join(lines)


def _area(filename: str) -> str:
    """Where a frame's code lives: ``aiohttp``, ``asyncio``, ``airflow_provider_firered/gateway/...``."""
    parts = Path(filename).parts
    for marker in ("site-packages", "airflow_provider_firered"):
        if marker in parts:
            index = parts.index(marker)
            rest = parts[index + 1 :] if marker == "site-packages" else parts[index:]
            if marker == "airflow_provider_firered":
                return "/".join(rest)
            return rest[0].removesuffix(".py") if rest else filename
    if "python3" in filename and len(parts) >= 2:  # the standard library: its module or package
        return parts[-2] if parts[-2] in ("asyncio", "json", "logging", "email") else parts[-1]
    return parts[-1] if parts else filename


def contender_main(args: argparse.Namespace) -> int:
    # Talk to the orchestrator on our own copy of stdout; logs (Airflow writes some to stdout) go
    # where stderr goes, as a triggerer's go to its log files.
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if args.pool_limit is not None:
        from airflow_provider_firered.utils import loop_shared

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

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the admin API; a record of thousands of requests may take a while to serialize."""
        return self.process.control(method, path, body, timeout=120)

    def prepare(self, contender: str) -> None:
        """Forget earlier jobs and records; set the generic waiter's 404s."""
        self.admin("POST", "reset")
        if contender == "generic":
            fault = {"target": "status", "kind": "pending_status", "status_code": 404, "count": None}
            self.admin("POST", "faults", fault)

    def cpu_seconds(self) -> float:
        """The emulator process's CPU time so far (user and system)."""
        with open(f"/proc/{self.process.popen.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def submit(self, durations: list[float], concurrency: int = 32) -> dict[str, float]:
        """
        Submit one job per duration (each runs that long); return each request id with the time its
        job completes. Equal durations are submitted together, after setting them on the emulator.
        """
        done_at: dict[str, float] = {}
        groups: dict[float, int] = {}
        for seconds in durations:
            groups[seconds] = groups.get(seconds, 0) + 1
        body = {"prompt": "benchmark", "image_urls": [self.image], "output_format": "png"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers={KEY_HEADER: KEY}, timeout=timeout) as session:

            async def submitter(share: int, seconds: float) -> None:
                for _ in range(share):
                    async with session.post(self.gateway + SUBMIT_PATH, json=body) as response:
                        assert response.status == 202, response.status
                        answer = await response.json()
                    done_at[answer["request_id"]] = time.time() + seconds

            for seconds, count in groups.items():
                await asyncio.to_thread(self.admin, "POST", "timings", {"processing_seconds": seconds})
                width = min(concurrency, count)
                shares = [count // width + (i < count % width) for i in range(width)]
                await asyncio.gather(*(submitter(share, seconds) for share in shares))
        return done_at

    def status_polls(self) -> int:
        records = self.admin("GET", "requests")
        return sum(1 for r in records if r["method"] == "GET" and r["path"].startswith(STATUS_PATH))

    def stop(self) -> None:
        self.process.stop(grace=30)


def job_durations(size: int, poll: float, polls_per_job: float) -> list[float]:
    """
    Each job's run time, the same for every contender (seeded by N): uniform within half an interval
    of ``polls_per_job`` intervals, drawn among :data:`DURATION_DRAWS` values so that each value's jobs
    are submitted together.
    """
    rng = random.Random(f"durations-{size}")
    draws = [
        round((polls_per_job + rng.uniform(-0.5, 0.5)) * poll, 4) for _ in range(min(size, DURATION_DRAWS))
    ]
    return [draws[rng.randrange(len(draws))] for _ in range(size)]


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
    poll = args.poll or max(1.0, size / args.rate)  # the same request rate at every N, or a fixed poll
    durations = job_durations(size, poll, args.polls_per_job)
    limit = max(durations) + 10 * poll + 60
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
            emulator.prepare(name)
            warm = asyncio.run(emulator.submit([0.2]))
            process.stdin.write(json.dumps(list(warm)) + "\n")
            process.stdin.flush()
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{name} did not start; see {log}")
            emulator.prepare(name)  # count only the measured requests
            done_at = asyncio.run(emulator.submit(durations))
            emulator_cpu, started = emulator.cpu_seconds(), time.monotonic()
            process.stdin.write(json.dumps(list(done_at)) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
            emulator_cpu, wall = emulator.cpu_seconds() - emulator_cpu, time.monotonic() - started
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
    # The reads a waiter makes that reads at its start and then exactly every interval.
    least = sum(1 + max(0, math.ceil((done - result["began"][r]) / poll)) for r, done in done_at.items())
    return {
        "contender": name,
        "n": size,
        "poll_interval": poll,
        "succeeded": result["succeeded"],
        "polls": polls,
        "cpu_seconds": result["cpu_seconds"],
        "cpu_per_poll_us": result["cpu_seconds"] / polls * 1e6,
        "rss_per_wait_kib": (result["peak_rss"] - result["idle_rss"]) / size / 1024,
        "peak_rss_mib": result["peak_rss"] / 2**20,
        "peak_open_files": result["peak_fds"],
        "polls_per_job": polls / size,
        "exact_polls_per_job": least / size,
        "latency_p50": statistics.median(latencies),
        "latency_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "latency_deciles": [round(latencies[len(latencies) * i // 10], 3) for i in range(10)],
        "emulator_cpu_share": emulator_cpu / wall,
    }


def summarize(rounds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    One result per contender: its round with the median CPU per poll, with every round's CPU per
    poll and its ratio to the grid floor's in the same round (a contender and the floor run back to
    back, so a slow spell of a shared machine weighs on both); ``x_floor`` is those ratios' median.
    """
    floors = [r["cpu_per_poll_us"] for r in rounds.get(FLOOR, [])]
    results = []
    for runs in rounds.values():
        ranked = sorted(runs, key=lambda r: float(r["cpu_per_poll_us"]))
        ratios = [r["cpu_per_poll_us"] / f for r, f in zip(runs, floors, strict=False)]
        results.append(
            {
                **ranked[len(ranked) // 2],
                "rounds": len(ranked),
                "cpu_per_poll_us_rounds": [round(r["cpu_per_poll_us"], 1) for r in runs],
                "x_floor_rounds": [round(x, 3) for x in ratios],
                "x_floor": statistics.median(ratios) if ratios else float("nan"),
            }
        )
    return results


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| N | poll s | waiter | CPU µs / poll | x grid floor | KiB RSS / wait | peak RSS MiB "
        "| peak open files | polls / job | exact-interval polls / job "
        "| latency p50 s | p95 s | emulator CPU | ok |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r["x_floor"]
        rows.append(
            f"| {r['n']:,} | {r['poll_interval']:g} | {r['contender']} | {r['cpu_per_poll_us']:,.0f} "
            f"| {ratio:.2f} | {r['rss_per_wait_kib']:,.1f} | {r['peak_rss_mib']:,.0f} "
            f"| {r['peak_open_files']:,} | {r['polls_per_job']:.2f} | {r['exact_polls_per_job']:.2f} "
            f"| {r['latency_p50']:.2f} | {r['latency_p95']:.2f} | {r['emulator_cpu_share']:.0%} "
            f"| {r['succeeded']:,}/{r['n']:,} |"
        )
    return "\n".join(rows)


def pool_limit() -> int:
    """The bound on the shared session's pool that the ``firered`` contender runs with."""
    from airflow_provider_firered.utils.loop_shared import POOL_LIMIT

    return POOL_LIMIT


def headline(results: list[dict[str, Any]]) -> str:
    lines = []
    for size in sorted({r["n"] for r in results}):
        parts = [
            f"{r['contender']} {r['x_floor']:.2f}x ({' '.join(f'{x:.2f}' for x in r['x_floor_rounds'])})"
            for r in results
            if r["n"] == size and r["contender"] != FLOOR and r["x_floor_rounds"]
        ]
        if parts:
            lines.append(
                f"N={size:,}: CPU per poll against the grid floor's, round by round: " + "; ".join(parts)
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="comma-separated numbers of waits")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="status reads per second the N waits make together"
    )
    parser.add_argument(
        "--poll", type=float, help="poll every this many seconds at every N (instead of N / --rate)"
    )
    parser.add_argument(
        "--polls-per-job",
        type=float,
        default=4,
        help="a job runs this many poll intervals, give or take half of one (random, seeded)",
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender per N (median kept)")
    parser.add_argument(
        "--one-round-from",
        type=int,
        default=1000,
        help="from this N on, one round (long, steady runs); 0: every N runs --rounds rounds",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--pool-limit",
        type=int,
        help="run FireRed's shared session with this pool bound instead of the provider's (0: unbounded)",
    )
    parser.add_argument("--profile", type=Path, help="write a sampled profile per run into this folder")
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        return contender_main(args)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    emulator_cpu, contender_cpus = (cpus[0], set(cpus[1:])) if len(cpus) > 1 else (None, None)
    emulator = BenchEmulator(emulator_cpu)
    results = []
    log = Path(tempfile.mkdtemp(prefix="firered-bench-")) / "contenders.log"
    contenders = args.contenders.split(",")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
            steady = args.one_round_from and size >= args.one_round_from
            for round_index in range(1 if steady else args.rounds):
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
                        f"(exact {result['exact_polls_per_job']:.2f}) "
                        f"p50 {result['latency_p50']:.2f} s p95 {result['latency_p95']:.2f} s "
                        f"emulator {result['emulator_cpu_share']:.0%} "
                        f"ok {result['succeeded']}/{size} ({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
            results += summarize(rounds)
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
    # `kill` or a test's timeout: unwind through the finally blocks so every server it started stops.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    sys.exit(main())
