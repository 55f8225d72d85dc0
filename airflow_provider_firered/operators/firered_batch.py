"""Operator that runs many FireRed edits in one task: waves of submits, one trigger, one manifest."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_provider_firered.batch.items import check_items
from airflow_provider_firered.batch.manifest import manifest_path
from airflow_provider_firered.batch.plan import plan_batch
from airflow_provider_firered.batch.run import BatchRun
from airflow_provider_firered.batch.settings import BatchSettings
from airflow_provider_firered.batch.state import MAX_LEAD
from airflow_provider_firered.batch.waves import first_read_at, ready_at, wake_after, wave_end
from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.gateway.options import DEFAULT_MODEL
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.operators.reporting import (
    announce,
    batch_lineage,
    batch_outcome,
    contact_sheet_address,
)
from airflow_provider_firered.triggers.events import BatchEvent
from airflow_provider_firered.triggers.firered_batch import RESUME_AFTER, FireRedBatchStatusTrigger
from airflow_provider_firered.triggers.polling import DEFER_SLACK
from airflow_provider_firered.utils.airflow_errors import AirflowErrorAdapter
from airflow_provider_firered.utils.saturation import saturation_trigger
from airflow_provider_firered.utils.templates import has_template_syntax

if TYPE_CHECKING:
    from collections.abc import Sequence

    import jinja2
    from airflow.sdk import Context

    from airflow_provider_firered.batch.manifest import ManifestEntry
    from airflow_provider_firered.batch.state import BatchState
    from airflow_provider_firered.exceptions import FireRedApiError


class FireRedBatchEditOperator(BaseOperator):
    """
    Edit many images in one task, paying once for each.

    Items are submitted on the worker in waves of at most ``max_in_flight`` unfinished jobs, waited
    for in one trigger (or on the worker); every output is downloaded to ``<output_root>/<key>/`` and
    the batch's manifest written to ``<output_root>/_manifest.jsonl``.

    Every item is checked before anything is paid; an invalid item is reported and never sent. Each
    request id is kept in ``task_state_store`` (Airflow 3.3+) as soon as the gateway accepts it, and the
    manifest records the batch's progress at every wave, so a retry resumes: finished items are not
    touched, unfinished ones are waited for, ``FAILED`` ones are not paid again and ``ERROR`` ones are
    submitted again. A user's clear starts afresh, except that a job still running (its task was
    stopped by a user while deferred) of an item left unchanged is collected, not paid again. An item
    whose fingerprint (model, prompt, parameters, and each input image's URL, ``ETag``,
    ``Last-Modified`` and ``Content-Length``) matches a ``COMPLETED`` item of ``previous`` with its
    outputs present is copied, not submitted.

    With ``max_paid_edits``, the task sends at most that many paid submits over all its tries (a
    retry, or a clear, counts what earlier tries sent); the items beyond it are not sent, recorded
    ``over_budget`` and counted against ``max_failed``. With ``dry_run``, nothing is sent: the manifest
    is the plan (``would_edit``, ``would_reuse``, ``would_fail``, ``invalid``, ``over_budget``, each
    with its reason), and no later run reuses anything from it.

    Returns the batch's figures (:class:`~airflow_provider_firered.batch.figures.NightFigures`:
    ``total``, ``edited``, ``reused``, ``failed``, ``over_budget``, ``paid``, ``pending``, the plan's
    ``would_*`` and ``invalid``, ``dry_run``) with ``manifest`` and ``output_root``; per-item results
    are in the manifest, not in XCom. Each outlet asset's event carries the same figures with
    ``manifest``, ``output_root`` and ``contact_sheet`` (a dry run's says ``dry_run``); its OpenLineage
    lineage is the source images in and the output root out (:mod:`.reporting`).

    :param edits: the items: ``{"key", "prompt", "images"}`` and optionally ``model`` and
        ``parameters``. ``key`` names the item's output folder: a plain folder name, unique in the
        batch. (templated; may be an XCom)
    :param output_root: where outputs and the manifest go: a local folder or an object storage URL.
        (templated)
    :param model: the model of items that do not name one.
    :param parameters: the options of items that do not give theirs. (templated)
    :param firered_conn_id: the FireRed connection.
    :param max_in_flight: the most jobs of this batch unfinished at the gateway at once.
    :param poll_interval: seconds between status reads of each job, at least 1.
    :param timeout: seconds one try of the batch may wait in all; unfinished items then fail (a retry
        waits for them again).
    :param start_timeout: seconds a job may stay ``QUEUED`` after its submit; it then fails (final).
    :param max_failed: how many items may fail before the task fails (after every success is collected).
    :param previous: an earlier run's output root, or a list of them, whose unchanged items are reused;
        a root holds a manifest itself or in its direct subfolders. (templated)
    :param force: edit every item, reusing nothing.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param download_threads: how many submits, downloads and HEAD requests run at once.
    :param max_paid_edits: the most paid submits (accepted by the gateway, or maybe accepted) the task
        sends over all its tries; None (the default) for no limit. Reused items cost nothing.
    :param dry_run: plan the batch and send nothing: write the plan as the manifest, return its figures.
    """

    template_fields: Sequence[str] = ("edits", "output_root", "parameters", "previous")
    template_fields_renderers = {"edits": "json", "parameters": "json"}
    ui_color = "#ffd0bd"

    def __init__(
        self,
        *,
        edits: list[dict[str, Any]],
        output_root: str,
        model: str = DEFAULT_MODEL,
        parameters: dict[str, Any] | None = None,
        firered_conn_id: str = FireRedHook.default_conn_name,
        max_in_flight: int = 100,
        poll_interval: float = 10.0,
        timeout: float = 6 * 3600.0,
        start_timeout: float | None = None,
        max_failed: int = 0,
        previous: str | list[str] | None = None,
        force: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        download_threads: int = 8,
        max_paid_edits: int | None = None,
        dry_run: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.edits = edits
        self.output_root = output_root
        self.model = model
        self.parameters = parameters
        self.firered_conn_id = firered_conn_id
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.max_failed = max_failed
        self.previous = previous
        self.force = force
        self.deferrable = deferrable
        self.download_threads = download_threads
        self.max_paid_edits = max_paid_edits
        # Not ``self.dry_run``: that is BaseOperator's own method (``airflow tasks test --dry-run``).
        self.plan_only = dry_run

    @cached_property
    def hook(self) -> FireRedHook:
        """Return the FireRed hook (created on first use, never in ``__init__``)."""
        return FireRedHook(self.firered_conn_id, request_log_level=logging.DEBUG)

    # -- arguments ----------------------------------------------------------------------------------

    def _check_arguments(self) -> BatchSettings:
        """Check the (rendered) arguments, naming the first bad one; return them as the batch's settings."""
        return BatchSettings.checked(
            output_root=self.output_root,
            max_in_flight=self.max_in_flight,
            poll_interval=self.poll_interval,
            timeout=self.timeout,
            start_timeout=self.start_timeout,
            max_failed=self.max_failed,
            previous=self.previous,
            force=self.force,
            deferrable=self.deferrable,
            download_threads=self.download_threads,
            max_paid_edits=self.max_paid_edits,
            dry_run=self.plan_only,
        )

    def _run(self) -> BatchRun:
        """Check the arguments, then every item (once); return the batch's run for this process."""
        settings = self._check_arguments()
        items, invalid = check_items(self.edits, self.model, self.parameters)
        return BatchRun(settings, items, invalid, self.hook, self.log)

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """
        Render a templated field; a string without template syntax is kept as it is, not compiled.

        ``edits`` holds thousands of strings (keys, prompts, URLs), rendered again each time the task
        resumes after a wait: compiling each as a Jinja template took about a second per 500 items.
        A string with the environment's delimiters (or ending with a ``template_ext``) renders as
        Airflow renders it.

        :param content: the field's value (strings inside collections are rendered one by one).
        :param context: the task's context.
        :param jinja_env: the Jinja environment (the DAG's, by default).
        :param seen_oids: values already rendered (Airflow's guard against cycles).
        """
        if isinstance(content, str):
            env = jinja_env or self.get_template_env()
            if not content.endswith(tuple(self.template_ext)) and not has_template_syntax(content, env):
                return content
            jinja_env = env
        return super().render_template(content, context, jinja_env, seen_oids)

    # -- Airflow's entry points ---------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """
        Start the batch (or resume its earlier try), then submit, wait and collect until it ends.

        :param context: the task's context.
        """
        with AirflowErrorAdapter():
            run = self._run()
            if run.settings.dry_run:
                return self._done(context, run, plan_batch(run), [])
            return self._advance(context, run, run.start(context))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Resume after the trigger fired: collect what ended, then submit the next wave or finish.

        :param context: the task's context.
        :param event: the trigger's event (a :class:`~airflow_provider_firered.triggers.events.BatchEvent`).
        """
        with AirflowErrorAdapter():
            run = self._run()
            batch = run.carry_on()
            batch.take_event(BatchEvent.from_dict(event), resumed_at=time.time())
            return self._advance(context, run, batch)

    def resume_after_saturation(
        self,
        context: Context,
        event: Any = None,  # noqa: ARG002  Airflow passes the timer's event; the moment is all it says
        deadline: float = 0.0,
    ) -> dict[str, Any]:
        """
        Resume after waiting out a saturated gateway: submit again, within the same try's deadline.

        :param context: the task's context.
        :param event: the timer's event (unused).
        :param deadline: when the try stops waiting (epoch seconds).
        """
        with AirflowErrorAdapter():
            run = self._run()
            batch = run.carry_on()
            # (``dag.test()`` passes the event alone): the progress file keeps the deadline.
            batch.deadline = deadline or run.kept_deadline()
            return self._advance(context, run, batch)

    # -- waiting ------------------------------------------------------------------------------------

    def _advance(self, context: Context, run: BatchRun, batch: BatchState) -> dict[str, Any]:
        """
        Run waves until the batch waits (deferred, or here) or finishes.

        Each wave frees the slots of what ended, submits the next items into them and downloads what
        completed; the batch then waits for half a wave to end (:func:`wake_after`), its first read
        timed for the wave's expected end (:func:`first_read_at`). A deferred batch comes back that
        much ahead of the end that the way back from trigger to task is over by then
        (:func:`ready_at`), and waits for the end here.
        """
        while True:
            if batch.ahead_of:
                self._wait_here(run, batch)
            saturated = run.wave(context, batch)
            if saturated is not None:
                return self._wait_for_room(context, run, batch, saturated)
            if not batch.in_flight:
                return self._finish(context, run, batch)
            run.save(batch)
            # The hold: Airflow 3.3 can fail a task resumed before its deferral was recorded.
            earliest = time.time() + (RESUME_AFTER if self.deferrable else 0.0)
            due = wave_end(batch)
            trigger = self._trigger(
                batch,
                not_before=first_read_at(due, earliest, run.settings.poll_interval),
                ready_at=ready_at(due, batch.lead, earliest) if self.deferrable else 0.0,
                due=due or 0.0,
            )
            if self.deferrable:
                self.defer(
                    trigger=trigger,
                    method_name="execute_complete",
                    timeout=timedelta(seconds=max(batch.deadline - time.time(), 0) + DEFER_SLACK),
                )
            batch.take_event(_event_here(trigger))

    def _wait_here(self, run: BatchRun, batch: BatchState) -> None:
        """
        Wait on the worker for the wave the task came back ahead of, a poll and a second at most.

        A wave later than that is waited for deferred again, from the next wave on.

        :param run: the try.
        :param batch: the batch's state; the event that brought it back said ``ahead_of``.
        """
        now = time.time()
        # The trigger fired at most MAX_LEAD before the end it names: never wait here longer than that.
        due = min(batch.ahead_of, now + MAX_LEAD)
        if due > now:
            self.log.info("Back %.1fs ahead of the wave's expected end: waiting for it here", due - now)
        else:
            self.log.info("Back %.1fs after the wave's expected end: reading it here", now - due)
        trigger = self._trigger(
            batch,
            not_before=first_read_at(due, now, run.settings.poll_interval),
            ready_at=max(due, now) + run.settings.poll_interval + 1.0,
        )
        batch.take_event(_event_here(trigger))

    def _trigger(
        self, batch: BatchState, *, not_before: float, ready_at: float, due: float = 0.0
    ) -> FireRedBatchStatusTrigger:
        """Return the trigger that waits for the batch's jobs in flight (see its parameters)."""
        return FireRedBatchStatusTrigger(
            requests=[[rid, start] for rid, (_key, start) in batch.in_flight.items()],
            firered_conn_id=self.firered_conn_id,
            poll_interval=self.poll_interval,
            deadline=batch.deadline,
            min_ended=wake_after(len(batch.in_flight), len(batch.queue)),
            not_before=not_before,
            manifest=str(manifest_path(self.output_root)),
            ready_at=ready_at,
            due=due,
        )

    def _wait_for_room(
        self, context: Context, run: BatchRun, batch: BatchState, error: FireRedApiError
    ) -> dict[str, Any]:
        """
        Wait out a saturated gateway with none of this batch's jobs running, holding no worker slot.

        The task defers on a timer until the gateway's ``Retry-After``, then submits again; past the
        try's deadline the queued items fail ``NOT_SUBMITTED`` instead (a retry submits them).
        """
        delay = run.room_delay(error)
        if time.time() + delay >= batch.deadline:
            batch.give_up_waiting()
            return self._finish(context, run, batch)
        run.save(batch)
        self.log.warning(
            "The gateway is saturated (%s) and no job of this batch is running: deferring for %.1fs, "
            "holding no worker slot, then submitting again",
            error,
            delay,
        )
        self.defer(
            trigger=saturation_trigger(delay),
            method_name="resume_after_saturation",
            kwargs={"deadline": batch.deadline},
            timeout=timedelta(seconds=delay + DEFER_SLACK),
        )
        raise AssertionError("unreachable: defer() raises")  # pragma: no cover

    # -- the end ------------------------------------------------------------------------------------

    def _finish(self, context: Context, run: BatchRun, batch: BatchState) -> dict[str, Any]:
        """End the batch (see :meth:`BatchRun.finish`); tell Airflow its figures."""
        result = run.finish(batch)
        return self._done(context, run, result, batch.manifest())

    def _done(
        self, context: Context, run: BatchRun, result: dict[str, Any], entries: list[ManifestEntry]
    ) -> dict[str, Any]:
        """Give the outlet assets' events the batch's figures, keep them for lineage; return the result."""
        images = [image for item in run.items for image in item.images]
        sheet = contact_sheet_address(context["ti"])
        announce(self, context, batch_outcome(result, entries, images, [i.model for i in run.items], sheet))
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:  # noqa: ARG002
        """
        Return the batch's OpenLineage datasets (source images in, the output root out) and run facet.

        The inputs are capped at :data:`~airflow_provider_firered.utils.lineage.MAX_INPUT_DATASETS`
        (then grouped by folder, or by host); a dry run writes no output dataset.

        :param task_instance: the finished task instance (everything needed is kept on the operator).
        """
        return batch_lineage(self)


def _event_here(trigger: FireRedBatchStatusTrigger) -> BatchEvent:
    """Run the trigger on the worker (``deferrable=False``, or back ahead of a wave); return its event."""
    return BatchEvent.from_dict(asyncio.run(_first_event(trigger)))


async def _first_event(trigger: FireRedBatchStatusTrigger) -> dict[str, Any]:
    """Return the payload of the trigger's one event, run on this event loop."""
    async for event in trigger.run():
        return dict(event.payload)
    raise FireRedError("the FireRed batch trigger ended without an event")
