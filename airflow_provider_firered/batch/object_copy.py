"""
Copy an earlier output inside one S3 store server-side: its bytes never pass through the worker.

A batch that reuses an unchanged item's outputs on S3 would otherwise read each output and upload it
again (S3 -> worker -> S3). When the earlier output and this run's folder are in one store (one
filesystem object: the same protocol and connection), the object is checked where it lies and
copied by the store itself (``CopyObject``):

1. its metadata is read once (``HEAD``): a regular object, at most ``max_download_bytes`` long;
2. only its first bytes are read (a ranged ``GET``) and must be a PNG, JPEG, WebP or GIF image;
3. the store copies it to this run's own output name.

Both the ranged read and the copy are pinned to the ETag read in step 1 (``If-Match`` on the
``GET``, ``x-amz-copy-source-if-match`` on the copy): an object replaced after its check is refused
by the store itself (412) and nothing is copied. A precondition rather than a check of the copy
afterwards: it costs no request, and a copy's ETag need not equal its source's (multipart uploads,
SSE-KMS), so an after-check would have to read the copy again. s3fs passes both arguments to the
S3 call as they are; AWS S3 and SeaweedFS honour them (the integration tests replace the object
just before each of the two requests). A store that ignored them would copy what the object holds
at the copy: that is not guarded against.

A ``CopyObject`` makes the target appear whole, so no temporary name is needed. Local disks, other
stores and any case where the two are not one S3 store are left to the streaming copy of
:mod:`~airflow_provider_firered.batch.earlier_runs`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.exceptions import FireRedError

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
    if fs is not target_dir.fs:
        return None
    try:
        from s3fs import S3FileSystem
    except ImportError:  # no S3 filesystem installed: the object is not on S3
        return None
    return fs if isinstance(fs, S3FileSystem) else None


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
    try:
        info = fs.info(source.path)
    except (OSError, ValueError) as err:
        raise NotReusable(f"{what}: {err}") from None
    if info.get("type") != "file":
        raise NotReusable(f"{what} is not a regular object")
    size = info.get("size")
    if not isinstance(size, int) or size > max_bytes:
        raise NotReusable(f"{what} is larger than the {max_bytes}-byte max_download_bytes")
    etag = info.get("ETag")
    if not isinstance(etag, str) or not etag:
        return None  # nothing to pin the copy to: stream it
    bucket, key, _ = fs.split_path(source.path)
    head = _first_bytes(fs, bucket, key, min(size, SIGNATURE_BYTES), etag, what) if size else b""
    target: ObjectStoragePath = target_of(head)
    if target.path != source.path:  # a copy onto itself would only rewrite what was checked
        _copy_object(fs, (bucket, key), target.path, etag, what)
    return target


def _first_bytes(fs: Any, bucket: str, key: str, count: int, etag: str, what: str) -> bytes:
    """Return the object's first ``count`` bytes, read with one ranged ``GET`` of the version checked."""
    from fsspec.asyn import sync

    try:
        response = fs.call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{count - 1}", IfMatch=etag
        )
        body = response["Body"]
        try:
            # At most `count` bytes even from a store that ignores Range; closing drops the rest.
            data = sync(fs.loop, body.read, count)
        finally:
            body.close()
    except OSError as err:
        raise NotReusable(f"{what} could not be read as checked (replaced since?): {err}") from None
    return bytes(data)


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
