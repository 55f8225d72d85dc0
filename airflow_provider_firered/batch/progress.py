"""
Keep the progress file beside a batch's manifest: which try's work the manifest holds.

``_batch.json`` names the task instance and its ``max_tries`` (a clear changes them), and the try's
deadline: a try resumes only the manifest its own task instance's earlier try wrote.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.batch.manifest import read_manifest
from airflow_provider_firered.utils.atomic_files import write_atomic

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.batch.manifest import ManifestEntry
    from airflow_provider_firered.batch.settings import BatchLog

#: The progress file beside the manifest: which try's work the manifest holds.
PROGRESS_NAME = "_batch.json"


def task_of(ti: Any) -> str:
    """
    Name the task instance a batch folder belongs to: a folder shared by two runs is not resumed.

    :param ti: the task instance.
    """
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}"


def read_progress(root: Path | ObjectStoragePath) -> dict[str, Any]:
    """
    Read the batch's progress file (``{"task", "max_tries", "deadline"}``); empty when unreadable.

    :param root: the batch's output root.
    """
    try:
        with (root / PROGRESS_NAME).open("r", encoding="utf-8") as source:
            found = json.loads(source.read(4096))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_progress(root: Path | ObjectStoragePath, progress: dict[str, Any]) -> None:
    """
    Write the batch's progress file, atomically.

    :param root: the batch's output root.
    :param progress: ``{"task", "max_tries", "deadline"}``.
    """
    write_atomic(root / PROGRESS_NAME, json.dumps(progress))


def earlier_tries(
    root: Path | ObjectStoragePath, progress: dict[str, Any], log: BatchLog
) -> tuple[dict[str, ManifestEntry] | None, dict[str, int]]:
    """
    Return the manifest an earlier try of this task instance wrote, by key, and what it paid per item.

    The manifest is empty if that try wrote none before it stopped, and None when there was no such
    try: a new batch, a task cleared since (a clear changes ``max_tries``), or a folder that holds
    another task's or another run's batch. The paid submits are read from this task instance's
    manifest even after a clear, for ``max_paid_edits`` counts every try. A dry run's plan is neither.

    :param root: the batch's output root.
    :param progress: this try's ``{"task", "max_tries"}``.
    :param log: where to say that there is nothing to resume.
    """
    found = read_progress(root)
    entries: list[ManifestEntry] = []
    if found.get("task") == progress.get("task"):
        entries = [entry for entry in read_manifest(root) or [] if not entry.dry_run]
    paid = {entry.key: entry.paid for entry in entries}
    if {name: found.get(name) for name in progress} != progress:
        log.info(
            "No earlier manifest of this batch to resume (new, cleared, or not on this disk): "
            "only stored request ids are taken up"
        )
        return None, paid
    return {entry.key: entry for entry in entries}, paid
