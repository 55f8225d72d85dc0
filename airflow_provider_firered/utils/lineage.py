"""
Describe an edit for OpenLineage: the source images read, the files written and what the run paid.

Datasets follow the OpenLineage naming spec: an ``http(s)`` image is namespace ``scheme://host[:port]``
and name its path; a local file is namespace ``file`` and name its absolute path (``file://host`` for
another host's file); an object is namespace ``s3://bucket`` (or ``gs://bucket``) and name its key.
Names never carry a secret: the user and password of a URL, its query string (a signed URL's
signature) and its fragment are dropped, and so is the connection id of an ``ObjectStoragePath``.

The OpenLineage classes are imported only when called: the ``openlineage`` extra
(``apache-airflow-providers-openlineage``) brings them; :func:`dataset_name` needs nothing.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse, urlsplit

from airflow_provider_firered import __version__
from airflow_provider_firered.utils.urls import MAX_URL_LENGTH

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.generated.base import Dataset, RunFacet

#: The key of the run facet in an OpenLineage event (``{prefix}_{name}``, as the spec asks).
RUN_FACET_KEY = "fireRed_edits"
#: The run facet's class (``{prefix}{name}RunFacet``).
RUN_FACET_CLASS_NAME = "FireRedEditsRunFacet"
#: Where the run facet's schema is described, one URL per version of the provider.
RUN_FACET_SCHEMA_URL = (
    f"https://pypi.org/project/airflow-provider-firered/{__version__}/#/$defs/{RUN_FACET_CLASS_NAME}"
)

#: Object stores: scheme -> the namespace's scheme (the bucket is the namespace, the key the name).
_OBJECT_STORES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: A text that starts like ``data:`` or ``mailto:`` is a URL without an authority, not a path.
_SCHEME_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MODEL_MAX_LENGTH = 256
#: The most input datasets a batch's event lists (:func:`bounded_input_datasets`).
MAX_INPUT_DATASETS = 1000


def openlineage_available() -> bool:
    """Return whether the OpenLineage provider (the ``openlineage`` extra) is installed."""
    try:
        import airflow.providers.openlineage.extractors  # noqa: F401
        import openlineage.client.generated.base  # noqa: F401
    except ImportError:
        return False
    return True


def dataset_name(location: object) -> tuple[str, str] | None:
    """
    Return the OpenLineage ``(namespace, name)`` of an image or file, or ``None`` if it names none.

    Nothing secret is kept: no user or password, no query string, no fragment. ``None`` is returned for
    a ``data:`` URL, a URL without a host, a malformed one, or any text with a control character.

    :param location: an ``http(s)``, ``file``, ``s3`` or ``gs`` URL, a local path, or an
        ``ObjectStoragePath``.
    """
    text = _location_text(location)
    if not text or len(text) > MAX_URL_LENGTH or _CONTROL.search(text):
        return None
    if "://" not in text:
        if _SCHEME_PREFIX.match(text):
            return None
        return "file", os.path.abspath(text)
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = unquote(parts.path) or "/"
        return ("file", path) if host in (None, "", "localhost") else (f"file://{host}", path)
    if scheme in _OBJECT_STORES:
        bucket = parts.netloc.rpartition("@")[2]
        if not bucket:
            return None
        return f"{_OBJECT_STORES[scheme]}://{bucket}", unquote(parts.path).lstrip("/") or "/"
    if not host:
        return None
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        authority += f":{port}"
    # urlparse splits off a last segment's ";parameters" (a session id rides there).
    path = urlparse(text).path if scheme in _DEFAULT_PORTS else parts.path
    return f"{scheme}://{authority}", path or "/"


def input_datasets(urls: Iterable[object]) -> list[Dataset]:
    """
    Return the datasets of the source images, once each, in order; what names no dataset is left out.

    :param urls: the images' URLs (or paths).
    """
    return _datasets(urls)


def bounded_input_datasets(urls: Iterable[object], limit: int = MAX_INPUT_DATASETS) -> list[Dataset]:
    """
    Return the datasets of a batch's source images, at most ``limit`` of them.

    Up to ``limit`` distinct images, each is a dataset. Beyond it, each folder the images come from is
    one (namespace, folder path ending in ``/``), and if there are still more, each namespace is one
    (name ``/``): an event stays small for 10,000 images, and still says where they were read.

    :param urls: the images' URLs (or paths).
    :param limit: the most datasets returned (at least 1).
    """
    from openlineage.client.generated.base import Dataset

    names = list(dict.fromkeys(n for n in map(dataset_name, urls) if n is not None))
    if len(names) > limit:
        names = list(dict.fromkeys((namespace, name.rpartition("/")[0] + "/") for namespace, name in names))
    if len(names) > limit:
        names = list(dict.fromkeys((namespace, "/") for namespace, _name in names))
    return [Dataset(namespace=namespace, name=name) for namespace, name in names[: max(limit, 1)]]


def output_datasets(paths: Iterable[object]) -> list[Dataset]:
    """
    Return the datasets of the files written (or of an output root), once each, in order.

    :param paths: local paths, ``file://``, ``s3://bucket/key`` or ``gs://`` URLs, ``ObjectStoragePath``.
    """
    return _datasets(paths)


@functools.cache
def run_facet_class() -> type[RunFacet]:
    """Return the class of the run facet, :data:`RUN_FACET_CLASS_NAME`, derived from ``RunFacet``."""
    import attr
    from openlineage.client.generated.base import RunFacet

    @attr.define(kw_only=True)
    class FireRedEditsRunFacet(RunFacet):  # type: ignore[misc,unused-ignore]
        """What a FireRed task paid for and reused, with OpenLineage's ``_producer`` and ``_schemaURL``."""

        requestIdsCount: int = attr.field(default=0)  # OpenLineage fields are camelCase
        paid: int = attr.field(default=0)
        reused: int = attr.field(default=0)
        failed: int = attr.field(default=0)
        model: str | None = attr.field(default=None)

        @staticmethod
        def _get_schema() -> str:
            return RUN_FACET_SCHEMA_URL

    # Pickled by name, like a class defined at the top of this module (see __getattr__).
    FireRedEditsRunFacet.__module__ = __name__
    FireRedEditsRunFacet.__qualname__ = RUN_FACET_CLASS_NAME
    return FireRedEditsRunFacet


