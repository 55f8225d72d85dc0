"""
Read what an earlier run left on disk without trusting it: its folders and the outputs a batch copies.

A batch copies an earlier output instead of paying for the edit again. The earlier run's manifests
are read by :mod:`~airflow_provider_firered.batch.manifest`, with the bounds defined here for all
earlier runs together and for the folders looked at.

An earlier run's folder may have been edited since, by anyone who can write there. Below the root
the user named, no link is followed: every folder is opened with ``O_NOFOLLOW | O_DIRECTORY``
relative to the one above it, the file itself with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO does not
block the open) and must then be a regular file (``fstat``). An output is copied only when it is
an image by its first bytes, within the connection's ``max_download_bytes``, and is saved under
this run's own output name. On object storage there are no links: a location must lie inside the
earlier root by its path alone; within one S3 store the output is checked and copied server-side
(:mod:`~airflow_provider_firered.batch.object_copy`), anywhere else it is streamed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from airflow_provider_firered.batch.object_copy import SIGNATURE_BYTES, NotReusable, copy_in_store
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.downloads import image_suffix
from airflow_provider_firered.media.output_paths import EXTENSIONS, as_target, check_inside, output_name
from airflow_provider_firered.utils.atomic_files import atomic_writer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = [
    "MAX_EARLIER_BYTES",
    "MAX_EARLIER_FOLDERS",
    "EarlierBatch",
    "EarlierItem",
    "NotReusable",
    "copy_outputs",
    "is_folder_below",
    "list_folder",
    "open_regular_below",
]

#: The most entries of an earlier root looked at for batch folders (a run split into batches holds
#: one folder per batch: 20 for 10,000 SKUs in batches of 500). A root with more is not searched.
MAX_EARLIER_FOLDERS = 1_000
#: The most manifest bytes read from all earlier runs of one batch together.
MAX_EARLIER_BYTES = 256 * 1024 * 1024

_CHUNK = 1024 * 1024
_MEDIA_TYPES = {suffix: media_type for media_type, suffix in EXTENSIONS.items()}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
_NO_LINK_DIR_FLAGS = _DIR_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class EarlierItem(Protocol):
    """What :func:`copy_outputs` needs of an earlier item (a manifest entry)."""

    @property
    def key(self) -> str:
        """Return the item's key: its folder in the earlier batch."""

    @property
    def request_id(self) -> str | None:
        """Return the earlier request id, which names the copies."""

    @property
    def outputs(self) -> Sequence[str]:
        """Return the earlier outputs' locations."""


def _plain(part: str) -> bool:
    return bool(part) and part not in (".", "..") and "/" not in part and "\0" not in part


def open_regular_below(root: str | os.PathLike[str], parts: Sequence[str]) -> IO[bytes]:
    """
    Open the regular file ``root/<parts...>`` for reading, following no link below ``root``.

    ``root`` itself may be a link (it is what the user named). Each folder below it is opened with
    ``O_NOFOLLOW | O_DIRECTORY`` relative to the one above, the file with ``O_NOFOLLOW | O_NONBLOCK``
    (a FIFO cannot block) and checked with ``fstat`` to be a regular file.

    :param root: the folder to stay within.
    :param parts: the path below it, one plain name per part.
    :raises OSError: when a part is missing, a link, not a folder, or the file is not regular.
    """
    if not parts or not all(_plain(part) for part in parts):
        raise OSError(f"not a plain path below {root}: {'/'.join(parts)!r}")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            below = os.open(part, _NO_LINK_DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
        file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            raise OSError(f"{os.path.join(root, *parts)} is not a regular file")
        return os.fdopen(file_fd, "rb")
    except BaseException:
        os.close(file_fd)
        raise


def list_folder(root: str | os.PathLike[str], limit: int) -> list[str] | None:
    """
    Return the names in the folder ``root`` sorted, or None when it holds more than ``limit`` entries.

    A link at ``root`` itself is followed; only ``limit + 1`` entries are ever listed.

    :param root: the folder.
    :param limit: the most entries returned.
    :raises OSError: when ``root`` cannot be opened as a folder.
    """
    fd = os.open(root, _DIR_FLAGS)
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in itertools.islice(entries, limit + 1)]
    finally:
        os.close(fd)
    return None if len(names) > limit else sorted(names)


def is_folder_below(root: str | os.PathLike[str], name: str) -> bool:
    """
    Return whether ``root/name`` is a folder itself, not a link to one.

    :param root: the folder above it.
    :param name: one plain name.
    """
    if not _plain(name):
        return False
    try:
        fd = os.open(root, _DIR_FLAGS)
        try:
            os.close(os.open(name, _NO_LINK_DIR_FLAGS, dir_fd=fd))
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class EarlierBatch:
    """
    Locate an earlier batch's manifest: the earlier root the user named, and the batch folder below it.

    :param root: the earlier output root, as named (a link there is followed).
    :param folder: the batch folder's name below ``root``, or ``None`` when ``root`` is the batch folder.
    """

    root: Path | ObjectStoragePath
    folder: str | None = None

    @property
    def path(self) -> Path | ObjectStoragePath:
        """Return the batch folder."""
        return self.root if self.folder is None else self.root / self.folder

    @property
    def parts(self) -> tuple[str, ...]:
        """Return the batch folder's path below ``root``."""
        return () if self.folder is None else (self.folder,)


# -- copying an earlier output ------------------------------------------------------------------------


