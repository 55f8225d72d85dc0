"""
Plan a batch without sending anything: a dry run's manifest of what the batch would do.

A dry run goes as far as a real try goes before its first submit (every item checked, the earlier
runs read, the fingerprints taken) and writes a manifest whose every line is marked ``dry_run``:
``would_edit``, ``would_reuse``, ``would_fail``, ``invalid`` or ``over_budget``, each with its
reason. Nothing is submitted, copied or downloaded, and no later run takes a plan for an earlier
run's results.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.batch.figures import OVER_BUDGET, figures_from_manifest
from airflow_provider_firered.batch.manifest import read_manifest, write_manifest
from airflow_provider_firered.batch.reuse import plan_reuse
from airflow_provider_firered.exceptions import FireRedValidationError

if TYPE_CHECKING:
    from airflow_provider_firered.batch.run import BatchRun
    from airflow_provider_firered.batch.state import BatchState

#: What an earlier run's verdict (``reuse.earlier_verdict``) means in a plan.
_PLANNED = {"UNCHANGED": "would_reuse", "FAILED": "would_fail"}


def plan_batch(run: BatchRun) -> dict[str, Any]:
    """
    Write the plan of a batch as its manifest; return its figures (as a real batch returns its own).

    :param run: the batch's run (its settings, items and hook).
    :raises FireRedValidationError: when ``output_root`` holds the manifest of a run that sent edits:
        a plan never replaces the record of what was paid for.
    """
    settings = run.settings
    if any(not entry.dry_run for entry in read_manifest(settings.output_root) or []):
        raise FireRedValidationError(
            "output_root",
            f"{settings.output_root} holds the manifest of a batch that sent edits; a dry run writes its "
            "plan to another output_root, never over that record",
        )
    batch = run.state(time.time() + settings.timeout)
    for item in run.items:
        batch.resume(item, None, None)
    verdicts: dict[str, tuple[str, str]] = {}
    if settings.previous and not settings.force:
        run.fingerprint(batch, batch.queue)
        verdicts = plan_reuse(batch, settings.previous)
    _plan_items(batch, verdicts, settings.max_paid_edits, forced=settings.force)
    entries = batch.manifest()
    for entry in entries:
        entry.dry_run = True
        if entry.outcome == "failed":  # (only invalid items fail before a submit)
            entry.outcome = "invalid"
    manifest = write_manifest(settings.output_root, entries)
    figures = figures_from_manifest(entries)
    run.log.info(
        "Dry run, nothing sent: %d would be edited, %d reused, %d would fail again, %d invalid, "
        "%d over max_paid_edits; plan %s",
        figures.would_edit,
        figures.would_reuse,
        figures.would_fail,
        figures.invalid,
        figures.over_budget,
        manifest,
    )
    return {**figures.as_dict(), "manifest": manifest, "output_root": settings.output_root}


def _plan_items(
    batch: BatchState, verdicts: dict[str, tuple[str, str]], budget: int | None, *, forced: bool
) -> None:
    """Give every item still to submit its planned outcome and reason; the budget as a real try spends it."""
    if forced:
        why = ("FORCED", "force=True: edited whatever an earlier run holds")
    else:
        why = ("NEW", "no earlier run to reuse from")
    over = []
    left = budget
    for item in list(batch.queue):
        entry = batch.entries[item.key]
        status, reason = verdicts.get(item.key, why)
        outcome = _PLANNED.get(status, "would_edit")
        if outcome == "would_edit" and left is not None:
            if left <= 0:
                over.append(entry)
                continue
            left -= 1
        entry.outcome, entry.status, entry.error = outcome, status, reason
    for entry in over:
        entry.outcome, entry.status = OVER_BUDGET, "OVER_BUDGET"
        entry.error = (
            f"would not be sent: over max_paid_edits={budget} ({len(over)} item(s) over it); raise "
            "max_paid_edits to send them"
        )
    batch.queue.clear()
