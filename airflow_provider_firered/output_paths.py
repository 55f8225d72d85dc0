"""Where a job's outputs go: the target of a download, the output file names, and the folder check."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import unquote, urlsplit

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.results import status_path

#: The only extensions an output file gets, by media type; anything else is saved as ``.bin``.
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def as_target(
    destination: str | os.PathLike[str] | ObjectStoragePath, *, field_name: str = "destination"
) -> Path | ObjectStoragePath:
    """
    A local ``Path`` for plain paths and ``file://`` URLs, an ``ObjectStoragePath`` for other URLs.

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
    ``<request_id>_<index><ext>``: the request id checked to be a plain gateway id, the extension
    from :data:`EXTENSIONS` by media type, else ``.bin``. Nothing comes from the media URL.

    :param request_id: the id that was asked for.
    :param index: the output's position among the media URLs.
    :param media_type: the answer's ``media_type``.
    """
    status_path(request_id)  # raises unless the id is letters, digits and '._:-', starting alphanumeric
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise FireRedValidationError("index", f"must be a non-negative integer, got {index!r}")
    kind = (media_type or "").split(";")[0].strip().lower()
    return f"{request_id}_{index}{EXTENSIONS.get(kind, '.bin')}"


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
