"""
Write files atomically: every file the package writes goes through here.

Readers never see half a file, and a name planted beside the target (a symlink to elsewhere) is never
written through.

Locally the bytes go to a fresh temporary file created exclusively (``O_CREAT | O_EXCL``: a planted
link at that name makes the creation fail rather than be followed) in the target's folder, which is
then renamed over the target (``os.replace`` replaces a link at the target; it does not follow it).
On object storage the file is one upload, sent only once the writing succeeded (the bytes wait in a
local temporary file meanwhile), so a failure halfway publishes nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from airflow_provider_firered.utils.object_stores import is_s3

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = ["PART_SUFFIX", "LocalPart", "atomic_writer", "local_part", "upload_whole", "write_atomic"]

#: The temporary files' suffix; a temporary name is ``.<target name>.<random>.part``.
PART_SUFFIX = ".part"
#: What an object-store write keeps in memory before its temporary file goes to disk.
_SPOOL_BYTES = 1024 * 1024
_COPY_CHUNK = 1024 * 1024


def _file_mode() -> int:
    """Return the mode a plain ``open()`` would give a new file (``0o666`` less the umask), not ``0o600``."""
    # Read, not set: os.umask() would change it for every thread of the worker meanwhile.
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    return 0o644


@dataclass
class LocalPart:
    """
    A temporary file beside its target, open for writing; published by :func:`local_part` on success.

    :param file: the open temporary file.
    :param path: its path (``.<target name>.<random>.part``).
    :param target: where it is published; may be changed while writing, within the same folder
        (a download learns its extension from the body).
    """

    file: IO[bytes]
    path: Path
    target: Path


@contextlib.contextmanager
def local_part(target: Path) -> Iterator[LocalPart]:
    """
    Open a fresh temporary file beside the local ``target``; rename it over ``part.target`` on success.

    The temporary file is created exclusively (a link planted at its name is never followed), and
    removed whatever happens.

    :param target: the file to write (its folder is created when missing).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PART_SUFFIX, dir=target.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as local:
            part = LocalPart(local, tmp, target)
            yield part
        if part.target.parent != target.parent:
            raise ValueError(f"{part.target} is not in the folder of {target}")
        os.replace(tmp, part.target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(target: Path | ObjectStoragePath) -> Iterator[IO[bytes]]:
    """
    Open ``target`` for writing bytes so that it appears whole, or not at all.

    :param target: the file to write (its folder is created when missing).
    """
    if not isinstance(target, Path):
        # An object store publishes whatever its file holds when it is closed, a failure included:
        # the bytes wait here until the writing succeeded, then go up in one upload.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, prefix="firered-") as spool:
            yield spool
            upload_whole(target, spool)
        return
    with local_part(target) as part:
        yield part.file


def upload_whole(target: ObjectStoragePath, source: IO[bytes]) -> None:
    """
    Upload a complete local file to object storage in one upload: the object appears whole.

    For bytes already written and checked (a download learns its name from its body); anything
    still being written goes through :func:`atomic_writer`, which calls this once it succeeded.

    :param target: the object to write (its folder is created when the store has folders).
    :param source: the local file, read from its start.
    """
    source.seek(0)
    if not is_s3(target.fs):  # S3 has no folders (s3fs would ask whether the bucket exists)
        with contextlib.suppress(OSError, NotImplementedError):
            target.parent.mkdir(parents=True, exist_ok=True)  # needed for file://
    with target.open("wb") as remote:
        shutil.copyfileobj(source, remote, _COPY_CHUNK)


def write_atomic(target: Path | ObjectStoragePath, data: bytes | str) -> None:
    """
    Write ``data`` (text as UTF-8) to ``target`` whole, through :func:`atomic_writer`.

    :param target: the file to write.
    :param data: its content.
    """
    with atomic_writer(target) as out:
        out.write(data.encode("utf-8") if isinstance(data, str) else data)
