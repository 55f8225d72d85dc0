"""
What reusing an unchanged item's output on S3 costs the worker: the copy step of an unchanged night.

One SeaweedFS store on loopback (``firered_devtools``) holds ``--items`` earlier outputs (PNG-signed
bytes of ``--size``), each in its item's folder as a batch writes them. The batch's own copy
(:func:`airflow_provider_firered.batch.earlier_runs.copy_outputs`, through Airflow's object storage
and s3fs) then copies every one into a new run folder, ``--threads`` at a time as a batch does, in
``--rounds`` rounds (a fresh target folder each). Reported per round: wall time, this process's CPU
time, SeaweedFS's CPU time (from /proc), and the S3 operations per item (counted through the S3
client's own events), per item and in all.

    python benchmarks/reuse_on_s3.py --items 500 --threads 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    etags: list[str | None] | None = None


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=40_000, help="bytes of each earlier output")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (1 <= args.items <= 100_000 and 1 <= args.threads <= 64 and 1 <= args.rounds <= 20):
        parser.error("--items 1..100000, --threads 1..64, --rounds 1..20")

    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from firered_devtools.seaweedfs import SeaweedS3

    with SeaweedS3(buckets=(BUCKET,), timeout=60) as server:
        conn = "firered_bench_s3"
        os.environ[f"AIRFLOW_CONN_{conn.upper()}"] = server.connection()
        client = server.client()
        body = PNG + secrets.token_bytes(args.size - len(PNG))
        keys = [f"item-{n:06d}" for n in range(args.items)]
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda key: client.put_object(Bucket=BUCKET, Key=f"night1/{key}/out_0.png", Body=body),
                    keys,
                )
            )
        earlier = EarlierBatch(ObjectStoragePath(f"s3://{conn}@{BUCKET}/night1"))
        items = [
            Item(key, RID.format(n), [str(ObjectStoragePath(f"s3://{conn}@{BUCKET}/night1/{key}/out_0.png"))])
            for n, key in enumerate(keys)
        ]
        operations: Counter[str] = Counter()
        fs = earlier.root.fs
        fs.connect()
        fs.s3.meta.events.register(
            "before-call.s3", lambda event_name, **_: operations.update([event_name.rsplit(".", 1)[-1]])
        )
        rounds = []
        for number in range(1, args.rounds + 1):
            target = ObjectStoragePath(f"s3://{conn}@{BUCKET}/night{number + 1}")
            operations.clear()
            wall, cpu, store = time.perf_counter(), _own_cpu(), _proc_cpu(server.pid or 0)

            def reuse(item: Item, target: Any = target) -> list[str]:
                return copy_outputs(item, earlier, target / item.key, max_bytes=10 * args.size)

            with ThreadPoolExecutor(args.threads) as pool:
                copied = list(pool.map(reuse, items))
            result = {
                "round": number,
                "wall_s": round(time.perf_counter() - wall, 3),
                "worker_cpu_s": round(_own_cpu() - cpu, 3),
                "store_cpu_s": round(_proc_cpu(server.pid or 0) - store, 3),
                "operations_per_item": {op: round(n / args.items, 2) for op, n in sorted(operations.items())},
            }
            result["worker_cpu_ms_per_item"] = round(1000 * result["worker_cpu_s"] / args.items, 2)
            result["store_cpu_ms_per_item"] = round(1000 * result["store_cpu_s"] / args.items, 2)
            assert all(len(outputs) == 1 for outputs in copied), "every item copied"
            rounds.append(result)
            print(json.dumps(result), flush=True)
    summary = {"items": args.items, "threads": args.threads, "size": args.size, "rounds": rounds}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
