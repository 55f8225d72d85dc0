"""
Provide pytest fixtures that start the FireRed emulator for DAG authors' tests.

pytest loads this plugin through the distribution's ``pytest11`` entry point, so the fixtures are there
wherever the provider is installed; nothing here imports pytest outside a pytest run, and the emulator
(Pillow, the ``emulator`` extra) is imported only when a test asks for a fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_firered.emulator.server import Emulator


def _emulator() -> Emulator:
    try:
        from airflow_provider_firered.emulator.server import Emulator
    except ImportError as error:  # Pillow is missing
        raise pytest.UsageError(
            "the firered_emulator fixtures need the emulator extra: "
            "pip install 'airflow-provider-firered[emulator]'"
        ) from error
    return Emulator()


@pytest.fixture
def firered_emulator() -> Iterator[Emulator]:
    """Start an emulator with fast job timings and stop it after the test."""
    with _emulator().start() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def firered_emulator_session() -> Iterator[Emulator]:
    """Start one emulator for the whole session; call ``reset()`` between uses as needed."""
    with _emulator().start() as emulator:
        yield emulator
