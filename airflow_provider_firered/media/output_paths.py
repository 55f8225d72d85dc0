"""Where a job's outputs go: the target of a download, the output file names, and the folder check."""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from urllib.parse import unquote, urlsplit

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.gateway.connection_extras import clip
from airflow_provider_firered.gateway.results import status_path

#: The only extensions an output file gets, by media type; anything else is saved as ``.bin``.
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
#: A request id up to this long is used whole in output names (the gateway's are about 60).
MAX_ID_IN_NAME = 80
#: A longer id is shortened to this many of its first characters, ``~`` and 16 hex of its SHA-256.
SHORT_ID_PREFIX = 40
#: Output positions are below this (a job has a handful of outputs), so the index stays short too.
MAX_OUTPUT_INDEX = 9999


def as_target(
    destination: str | os.PathLike[str] | ObjectStoragePath, *, field_name: str = "destination"
) -> Path | ObjectStoragePath:
    """
    Return a local ``Path`` for plain paths and ``file://`` URLs, an ``ObjectStoragePath`` for other URLs.

    ``file:///x`` and ``file://localhost/x`` are the local path ``/x``; a ``file://`` URL naming
    another host is refused.

    :param destination: a path, a URL or an ``ObjectStoragePath``.
    :param field_name: the name used in errors.
    """
    if isinstance(destination, ObjectStoragePath):
        return destination
    text = os.fspath(destination)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc.lower() not in ("", "localhost"):
            raise FireRedValidationError(
                field_name, f"a file:// URL must name no host or localhost, got {parts.netloc!r}"
            )
        return Path(unquote(parts.path))
    if "://" in text and scheme:
        return ObjectStoragePath(text)
    return Path(text)


def output_name(request_id: str, index: int, media_type: str | None) -> str:
    """
    Name an output file ``<request_id>_<index><ext>``, short enough for any file system.

    The request id is checked to be a plain gateway id; one longer than :data:`MAX_ID_IN_NAME` is
    shortened to its first :data:`SHORT_ID_PREFIX` characters, ``~`` and 16 hex digits of its SHA-256
    (``~`` is never part of an id, so a shortened id cannot be mistaken for a whole one). The
    extension comes from :data:`EXTENSIONS` by media type, else ``.bin``; nothing comes from the
    media URL. A name is at most 90 characters, its temporary ``.<name>.<random>.part`` under 120:
    far below the 255 bytes a file name may have.

    :param request_id: the id that was asked for.
    :param index: the output's position among the media URLs.
    :param media_type: the answer's ``media_type``.
    """
    status_path(request_id)  # raises unless the id is letters, digits and '._:-', starting alphanumeric
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_OUTPUT_INDEX:
        raise FireRedValidationError(
            "index", f"must be an integer from 0 to {MAX_OUTPUT_INDEX}, got {clip(index)}"
        )
    kind = (media_type or "").split(";")[0].strip().lower()
    return f"{name_part(request_id)}_{index}{EXTENSIONS.get(kind, '.bin')}"


def name_part(request_id: str) -> str:
    """
    Give the part of a file name that stands for ``request_id``: the id, or its shortened form.

    :param request_id: a plain gateway id (checked by the caller).
    """
    if len(request_id) <= MAX_ID_IN_NAME:
        return request_id
    digest = hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:16]
    return f"{request_id[:SHORT_ID_PREFIX]}~{digest}"


def check_inside(
    target: Path | ObjectStoragePath, base: Path | ObjectStoragePath, *, field_name: str = "output_dir"
) -> None:
    """
    Refuse ``target`` unless it lies inside ``base``, both resolved (symlinks, ``..``).

    :raises FireRedValidationError: naming ``field_name``.
    """
    if isinstance(target, Path) and isinstance(base, Path):
        inside = Path(os.path.realpath(target)).is_relative_to(os.path.realpath(base))
    elif isinstance(target, ObjectStoragePath) and isinstance(base, ObjectStoragePath):
        root = posixpath.normpath("/" + base.path)
        path = posixpath.normpath("/" + target.path)
        inside = target.protocol == base.protocol and path.startswith(root.rstrip("/") + "/")
    else:
        inside = False
    if not inside:
        raise FireRedValidationError(field_name, f"refusing to write {target}: it is not inside {base}")
