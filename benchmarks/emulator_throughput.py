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
import sys
import time

import aiohttp
import requests

from airflow_provider_firered.emulator.process import start_emulator_process


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
    emulator = start_emulator_process("--queued-seconds", "0", "--processing-seconds", "0.05", cpu=cpus[0])
    if hasattr(os, "sched_setaffinity") and len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus[1:]))
    with emulator:
        gateway = emulator.gateway_url
        body = {"prompt": "bench", "image_urls": emulator.sample_images[:1]}
        submitted = requests.post(
            gateway + "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request",
            json=body,
            headers={"Ocp-Apim-Subscription-Key": "bench"},
            timeout=10,
        ).json()
        url = f"{gateway}/v2/requests/status/{submitted['request_id']}"
        asyncio.run(load(url, 500, 8))  # warm-up
        rate = asyncio.run(load(url, args.requests, args.concurrency))
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
    # `kill` or a test's timeout: unwind through the finally blocks so every server it started stops.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    sys.exit(main())
