"""
Status requests per second the emulator serves on one core.

The emulator runs in its own process pinned to one CPU; the load comes from this process (another
CPU where there is one) over loopback with a bounded number of requests.

    python benchmarks/emulator_throughput.py --requests 20000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time

import aiohttp
import requests


def start_emulator(cpu: int) -> tuple[subprocess.Popen[str], dict[str, object]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_firered.emulator",
            "--port",
            "0",
            "--queued-seconds",
            "0",
            "--processing-seconds",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {cpu})
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


async def load(url: str, total: int, concurrency: int) -> float:
    headers = {"Ocp-Apim-Subscription-Key": "bench"}
    done = 0
    async with aiohttp.ClientSession(headers=headers) as session:

        async def worker(count: int) -> None:
            nonlocal done
            for _ in range(count):
                async with session.get(url) as response:
                    await response.read()
                    assert response.status == 200, response.status
                done += 1

        per_worker = total // concurrency
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(per_worker) for _ in range(concurrency))), 300)
        return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    process, info = start_emulator(cpus[0])
    if hasattr(os, "sched_setaffinity") and len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus[1:]))
    try:
        gateway = str(info["gateway_url"])
        body = {"prompt": "bench", "image_urls": list(info["sample_images"])[:1]}  # type: ignore[call-overload]
        submitted = requests.post(
            gateway + "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request",
            json=body,
            headers={"Ocp-Apim-Subscription-Key": "bench"},
            timeout=10,
        ).json()
        url = f"{gateway}/v2/requests/status/{submitted['request_id']}"
        asyncio.run(load(url, 500, 8))  # warm-up
        rate = asyncio.run(load(url, args.requests, args.concurrency))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    print(
        json.dumps(
            {
                "status_requests_per_second_one_core": round(rate),
                "requests": args.requests,
                "concurrency": args.concurrency,
                "python": platform.python_version(),
                "aiohttp": aiohttp.__version__,
                "cpus": len(cpus),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
