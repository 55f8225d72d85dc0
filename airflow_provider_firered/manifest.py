"""
A batch's result manifest: one JSON line per item at ``<output_root>/_manifest.jsonl``, written whole
and atomically. While the batch runs it is also its progress: items still waiting are written with
the outcome ``pending``, so a resumed task (a later wave, or a retry) knows what is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.output_paths import as_target

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.providers.common.compat.sdk import ObjectStoragePath

MANIFEST_NAME = "_manifest.jsonl"
#: The most a manifest may hold when read back: a batch of 100,000 items with long prompts fits.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
#: How an item ended (``pending``: not yet, in a progress snapshot).
OUTCOMES = ("edited", "reused", "failed", "pending")


@dataclass
class ManifestEntry:
    """
    One item of a batch.

    :param key: the item's key: its output folder under the output root.
    :param outcome: ``edited``, ``reused``, ``failed`` or ``pending``.
    :param status: the job's status (``COMPLETED``, ``FAILED``, ``ERROR``) or why the item failed
        without one (``INVALID``, ``REFUSED``, ``UNCERTAIN``, ``TIMEOUT``, ``START_TIMEOUT``, ...).
    :param request_id: the gateway's request id, once submitted (a reused item keeps the original's).
    :param outputs: the saved images, as absolute paths or URLs.
    :param error: what went wrong, for a failed item.
    :param fingerprint: what the edit depends on (:func:`~airflow_provider_firered.batch_items.fingerprint`).
    :param images: the input image URLs.
    :param prompt: the edit instruction.
    """

    key: str
    outcome: str
    status: str | None = None
    request_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    fingerprint: str | None = None
    images: list[str] = field(default_factory=list)
    prompt: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> ManifestEntry:
        """An entry read back, every field checked for its type (a manifest may have been edited)."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("key"), str)
            or data.get("outcome") not in OUTCOMES
        ):
            raise ValueError("not a manifest entry")
        return cls(
            key=data["key"],
            outcome=data["outcome"],
            status=_text(data, "status"),
            request_id=_text(data, "request_id"),
            outputs=_texts(data, "outputs"),
            error=_text(data, "error"),
            fingerprint=_text(data, "fingerprint"),
            images=_texts(data, "images"),
            prompt=_text(data, "prompt"),
        )


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be text")
    return value


def _texts(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of text")
    return value


def manifest_path(root: str | os.PathLike[str] | ObjectStoragePath) -> Path | ObjectStoragePath:
    """Where the manifest of the batch writing to ``root`` lies."""
    return as_target(root, field_name="output_root") / MANIFEST_NAME


def write_manifest(root: str | os.PathLike[str] | ObjectStoragePath, entries: Iterable[ManifestEntry]) -> str:
    """
    Write the manifest whole: locally through a temporary file and a rename, to object storage as one
    upload (published only once complete). Readers never see half a manifest.

    :param root: the batch's output root.
    :param entries: every item, in batch order.
    :return: the manifest's path or URL.
    """
    text = "".join(json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in entries)
    target = manifest_path(root)
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    else:
        with contextlib.suppress(OSError, NotImplementedError):
            target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as out:
            out.write(text)
    return str(target)


def read_manifest(root: str | os.PathLike[str] | ObjectStoragePath) -> list[ManifestEntry] | None:
    """
    The entries of the manifest under ``root``, or None when there is none. A line that is not a
    valid entry is skipped (its item counts as unknown); a manifest over :data:`MAX_MANIFEST_BYTES`
    is refused.

    :param root: a batch's output root.
    """
    target = manifest_path(root)
    try:
        with target.open("rb") as source:
            raw = source.read(MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FireRedError(f"{target} is larger than {MAX_MANIFEST_BYTES} bytes: not read")
    entries = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entries.append(ManifestEntry.from_json(json.loads(line)))
    return entries


def previous_entries(roots: Iterable[str]) -> dict[str, tuple[ManifestEntry, Path | ObjectStoragePath]]:
    """
    The items of earlier runs, by key, each with the output root it was written under: each root's
    own manifest, else those of its direct subfolders (a run split into batches). Later roots win.

    :param roots: earlier output roots (paths or URLs).
    """
    found: dict[str, tuple[ManifestEntry, Path | ObjectStoragePath]] = {}
    for root in roots:
        base = as_target(root, field_name="previous")
        own = read_manifest(base)
        if own is not None:
            batches = [(base, own)]
        else:
            batches = []
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                subfolders: list[Path | ObjectStoragePath] = sorted(base.iterdir(), key=str)
                for sub in subfolders:
                    if sub.is_dir() and (entries := read_manifest(sub)) is not None:
                        batches.append((sub, entries))
        for batch_root, entries in batches:
            for entry in entries:
                found[entry.key] = (entry, batch_root)
    return found
