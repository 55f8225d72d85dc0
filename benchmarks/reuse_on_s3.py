"""
What reusing an unchanged item's output on S3 costs the worker: the copy step of an unchanged night.

One SeaweedFS store on loopback (``firered_devtools``) holds ``--items`` earlier outputs (PNG-signed
bytes of ``--size``), each in its item's folder as a batch writes them. The batch's own copy
(:func:`airflow_provider_firered.batch.earlier_runs.copy_outputs`, through Airflow's object storage
and s3fs) then copies every one into a new run folder, ``--threads`` at a time as a batch does, in
``--rounds`` rounds (a fresh target folder each), the items shared by ``--processes`` processes
(batches running at once, each with its own S3 client as each task process has). Reported per
round: wall time, the copying processes' CPU time, SeaweedFS's CPU time (from /proc), and the S3
operations per item (counted through the S3 client's own events), per item and in all.

    python benchmarks/reuse_on_s3.py --items 500 --threads 8 --rounds 3
    # the floor of an unchanged night's copies at 10,000 SKUs, 4 batches at once:
    python benchmarks/reuse_on_s3.py --items 10000 --processes 4 --threads 8 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import secrets
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_cost import cpu_seconds

from airflow_provider_firered.batch.earlier_runs import EarlierBatch, copy_outputs

BUCKET = "firered"
RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-00000000{:04d}"
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Item:
    """An earlier item, as a manifest entry gives it to :func:`copy_outputs`."""

    key: str
    request_id: str | None
    outputs: list[str]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _copy_chunk(
    items: list[Item], earlier_url: str, target_url: str, threads: int, max_bytes: int
) -> tuple[float, dict[str, int], int]:
    """Copy ``items`` as a batch does, ``threads`` at once; return its CPU, operations and copies."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    root = ObjectStoragePath(earlier_url)
    earlier = EarlierBatch(root)
    target = ObjectStoragePath(target_url)
    operations: Counter[str] = Counter()
    fs = root.fs
    fs.connect()
    unique_id = f"bench-{target_url}"
    fs.s3.meta.events.register(
        "before-call.s3",
        lambda event_name, **_: operations.update([event_name.rsplit(".", 1)[-1]]),
        unique_id=unique_id,
    )
    cpu = _own_cpu()
    try:
        with ThreadPoolExecutor(threads) as pool:
            copied = list(
                pool.map(
                    lambda item: copy_outputs(item, earlier, target / item.key, max_bytes=max_bytes), items
                )
            )
    finally:
        fs.s3.meta.events.unregister("before-call.s3", unique_id=unique_id)
    return _own_cpu() - cpu, dict(operations), sum(len(outputs) for outputs in copied)


def _warm(conn_env: tuple[str, str]) -> None:
    """Ready a copying process before the clock starts: the connection set, Airflow and s3fs imported."""
    os.environ[conn_env[0]] = conn_env[1]
    import airflow.providers.common.compat.sdk  # noqa: F401
    import s3fs  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8, help="copies at once in each process")
    parser.add_argument(
        "--processes", type=int, default=1, help="processes sharing the items (batches at once)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=40_000, help="bytes of each earlier output")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (
        1 <= args.items <= 100_000
        and 1 <= args.threads <= 64
        and 1 <= args.rounds <= 20
        and 1 <= args.processes <= 16
    ):
        parser.error("--items 1..100000, --threads 1..64, --processes 1..16, --rounds 1..20")

    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from firered_devtools.seaweedfs import SeaweedS3

    with SeaweedS3(buckets=(BUCKET,), timeout=60) as server:
        conn = "firered_bench_s3"
        conn_env = (f"AIRFLOW_CONN_{conn.upper()}", server.connection())
        os.environ[conn_env[0]] = conn_env[1]
        client = server.client()
        body = PNG + secrets.token_bytes(args.size - len(PNG))
        keys = [f"item-{n:06d}" for n in range(args.items)]

        def put(key: str) -> None:
            client.put_object(Bucket=BUCKET, Key=f"night1/{key}/out_0.png", Body=body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, keys))
        earlier_url = f"s3://{conn}@{BUCKET}/night1"
        items = [
            Item(key, RID.format(n), [str(ObjectStoragePath(f"{earlier_url}/{key}/out_0.png"))])
            for n, key in enumerate(keys)
        ]
        chunks = [items[i :: args.processes] for i in range(args.processes)]
        rounds = []
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.processes, mp_context=context, initializer=_warm, initargs=(conn_env,)
        ) as procs:
            list(procs.map(_warm, [conn_env] * args.processes))  # every process started before the clock
            for number in range(1, args.rounds + 1):
                target_url = f"s3://{conn}@{BUCKET}/night{number + 1}"
                wall, store = time.perf_counter(), cpu_seconds([server.pid or 0])
                futures = [
                    procs.submit(_copy_chunk, chunk, earlier_url, target_url, args.threads, 10 * args.size)
                    for chunk in chunks
                ]
                done = [future.result() for future in futures]
                operations: Counter[str] = Counter()
                for _cpu, ops, _n in done:
                    operations.update(ops)
                assert sum(n for _cpu, _ops, n in done) == args.items, "every item copied"
                result: dict[str, Any] = {
                    "round": number,
                    "wall_s": round(time.perf_counter() - wall, 3),
                    "worker_cpu_s": round(sum(cpu for cpu, _ops, _n in done), 3),
                    "store_cpu_s": round(cpu_seconds([server.pid or 0]) - store, 3),
                    "operations_per_item": {
                        op: round(n / args.items, 2) for op, n in sorted(operations.items())
                    },
                }
                result["worker_cpu_ms_per_item"] = round(1000 * result["worker_cpu_s"] / args.items, 2)
                result["store_cpu_ms_per_item"] = round(1000 * result["store_cpu_s"] / args.items, 2)
                rounds.append(result)
                print(json.dumps(result), flush=True)
    summary = {
        "items": args.items,
        "threads": args.threads,
        "processes": args.processes,
        "size": args.size,
        "rounds": rounds,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
