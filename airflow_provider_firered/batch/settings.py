"""Check a batch's arguments once and hold them, with where the batch logs, for the batch's machinery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, validate_timeout
from airflow_provider_firered.media.output_paths import as_target

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath

#: The most jobs of one batch unfinished at the gateway at once.
MAX_IN_FLIGHT = 10_000


class BatchLog(Protocol):
    """Where the batch logs: the operator's own logger, so its lines stay the task's."""

    def info(self, msg: str, /, *args: Any) -> Any:
        """Log an INFO line."""

    def warning(self, msg: str, /, *args: Any) -> Any:
        """Log a WARNING line."""


@dataclass(frozen=True)
class BatchSettings:
    """
    A batch's checked arguments (see ``FireRedBatchEditOperator`` for each one's meaning).

    :param output_root: where outputs and the manifest go: a local folder or an object storage URL.
    :param max_in_flight: the most jobs of this batch unfinished at the gateway at once.
    :param poll_interval: seconds between status reads of each job.
    :param timeout: seconds one try of the batch may wait in all.
    :param start_timeout: seconds a job may stay ``QUEUED`` after its submit; None for no limit.
    :param max_failed: how many items may fail before the task fails.
    :param previous: the earlier runs' output roots whose unchanged items are reused.
    :param force: edit every item, reusing nothing.
    :param deferrable: wait in the triggerer.
    :param download_threads: how many submits, downloads and HEAD requests run at once.
    :param max_paid_edits: the most paid submits the task sends over all its tries; None for no limit.
    :param dry_run: plan the batch (checks, the earlier run, fingerprints) and send nothing.
    """

    output_root: str
    max_in_flight: int
    poll_interval: float
    timeout: float
    start_timeout: float | None
    max_failed: int
    previous: tuple[str, ...]
    force: bool
    deferrable: bool
    download_threads: int
    max_paid_edits: int | None = None
    dry_run: bool = False

    @classmethod
    def checked(
        cls,
        *,
        output_root: Any,
        max_in_flight: Any,
        poll_interval: Any,
        timeout: Any,
        start_timeout: Any,
        max_failed: Any,
        previous: Any,
        force: bool,
        deferrable: bool,
        download_threads: Any,
        max_paid_edits: Any = None,
        dry_run: Any = False,
    ) -> BatchSettings:
        """
        Check the batch's (rendered) arguments; raise a validation error naming the first bad one.

        :param output_root: the ``output_root`` argument.
        :param max_in_flight: the ``max_in_flight`` argument.
        :param poll_interval: the ``poll_interval`` argument.
        :param timeout: the ``timeout`` argument.
        :param start_timeout: the ``start_timeout`` argument.
        :param max_failed: the ``max_failed`` argument.
        :param previous: the ``previous`` argument: a root, a list of them, or None.
        :param force: the ``force`` argument.
        :param deferrable: the ``deferrable`` argument.
        :param download_threads: the ``download_threads`` argument.
        :param max_paid_edits: the ``max_paid_edits`` argument: a whole number of at least 1, or None.
        :param dry_run: the ``dry_run`` argument: True or False.
        """
        WaitPolicy(poll_interval, None, start_timeout)
        for name, value, low, high in (
            ("max_in_flight", max_in_flight, 1, MAX_IN_FLIGHT),
            ("max_failed", max_failed, 0, None),
            ("download_threads", download_threads, 1, 64),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high and value > high)
            ):
                allowed = f"from {low} to {high}" if high else f"at least {low}"
                raise FireRedValidationError(name, f"must be a whole number {allowed}, got {value!r}")
        if max_paid_edits is not None and (
            isinstance(max_paid_edits, bool) or not isinstance(max_paid_edits, int) or max_paid_edits < 1
        ):
            raise FireRedValidationError(
                "max_paid_edits",
                f"must be a whole number of at least 1, or None for no limit, got {max_paid_edits!r}",
            )
        if not isinstance(dry_run, bool):
            raise FireRedValidationError("dry_run", f"must be True or False, got {dry_run!r}")
        validate_timeout(timeout)
        if not output_root or not isinstance(output_root, str):
            raise FireRedValidationError("output_root", f"must be a folder path or URL, got {output_root!r}")
        as_target(output_root, field_name="output_root")
        roots = _roots(previous)
        if not all(isinstance(root, str) and root for root in roots):
            raise FireRedValidationError(
                "previous", f"must be a path or URL, or a list of them, got {previous!r}"
            )
        return cls(
            output_root=output_root,
            max_in_flight=max_in_flight,
            poll_interval=poll_interval,
            timeout=timeout,
            start_timeout=start_timeout,
            max_failed=max_failed,
            previous=tuple(roots),
            force=force,
            deferrable=deferrable,
            download_threads=download_threads,
            max_paid_edits=max_paid_edits,
            dry_run=dry_run,
        )

    def root(self) -> Path | ObjectStoragePath:
        """Return the output root as a local path or an ``ObjectStoragePath``."""
        return as_target(self.output_root, field_name="output_root")


def _roots(previous: Any) -> list[Any]:
    if previous is None or previous == "":
        return []
    return list(previous) if isinstance(previous, (list, tuple)) else [previous]
