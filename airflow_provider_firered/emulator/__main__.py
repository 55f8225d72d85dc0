"""``firered-emulator``: run the offline gateway until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING

from airflow_provider_firered.emulator.server import Emulator

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    Parse the command line.

    :param argv: the arguments, ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="firered-emulator",
        description="Offline FireRed Image Edit gateway on 127.0.0.1. Prints its URLs as one JSON line.",
    )
    parser.add_argument("--port", type=int, default=0, help="gateway port (0 = a free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0 = a free port)")
    parser.add_argument(
        "--keys", type=_csv, default=None, help="accepted keys, comma-separated (default: any)"
    )
    parser.add_argument("--disabled-keys", type=_csv, default=[], help="keys answered with 403")
    parser.add_argument(
        "--balance", type=int, default=None, help="jobs the wallet pays for (default: unlimited)"
    )
    parser.add_argument("--queued-seconds", type=float, default=1.0, help="time a job stays QUEUED")
    parser.add_argument("--processing-seconds", type=float, default=3.0, help="time a job stays PROCESSING")
    parser.add_argument(
        "--allow-http-webhooks", action="store_true", help="accept http:// webhooks on loopback"
    )
    parser.add_argument("--disabled-models", type=_csv, default=[], help="models answered with 400")
    parser.add_argument("--max-concurrent-jobs", type=int, default=None, help="unfinished jobs before 429")
    parser.add_argument("--max-rps", type=float, default=None, help="gateway requests per second before 429")
    parser.add_argument(
        "--no-render",
        action="store_true",
        help="skip the Pillow edit: a completed job returns its first input image (cheap load runs)",
    )
    parser.add_argument("--job-ttl", type=float, default=3600.0, help="seconds a finished job is kept")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulator, print its URLs, and serve until SIGINT or SIGTERM."""
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = Emulator(
        port=args.port,
        cdn_port=args.cdn_port,
        keys=args.keys,
        disabled_keys=args.disabled_keys,
        balance=args.balance,
        queued_seconds=args.queued_seconds,
        processing_seconds=args.processing_seconds,
        allow_http_webhooks=args.allow_http_webhooks,
        job_ttl_seconds=args.job_ttl,
        disabled_models=args.disabled_models,
        max_concurrent_jobs=args.max_concurrent_jobs,
        max_requests_per_second=args.max_rps,
        render_edits=not args.no_render,
    ).start()
    line = {
        "gateway_url": emulator.gateway_url,
        "cdn_url": emulator.cdn_url,
        "sample_images": emulator.sample_images,
    }
    print(json.dumps(line), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