def run_facet(request_ids_count: int, paid: int, reused: int, failed: int, model: str | None) -> RunFacet:
    """
    Return the run facet of a task: its gateway request ids, paid edits, reused edits, failed items, model.

    :param request_ids_count: how many gateway request ids the task's edits have.
    :param paid: the paid submits this task sent.
    :param reused: the edits taken from an earlier run.
    :param failed: the items that ended without an edit.
    :param model: the model id, or ``None`` when unknown.
    """
    text = model.strip()[:_MODEL_MAX_LENGTH] if isinstance(model, str) and model.strip() else None
    facet_class: Any = run_facet_class()  # its own fields are unknown to a type checker
    facet: RunFacet = facet_class(
        requestIdsCount=_count(request_ids_count),
        paid=_count(paid),
        reused=_count(reused),
        failed=_count(failed),
        model=text,
    )
    return facet


def operator_lineage(
    inputs: Sequence[Dataset], outputs: Sequence[Dataset], facet: RunFacet | None = None
) -> OperatorLineage[Dataset, RunFacet]:
    """
    Return what ``get_openlineage_facets_on_complete`` gives Airflow: the datasets and the run facet.

    :param inputs: the datasets read (:func:`input_datasets`).
    :param outputs: the datasets written (:func:`output_datasets`).
    :param facet: the run facet (:func:`run_facet`), under :data:`RUN_FACET_KEY`.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=list(inputs),
        outputs=list(outputs),
        run_facets={RUN_FACET_KEY: facet} if facet is not None else {},
    )


def __getattr__(name: str) -> Any:
    # ``FireRedEditsRunFacet`` is importable (and so unpickled) from here once OpenLineage is installed.
    if name == RUN_FACET_CLASS_NAME:
        return run_facet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _datasets(locations: Iterable[object]) -> list[Dataset]:
    from openlineage.client.generated.base import Dataset

    names = dict.fromkeys(n for n in map(dataset_name, locations) if n is not None)
    return [Dataset(namespace=namespace, name=name) for namespace, name in names]


def _location_text(location: object) -> str | None:
    if isinstance(location, str):
        return location
    if isinstance(location, os.PathLike):
        path = os.fspath(location)
        return path if isinstance(path, str) else None
    if location is None or isinstance(location, (bytes, int, float)):
        return None
    # An ObjectStoragePath is not os.PathLike: its text is its URL (with the connection id as user).
    return str(location)


def _count(value: int) -> int:
    return max(0, int(value))
