"""
Decide which of the provider's errors Airflow may retry, and raise them as Airflow must see them.

``retryable`` on an error says whether the hook may try the same request again; :data:`FINAL_KINDS`
says whether an Airflow retry of the task can change the outcome, and :class:`AirflowErrorAdapter`
applies it where the operators and the sensor hand errors to Airflow: a final error is raised as
itself, made an ``AirflowFailException`` too, so the task log and ``on_failure_callback`` see the
provider's own type.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TypeVar, cast

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedBatchFailedError,
    FireRedConnectionError,
    FireRedDownloadError,
    FireRedError,
    FireRedJobEndedError,
    FireRedStartTimeoutError,
    FireRedSubmitUncertainError,
    FireRedTimeoutError,
    FireRedValidationError,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FINAL_KINDS", "AirflowErrorAdapter", "as_final", "fails_for_good", "for_airflow"]

#: Which failures no Airflow retry can change, by kind: ``True`` fails the task at once whatever its
#: ``retries``; ``False`` leaves Airflow's ``retries`` to apply; ``None`` follows the error's own
#: ``retryable``. The most specific kind listed wins; a kind not listed keeps Airflow's retries.
FINAL_KINDS: dict[type[FireRedError], bool | None] = {
    FireRedValidationError: True,  # the same input fails the same way on every try
    FireRedSubmitUncertainError: True,  # a retry could pay for the edit twice
    FireRedApiError: None,  # 400/401/402/403/404 are final; 408/429/5xx are not
    FireRedDownloadError: None,  # not an image, too large, a refused host or a CDN 4xx are final
    FireRedJobEndedError: None,  # FAILED was charged and is final; ERROR was not charged
    # The gateway's queue is not moving: a retry could only wait again for the same queued job (a
    # larger start_timeout does that) or, without task_state_store, pay for a second one.
    FireRedStartTimeoutError: True,
    FireRedConnectionError: False,
    FireRedTimeoutError: False,  # the job may still complete: a retry resumes it with a fresh wait
    FireRedBatchFailedError: None,  # a retry resumes ERROR, timed-out and undownloaded items only
}

E = TypeVar("E", bound=FireRedError)


def fails_for_good(error: FireRedError) -> bool:
    """
    Return whether no Airflow retry can change ``error``'s outcome, by :data:`FINAL_KINDS`.

    :param error: the provider's error.
    """
    for kind in type(error).__mro__:
        if kind in FINAL_KINDS:
            final = FINAL_KINDS[kind]
            return not error.retryable if final is None else final
    return False


#: Each kind's final twin, made once (:func:`_final_kind`).
_FINAL_TWINS: dict[type[FireRedError], type[FireRedError]] = {}


def _final_kind(kind: type[E]) -> type[E]:
    """Return ``kind``, also an ``AirflowFailException``: same name and attributes, no Airflow retries."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    if kind not in _FINAL_TWINS:
        namespace = {
            "__module__": kind.__module__,
            "__qualname__": kind.__qualname__,
            "__doc__": kind.__doc__,
        }
        _FINAL_TWINS[kind] = type(kind.__name__, (kind, AirflowFailException), namespace)
    return cast("type[E]", _FINAL_TWINS[kind])


def as_final(error: E) -> E:
    """
    Return ``error`` itself, made an ``AirflowFailException``.

    The task then fails without Airflow retries, and the log and ``on_failure_callback`` still see
    the provider's own type, message and attributes.

    :param error: the provider's error.
    """
    if type(error) not in _FINAL_TWINS.values():
        error.__class__ = _final_kind(type(error))
    return error


def for_airflow(error: E) -> E:
    """
    Return ``error`` as Airflow must see it: final (:func:`as_final`) when :func:`fails_for_good` says so.

    :param error: the provider's error.
    """
    if type(error) in _FINAL_TWINS.values() or not fails_for_good(error):
        return error
    if isinstance(error, FireRedValidationError):
        error.args = (f"Invalid input: {error}",)  # the task log says what kind of failure this is
    return as_final(error)


class AirflowErrorAdapter(AbstractContextManager[None]):
    """
    Raise the provider's errors leaving the block as Airflow must see them (:func:`for_airflow`).

    They are raised without the frames they came through: those hold the key (a ``headers`` or
    ``secret`` local), and a task log may print locals. A class, not ``@contextmanager``: that would
    put the original frames back.
    """

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Raise a provider error leaving the block as :func:`for_airflow` makes it, without its frames."""
        if isinstance(error, FireRedError):
            raise for_airflow(error).with_traceback(None) from None
