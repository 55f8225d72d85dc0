"""
Open one output image of a batch for the api-server to stream: only a file the manifest lists.

A file is opened below the output root segment by segment, following no link below it (a link
planted in the folder cannot lead out of it, nor to another file of it), and must be a regular file
(a FIFO cannot block the server), at most :data:`MAX_IMAGE_BYTES` long and a PNG, JPEG, WebP or GIF
image by its first bytes: its ``Content-Type`` comes from them, never from its name. On object
storage there are no links: the file is the root joined with the listed segments.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from airflow_provider_firered.batch.earlier_runs import open_regular_below
from airflow_provider_firered.media.downloads import image_suffix
from airflow_provider_firered.media.output_paths import EXTENSIONS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.providers.common.compat.sdk import ObjectStoragePath

#: The largest image served (an output is at most the connection's ``max_download_bytes``, 50 MiB by
#: default); a larger one is refused.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: Bytes read at a time while streaming.
CHUNK_BYTES = 256 * 1024
#: The first bytes that tell the image type.
_SIGNATURE_BYTES = 12
_MEDIA_TYPES = {suffix: media_type for media_type, suffix in EXTENSIONS.items()}


class NotServed(Exception):
    """A file the plugin does not serve; the text says why (for the log and the 404's detail)."""


@dataclass
class OpenImage:
    """
    Hold an image file opened for streaming.

    :param handle: the open file, positioned after :attr:`head`.
    :param head: the first bytes, already read.
    :param media_type: the image's media type, from :attr:`head`.
    :param size: the file's length, when known.
    """

    handle: IO[bytes]
    head: bytes
    media_type: str
    size: int | None

    def chunks(self, limit: int = MAX_IMAGE_BYTES) -> Iterator[bytes]:
        """
        Yield the whole file, then close it; stop with an error past ``limit`` bytes.

        :param limit: the most bytes sent (a file may grow while it is read).
        """
        try:
            sent = len(self.head)
            yield self.head
            while chunk := self.handle.read(CHUNK_BYTES):
                sent += len(chunk)
                if sent > limit:
                    raise NotServed(f"larger than {limit} bytes")
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            self.handle.close()


def open_image(
    root: Path | ObjectStoragePath, parts: tuple[str, ...], *, limit: int = MAX_IMAGE_BYTES
) -> OpenImage:
    """
    Open the image ``root/<parts...>`` and read its first bytes.

    :param root: the batch's output root.
    :param parts: the file's segments below the root, as the manifest lists it.
    :param limit: the largest file served.
    :raises NotServed: when it is missing, a link, not a regular file, too large or not an image.
    """
    handle, size = _open(root, parts)
    try:
        if size is not None and size > limit:
            raise NotServed(f"larger than {limit} bytes")
        head = b""
        while len(head) < _SIGNATURE_BYTES and (more := handle.read(_SIGNATURE_BYTES - len(head))):
            head += more
        suffix = image_suffix(head)
        if suffix is None:
            raise NotServed("not a PNG, JPEG, WebP or GIF image")
        return OpenImage(handle, head, _MEDIA_TYPES[suffix], size)
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        raise


def _open(root: Path | ObjectStoragePath, parts: tuple[str, ...]) -> tuple[IO[bytes], int | None]:
    if isinstance(root, Path):
        try:
            handle = open_regular_below(root, parts)
        except OSError as err:
            raise NotServed(f"cannot be opened: {err.strerror or err}") from None
        return handle, os.fstat(handle.fileno()).st_size
    try:
        remote: IO[bytes] = root.joinpath(*parts).open("rb")
    except (OSError, NotImplementedError, ValueError) as err:
        raise NotServed(f"cannot be opened: {err}") from None
    size = getattr(remote, "size", None)
    return remote, size if isinstance(size, int) else None
