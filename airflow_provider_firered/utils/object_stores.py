"""Tell the kinds of object store apart where they behave differently (S3 has keys, not folders)."""

from __future__ import annotations

from typing import Any


def is_s3(fs: Any) -> bool:
    """
    Tell whether ``fs`` is an S3 filesystem (s3fs): keys in a bucket, no folders to create.

    :param fs: an fsspec filesystem (an ``ObjectStoragePath``'s ``fs``).
    """
    try:
        from s3fs import S3FileSystem
    except ImportError:  # no S3 filesystem installed: nothing is on S3
        return False
    return isinstance(fs, S3FileSystem)
