"""What the batch unit tests share: Airflow object storage on fsspec's in-memory filesystem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def memory_store() -> Iterator[None]:
    """fsspec's in-memory filesystem is one per process: empty it afterwards."""
    yield
    from fsspec.implementations.memory import MemoryFileSystem

    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]


def memory_path(url: str) -> Any:
    """An ``ObjectStoragePath`` on fsspec's in-memory filesystem, attached as Airflow's ``memory`` store."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())
    try:
        return ObjectStoragePath(url)
    except TypeError as err:  # Airflow 3.0's ObjectStoragePath refuses the memory:// protocol
        pytest.skip(f"no in-memory object storage here: {err}")
