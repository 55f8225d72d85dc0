"""The provider's errors are Airflow errors, and keep their own type when they fail a task for good."""

from __future__ import annotations

import subprocess
import sys

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedError,
    FireRedJobFailedError,
    FireRedTimeoutError,
    FireRedValidationError,
)
from airflow_provider_firered.utils.airflow_errors import for_airflow


def test_every_provider_error_is_an_airflow_exception() -> None:
    for kind in (FireRedError, FireRedApiError, FireRedJobFailedError, FireRedTimeoutError):
        assert issubclass(kind, AirflowException)


def test_a_final_error_keeps_its_type_and_skips_retries() -> None:
    error = for_airflow(FireRedValidationError("prompt", "must not be empty"))
    assert isinstance(error, FireRedValidationError)
    assert isinstance(error, AirflowFailException)
    retryable = for_airflow(FireRedApiError(503, "Service Unavailable"))
    assert isinstance(retryable, FireRedApiError)
    assert not isinstance(retryable, AirflowFailException)


def test_modules_import_on_their_own_before_airflow() -> None:
    # Airflow loads the provider's connection form while it starts: no import cycle through the errors.
    modules = ("exceptions", "gateway.connection_extras", "utils.retry", "get_provider_info", "hooks.firered")
    for module in modules:
        done = subprocess.run(
            [sys.executable, "-c", f"import airflow_provider_firered.{module}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (module, done.stderr[-2000:])
