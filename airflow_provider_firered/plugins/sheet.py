"""
A batch's contact sheet as the plugin shows it: its manifest read once, checked, and paged.

The manifest is read with the project's bounded reader
(:func:`~airflow_provider_firered.batch.run_results.read_batch_manifest`): one line at a time, each
line and the whole file bounded, every line checked (a plain key, outputs inside the output root,
http(s) inputs). What it lists is the only set of files the plugin serves: each output's path below
the output root, kept here as plain segments, and each input's kept copy in the root's ``_inputs/``
(named by the input's URL: :func:`~airflow_provider_firered.batch.contact_sheet.input_copy_name`),
found by one listing of that folder.

A page of thumbnails asks for a hundred images at once: each image request finds the sheet here
instead of reading the manifest again. A few sheets are kept, each under the manifest's identity
(inode, size and modification time; size and modification time on object storage), for a few
minutes at most: a manifest rewritten since is read again.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_firered.batch.contact_sheet import INPUT_COPIES, input_copies, input_copy_name
from airflow_provider_firered.batch.manifest import MANIFEST_NAME
from airflow_provider_firered.batch.run_results import read_batch_manifest
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.output_paths import as_target

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.batch.run_results import BatchResult, ItemResult

#: Rows on a page of the contact sheet.
PAGE_SIZE = 100
#: The most sheets kept for the image requests of the pages being viewed.
MAX_SHEETS = 4
#: Seconds a sheet is kept at most.
SHEET_TTL = 300.0


@dataclass
class Sheet:
    """
    Hold a batch's manifest as read and checked, ready to page.

    :param root: the output root.
    :param result: the manifest's items (that passed the checks) and its problems.
    :param items: the items in page order: failures first, then by key.
    :param files: each servable output: its path below the root (``/``-joined) -> its segments.
    :param outputs: each output location as the manifest lists it -> its path below the root.
    :param inputs: each input URL with a kept copy -> the copy's path below the root.
    """

    root: Path | ObjectStoragePath
    result: BatchResult
    items: list[ItemResult] = field(default_factory=list)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Return ``total`` and the count of each outcome."""
        return self.result.counts()

    @property
    def failures(self) -> list[ItemResult]:
        """Return the failed items, in page order."""
        return [item for item in self.items if item.is_failure]

    def pages(self, size: int = PAGE_SIZE) -> int:
        """
        Return how many pages the items take (at least one).

        :param size: rows per page.
        """
        return max(1, -(-len(self.items) // size))

    def page(self, number: int, size: int = PAGE_SIZE) -> list[ItemResult]:
        """
        Return the items of page ``number`` (the first is 1).

        :param number: the page, between 1 and :meth:`pages`.
        :param size: rows per page.
        """
        start = (number - 1) * size
        return self.items[start : start + size]


def relative_parts(location: str, root: Path | ObjectStoragePath) -> tuple[str, ...] | None:
    """
    Return the segments of ``location`` below ``root`` by its path alone, or None unless it lies there.

    Nothing is resolved: links are refused when the file is opened (no link is followed below the
    root), so a path that lies below the root by its text is all the serving needs.

    :param location: an output's path or URL, as the manifest lists it.
    :param root: the output root.
    """
    try:
        target = as_target(location, field_name="outputs")
    except (FireRedValidationError, ValueError, TypeError):
        return None
    if isinstance(root, Path) and isinstance(target, Path):
        base, path = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(target))
    elif not isinstance(root, Path) and not isinstance(target, Path):
        if target.protocol != root.protocol:
            return None
        base, path = posixpath.normpath("/" + root.path), posixpath.normpath("/" + target.path)
    else:
        return None
    if not path.startswith(base.rstrip("/") + "/"):
        return None
    parts = tuple(path[len(base.rstrip("/")) + 1 :].split("/"))
    if not all(part and part not in (".", "..") and "\0" not in part for part in parts):
        return None
    return parts


def build_sheet(root: Path | ObjectStoragePath) -> Sheet:
    """
    Read and check the manifest under ``root``; a missing one gives a sheet with no items.

    :param root: the batch's output root.
    """
    result = read_batch_manifest(root)
    sheet = Sheet(root=root, result=result)
    sheet.items = sorted(result.items, key=lambda item: (not item.is_failure, item.key))
    for item in result.items:
        for output in item.outputs:
            parts = relative_parts(output, root)
            if parts is not None:
                path = "/".join(parts)
                sheet.files[path] = parts
                sheet.outputs[output] = path
    kept = input_copies(root)
    if kept:
        for item in result.items:
            for url in item.images:
                name = input_copy_name(url)
                if name in kept:
                    sheet.files[f"{INPUT_COPIES}/{name}"] = (INPUT_COPIES, name)
                    sheet.inputs[url] = f"{INPUT_COPIES}/{name}"
    return sheet


def manifest_identity(root: Path | ObjectStoragePath) -> Hashable | None:
    """
    Return what changes when the manifest under ``root`` is rewritten, or None when it cannot be told.

    :param root: the batch's output root.
    """
    try:
        if isinstance(root, Path):
            found = os.stat(os.path.join(root, MANIFEST_NAME), follow_symlinks=False)
            return ("file", str(root), found.st_ino, found.st_size, found.st_mtime_ns)
        info = (root / MANIFEST_NAME).stat()
    except (OSError, NotImplementedError, ValueError):
        return None
    size, mtime = getattr(info, "st_size", None), getattr(info, "st_mtime", None)
    if size is None or mtime is None:
        return None
    return (root.protocol, str(root), size, mtime)


class SheetCache:
    """
    Keep the last few sheets read, each under its manifest's identity, for a bounded time.

    :param size: the most sheets kept.
    :param ttl: seconds a sheet is kept at most.
    """

    def __init__(self, size: int = MAX_SHEETS, ttl: float = SHEET_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self._sheets: dict[Hashable, tuple[float, Sheet]] = {}
        self._lock = threading.Lock()

    def get(self, root: Path | ObjectStoragePath) -> Sheet:
        """
        Return the sheet of the batch writing to ``root``, read again unless an unchanged one is kept.

        :param root: the batch's output root.
        """
        identity = manifest_identity(root)
        now = time.monotonic()
        if identity is not None:
            with self._lock:
                kept = self._sheets.pop(identity, None)
                if kept is not None and now - kept[0] < self.ttl:
                    self._sheets[identity] = kept  # the most recently used goes last
                    return kept[1]
        sheet = build_sheet(root)
        if identity is not None and sheet.result.found:
            with self._lock:
                self._sheets[identity] = (now, sheet)
                while len(self._sheets) > self.size:
                    with contextlib.suppress(StopIteration):
                        del self._sheets[next(iter(self._sheets))]
        return sheet

    def clear(self) -> None:
        """Forget every sheet."""
        with self._lock:
            self._sheets.clear()


def page_numbers(current: int, last: int, around: int = 2) -> Sequence[int | None]:
    """
    Return the page numbers a pager shows: the first, the last, those around ``current``; None for a gap.

    :param current: the page shown.
    :param last: the last page.
    :param around: how many pages on each side of ``current``.
    """
    shown = sorted({1, last, *range(max(1, current - around), min(last, current + around) + 1)})
    numbers: list[int | None] = []
    for number in shown:
        if numbers and number - (numbers[-1] or 0) > 1:
            numbers.append(None)
        numbers.append(number)
    return numbers
