"""
pytest fixtures for DAG authors and this project's tests.

Enable them with ``pytest_plugins = ["airflow_provider_firered.emulator.testing"]`` in a conftest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from airflow_provider_firered.emulator.server import Emulator

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def firered_emulator() -> Iterator[Emulator]:
    """A started emulator with fast job timings, stopped after the test."""
    with Emulator().start() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def firered_emulator_session() -> Iterator[Emulator]:
    """One emulator for the whole session; call ``reset()`` between uses as needed."""
    with Emulator().start() as emulator:
        yield emulator
