"""
Copy an earlier output inside one S3 store server-side: its bytes never pass through the worker.

A batch that reuses an unchanged item's outputs on S3 would otherwise read each output and upload it
again (S3 -> worker -> S3). When the earlier output and this run's folder are in one store (one
filesystem object: the same protocol and connection), the object is checked where it lies and
copied by the store itself (``CopyObject``), in two requests:

1. only its first bytes are read (a ranged ``GET``): they must be a PNG, JPEG, WebP or GIF image,
   and the answer tells the object's whole size (``Content-Range``), at most ``max_download_bytes``,
   and its ``ETag``;
2. the store copies it to this run's own output name, pinned to that ``ETag``
   (``x-amz-copy-source-if-match``): an object replaced after its check is refused by the store
   itself (412) and nothing is copied.

A precondition rather than a check of the copy afterwards: it costs no request, and a copy's ETag
need not equal its source's (multipart uploads, SSE-KMS), so an after-check would have to read the
copy again. s3fs passes the argument to the S3 call as it is; AWS S3 and SeaweedFS honour it (the
integration tests replace the object just before the copy). A store that ignored it would copy what
the object holds at the copy: that is not guarded against. Each request costs the worker more CPU
than the bytes it moves (signing, parsing: about 2.5 ms here), so none is spent twice: the metadata
the ranged read answers is not asked again with a ``HEAD``.

A ``CopyObject`` makes the target appear whole, so no temporary name is needed. Local disks, other
stores and any case where the two are not one S3 store are left to the streaming copy of
:mod:`~airflow_provider_firered.batch.earlier_runs`.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.utils.object_stores import is_s3

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = ["SIGNATURE_BYTES", "NotReusable", "copy_in_store"]

#: The first bytes of an output that tell its image type (a WebP needs 12).
SIGNATURE_BYTES = 12


class NotReusable(FireRedError):
    """An earlier output that is not copied: the item is edited instead."""


def _one_s3_store(source: ObjectStoragePath, target_dir: ObjectStoragePath) -> Any | None:
    """
    Return the S3 filesystem holding both paths, or None when they are not in one S3 store.

    One store means one filesystem object: Airflow attaches one per protocol and connection, so the
    same object carries one endpoint and one set of credentials. Two connections reaching the same
    bucket are not one store here: a server-side copy reads the source with the credentials of the
    request, and the streaming copy reads it with the earlier root's connection and writes with this
    run's; only with one filesystem are those the same.
    """
    fs = source.fs
    return fs if fs is target_dir.fs and is_s3(fs) else None


def copy_in_store(
    source: ObjectStoragePath,
    target_dir: ObjectStoragePath,
    target_of: Callable[[bytes], Any],
    *,
    max_bytes: int,
    what: str,
) -> ObjectStoragePath | None:
    """
    Copy ``source`` into ``target_dir`` server-side when both lie in one S3 store; else return None.

    :param source: the earlier output (already checked to lie in its key folder).
    :param target_dir: this run's folder for the item.
    :param target_of: gives the copy's location in ``target_dir`` (this run's own name, checked to lie
        inside it) from the output's first bytes; raises :class:`NotReusable` when they are not an
        image's.
    :param max_bytes: the largest output copied (the connection's ``max_download_bytes``).
    :param what: the output as named in messages.
    :return: the copy, or None when the caller streams the output instead.
    :raises NotReusable: saying why the output is not copied; nothing is left at the target then.
    """
    fs = _one_s3_store(source, target_dir)
    if fs is None:
        return None
    bucket, key, _ = fs.split_path(source.path)
    head, size, etag = _first_bytes(fs, bucket, key, what)
    if size > max_bytes:
        raise NotReusable(f"{what} is larger than the {max_bytes}-byte max_download_bytes")
    if not etag:
        return None  # nothing to pin the copy to: stream it
    target: ObjectStoragePath = target_of(head)
    if target.path != source.path:  # a copy onto itself would only rewrite what was checked
        _copy_object(fs, (bucket, key), target.path, etag, what)
    return target


#: ``Content-Range: bytes <first>-<last>/<size>``: the object's whole size after the slash.
_WHOLE_SIZE = re.compile(r"bytes \d+-\d+/(\d+)")


def _first_bytes(fs: Any, bucket: str, key: str, what: str) -> tuple[bytes, int, str | None]:
    """
    Return an object's first bytes, its whole size and its ``ETag``, from one ranged ``GET``.

    The size is the ``Content-Range`` total, or the length of the whole body from a store that
    ignores ``Range``; of that body only :data:`SIGNATURE_BYTES` are read.
    """
    from fsspec.asyn import sync

    try:
        response = fs.call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{SIGNATURE_BYTES - 1}")
        body = response["Body"]
        try:
            # At most SIGNATURE_BYTES even from a store that ignores Range; closing drops the rest.
            data = bytes(sync(fs.loop, body.read, SIGNATURE_BYTES))
        finally:
            body.close()
    except (OSError, ValueError) as err:  # an empty object answers 416: nothing to check either
        raise NotReusable(f"{what}: {err}") from None
    whole = _WHOLE_SIZE.fullmatch(str(response.get("ContentRange") or ""))
    size = int(whole.group(1)) if whole else response.get("ContentLength")
    if not isinstance(size, int) or size < len(data):
        raise NotReusable(f"{what}: the store did not say how large it is")
    etag = response.get("ETag")
    return data, size, etag if isinstance(etag, str) and etag else None


def _copy_object(fs: Any, source: tuple[str, str], target: str, etag: str, what: str) -> None:
    """Copy ``source`` (bucket, key) to ``target`` with one ``CopyObject`` pinned to ``etag``."""
    bucket, key, _ = fs.split_path(target)
    try:
        # One request (fs.cp_file would HEAD the source again); the filesystem's own request
        # arguments (encryption, ACL, requester pays) apply to it as to every call it makes.
        fs.call_s3(
            "copy_object",
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": source[0], "Key": source[1]},
            CopySourceIfMatch=etag,
        )
    except BaseException as err:
        # A copy whose answer was lost may still have been made: the name is this run's own for the
        # item, which is edited instead, so remove it whatever happened.
        with contextlib.suppress(Exception):
            fs.rm_file(target)
        if isinstance(err, OSError):
            raise NotReusable(f"{what} was not copied as checked (replaced since?): {err}") from None
        raise
    finally:
        fs.invalidate_cache(target)
