"""
Where benchmark D's catalogue writes (a local folder, or S3), and how busy Celery workers are.

The batch variant's ``output_root`` holds one run folder per night (the example's names: a date, or a
date and time). :class:`LocalOutputs` reads them on disk; :class:`S3Outputs` reads them from the S3
store (SeaweedFS) through boto3, as ``s3://<conn_id>@<bucket>/<prefix>`` URLs are written by the DAG.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firered_devtools.processes import descendants

from airflow_provider_firered.batch.manifest import MANIFEST_NAME, parse_entries

if TYPE_CHECKING:
    from firered_devtools.celery import CeleryDeployment

#: The example's run folders: ``YYYY-MM-DD`` (scheduled) or ``YYYY-MM-DDTHHMMSSZ`` (any other run).
RUN_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{6}Z)?")


def _count_outcomes(texts: list[bytes]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        entries, _bad = parse_entries(enumerate(text.splitlines()))
        counts.update(entry.outcome for entry in entries)
    return counts


class LocalOutputs:
    """An ``output_root`` on the local disk (the LocalExecutor deployment: one machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return str(self.root)

    def folders(self) -> set[str]:
        """The run folders under the root so far."""
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if p.is_dir() and RUN_FOLDER.fullmatch(p.name)}

    def folder_url(self, name: str) -> str:
        return str(self.root / name)

    def outcomes(self, name: str) -> Counter[str]:
        """How the items of run folder ``name`` ended, from its batches' manifests."""
        return _count_outcomes([p.read_bytes() for p in (self.root / name).glob(f"batch-*/{MANIFEST_NAME}")])

    def read(self, name: str, file: str) -> bytes | None:
        try:
            return (self.root / name / file).read_bytes()
        except OSError:
            return None


class S3Outputs:
    """
    An ``output_root`` on S3: ``s3://<conn_id>@<bucket>/<prefix>``, read with the store's own client.

    :param store: the S3 store (``firered_devtools.seaweedfs.SeaweedS3``).
    """

    def __init__(self, store: Any, conn_id: str, bucket: str, prefix: str) -> None:
        self.store, self.conn_id, self.bucket = store, conn_id, bucket
        self.prefix = prefix.strip("/")
        self.client = store.client()

    @property
    def url(self) -> str:
        return f"s3://{self.conn_id}@{self.bucket}/{self.prefix}"

    def folders(self) -> set[str]:
        """The run folders under the root so far."""
        return {name for name in self._subfolders(self.prefix) if RUN_FOLDER.fullmatch(name)}

    def _subfolders(self, prefix: str) -> list[str]:
        """The names of the "folders" right under ``prefix`` (bounded to 100 pages)."""
        found: list[str] = []
        token: dict[str, str] = {}
        for _ in range(100):
            page = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=prefix + "/", Delimiter="/", **token
            )
            found.extend(p["Prefix"][len(prefix) + 1 :].rstrip("/") for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return found

    def folder_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def outcomes(self, name: str) -> Counter[str]:
        """How the items of run folder ``name`` ended, from its batches' manifests."""
        folder = f"{self.prefix}/{name}"
        batches = [batch for batch in self._subfolders(folder) if batch.startswith("batch-")]
        return _count_outcomes([self._get(f"{folder}/{batch}/{MANIFEST_NAME}") or b"" for batch in batches])

    def read(self, name: str, file: str) -> bytes | None:
        return self._get(f"{self.prefix}/{name}/{file}")

    def _get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception:  # missing (NoSuchKey) or unreadable: the caller reports it
            return None

    def put(self, key: str, body: bytes) -> str:
        """Write ``body`` at ``key`` in the bucket; return its ``s3://conn@bucket/key`` URL."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.conn_id}@{self.bucket}/{key}"


def read_json(outputs: LocalOutputs | S3Outputs, name: str, file: str) -> Any:
    """A JSON file of run folder ``name``, or None."""
    data = outputs.read(name, file)
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


# -- busy Celery worker slots ---------------------------------------------------------------------------


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def busy_celery_slots(deployment: CeleryDeployment) -> int:
    """
    Busy slots of every Celery worker, from their processes: a worker's prefork pool process takes
    the title ``airflow supervisor: <task>`` for its first task (and keeps it), and is busy while it
    has a child, the task process it forked.
    """
    busy = 0
    for worker in deployment.running_workers().values():
        tree = descendants(worker.pid)
        parents = {_parent(pid) for pid in tree}
        for pid in tree:
            with contextlib.suppress(OSError):
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
                busy += int(title.startswith(b"airflow supervisor:") and pid in parents)
    return busy


class CelerySlotSampler(threading.Thread):
    """
    Integrates busy Celery worker slots over time, two ways: from the workers' processes (the figure
    reported) and, as a cross-check, task instances in state ``running`` in the metadata DB.
    """

    def __init__(self, deployment: CeleryDeployment, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.deployment, self.period = deployment, period
        self.slot_seconds = 0.0
        self.running_seconds = 0.0
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(self.period):
            busy = busy_celery_slots(self.deployment)
            try:
                ((running,),) = self.deployment.query(
                    "SELECT COUNT(*) FROM task_instance WHERE state = 'running'"
                )
            except Exception:  # a sample lost to a busy database is only a sample
                running = 0
            now = time.monotonic()
            self.slot_seconds += busy * (now - last)
            self.running_seconds += int(running) * (now - last)
            self.peak = max(self.peak, busy)
            last = now