def copy_outputs(
    entry: EarlierItem,
    batch: EarlierBatch,
    target_dir: Path | ObjectStoragePath,
    *,
    max_bytes: int,
) -> list[str]:
    """
    Copy an earlier item's outputs into ``target_dir``, each under this run's own output name.

    Each output must be a file directly in the earlier batch's ``<key>/`` folder, reached without
    following a link below the earlier root, regular, at most ``max_bytes`` long and a PNG, JPEG,
    WebP or GIF image by its first bytes. The copy is named by :func:`output_name` from the earlier
    request id, the output's position and the image type found, and written atomically. On any
    refusal nothing copied for the item is left behind.

    :param entry: the earlier item (its key, request id and outputs).
    :param batch: where its manifest was found.
    :param target_dir: this run's folder for the item.
    :param max_bytes: the largest output copied (the connection's ``max_download_bytes``).
    :return: the copies' locations, in output order.
    :raises NotReusable: saying why an output cannot be copied.
    """
    if not entry.request_id:
        raise NotReusable("the earlier item has no request id")
    copied: list[Path | ObjectStoragePath] = []
    try:
        for index, output in enumerate(entry.outputs):
            copied.append(_copy_output(batch, entry, index, output, target_dir, max_bytes))
    except BaseException:
        for done in copied:
            with contextlib.suppress(OSError, NotImplementedError):
                done.unlink()
        raise
    return [str(target) for target in copied]


def _copy_output(
    batch: EarlierBatch,
    entry: EarlierItem,
    index: int,
    output: str,
    target_dir: Path | ObjectStoragePath,
    max_bytes: int,
) -> Path | ObjectStoragePath:
    """Copy one output: server-side within one S3 store, else streamed through :func:`_copy`."""

    def target(head: bytes) -> Path | ObjectStoragePath:
        """Return the copy's location, named by this run from the output's first bytes."""
        suffix = image_suffix(head)
        if suffix is None:
            raise NotReusable(f"{output[:200]!r} is not a PNG, JPEG, WebP or GIF image")
        try:
            copy = target_dir / output_name(str(entry.request_id), index, _MEDIA_TYPES[suffix])
            check_inside(copy, target_dir)
        except FireRedValidationError as err:
            raise NotReusable(str(err)) from None
        return copy

    source = _locate(batch, entry.key, output)
    if not isinstance(source, tuple) and not isinstance(target_dir, Path):
        done = copy_in_store(source, target_dir, target, max_bytes=max_bytes, what=repr(output[:200]))
        if done is not None:
            return done
    with _open_output(source, output) as handle:
        return _copy(handle, output, target, max_bytes)


def _locate(batch: EarlierBatch, key: str, output: str) -> tuple[Path, tuple[str, ...]] | ObjectStoragePath:
    """
    Return where an output lies: a local earlier root and the parts below it, or its object-store path.

    :raises NotReusable: unless it is a file directly in the earlier batch's ``<key>/`` folder.
    """
    try:
        source = as_target(output, field_name="previous")
    except (FireRedValidationError, ValueError) as err:
        raise NotReusable(f"{output[:200]!r} is not a path or URL: {err}") from None
    root = batch.root
    if isinstance(root, Path):
        if not isinstance(source, Path):
            raise NotReusable(f"{output[:200]!r} is not a local path like its earlier run")
        return root, (*batch.parts, key, _local_name(root, batch.parts, key, source))
    if isinstance(source, Path):
        raise NotReusable(f"{output[:200]!r} is not in the object store of its earlier run")
    folder = root / key if batch.folder is None else root / batch.folder / key
    name = posixpath.relpath(posixpath.normpath("/" + source.path), posixpath.normpath("/" + folder.path))
    if source.protocol != folder.protocol or not _plain(name):
        raise NotReusable(f"{output[:200]!r} is not a file of {folder}")
    return folder / name


@contextlib.contextmanager
def _open_output(
    source: tuple[Path, tuple[str, ...]] | ObjectStoragePath, output: str
) -> Iterator[IO[bytes]]:
    if isinstance(source, tuple):
        try:
            handle = open_regular_below(*source)
        except OSError as err:
            raise NotReusable(f"{output[:200]!r}: {err.strerror or err}") from None
    else:
        try:
            handle = source.open("rb")
        except (OSError, NotImplementedError) as err:
            raise NotReusable(f"{output[:200]!r}: {err}") from None
    with handle:
        yield handle


def _local_name(root: Path, parts: tuple[str, ...], key: str, source: Path) -> str:
    """Return the output's file name, when it lies directly in the batch's ``<key>/`` folder (by its path)."""
    location = os.path.abspath(source)
    for base in {os.path.abspath(root), os.path.realpath(root)}:
        folder = os.path.join(base, *parts, key)
        if os.path.dirname(location) == folder and _plain(os.path.basename(location)):
            return os.path.basename(location)
    raise NotReusable(f"{str(source)[:200]!r} is not a file of {os.path.join(root, *parts, key)}")


def _copy(
    source: IO[bytes],
    output: str,
    target_of: Callable[[bytes], Path | ObjectStoragePath],
    max_bytes: int,
) -> Path | ObjectStoragePath:
    head = b""
    while len(head) < SIGNATURE_BYTES and (more := source.read(SIGNATURE_BYTES - len(head))):
        head += more
    target = target_of(head)
    with atomic_writer(target) as out:  # a refusal halfway publishes nothing, on disk or object store
        _pour(head, source, out, output, max_bytes)
    return target


def _pour(head: bytes, source: IO[bytes], out: IO[bytes], output: str, max_bytes: int) -> None:
    """Write ``head`` and the rest of ``source`` to ``out``, refusing more than ``max_bytes`` in all."""
    size = len(head)
    out.write(head)
    while chunk := source.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise NotReusable(f"{output[:200]!r} is larger than the {max_bytes}-byte max_download_bytes")
        out.write(chunk)
