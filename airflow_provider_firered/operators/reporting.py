"""
Tell Airflow what a finished FireRed task did: its outlet assets' events and its OpenLineage lineage.

Both come from one :class:`Outcome`, built when the task succeeds and kept on the operator. A deferred
task finishes in ``execute_complete`` on a new operator object (nothing set before deferring is
left), so the outcome is built there from what that method has: the job's result, or the batch's
manifest entries. The OpenLineage listener then calls ``get_openlineage_facets_on_complete`` on that
same object, in the same process; without a kept outcome, the lineage is rebuilt from the task's
XCom result (single edit) or its manifest (batch).

Asset events carry plain JSON values only: counts, the request id, and the same texts XCom holds for
the outputs and the manifest; never the key, nor an image URL (a signed URL's query is a secret).
A dry run's event says ``dry_run: true`` and counts no edit: Airflow records an event for each
declared outlet asset of any successful task, and a consumer must tell a plan from a night's edits.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.batch.figures import NightFigures, figures_from_manifest
from airflow_provider_firered.batch.manifest import read_manifest
from airflow_provider_firered.operators.links import sheet_path
from airflow_provider_firered.utils import lineage

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_provider_firered.batch.manifest import ManifestEntry

#: The operator attribute that keeps a finished task's :class:`Outcome`.
OUTCOME_ATTRIBUTE = "_firered_outcome"

JsonValue = str | int | bool | list[str] | None


@dataclass(frozen=True)
class Outcome:
    """
    What a finished task did, for its asset events and its lineage.

    :param extra: the ``extra`` of each outlet asset's event (plain JSON values).
    :param inputs: the source images' URLs.
    :param outputs: the files written (single edit) or the output root (batch); none for a plan.
    :param request_ids: how many gateway request ids the task's edits have.
    :param paid: the paid submits the task sent.
    :param reused: the edits copied from an earlier run.
    :param failed: the items that failed.
    :param model: the model id (several, comma-separated, for a batch of mixed models).
    """

    extra: dict[str, JsonValue]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    request_ids: int
    paid: int
    reused: int
    failed: int
    model: str | None

    def lineage(self, *, max_inputs: int | None = None) -> OperatorLineage[Any, Any]:
        """
        Return the OpenLineage datasets and run facet of the outcome.

        :param max_inputs: list at most this many input datasets (a batch's cap); None for all.
        """
        if max_inputs is None:
            inputs = lineage.input_datasets(self.inputs)
        else:
            inputs = lineage.bounded_input_datasets(self.inputs, max_inputs)
        facet = lineage.run_facet(self.request_ids, self.paid, self.reused, self.failed, self.model)
        return lineage.operator_lineage(inputs, lineage.output_datasets(self.outputs), facet)


def announce(task: Any, context: Context, outcome: Outcome) -> None:
    """
    Keep the outcome on the operator and put its ``extra`` on each outlet asset's event.

    Only assets get it: an alias, or a reference by name or URI, is left as Airflow handles it.

    :param task: the operator.
    :param context: the task's context.
    :param outcome: what the task did.
    """
    from airflow.sdk import Asset

    setattr(task, OUTCOME_ATTRIBUTE, outcome)
    extra: dict[str, Any] = outcome.extra
    for outlet in getattr(task, "outlets", None) or ():
        if isinstance(outlet, Asset):
            event = context["outlet_events"][outlet]
            event.extra = {**event.extra, **extra}


def kept_outcome(task: Any) -> Outcome | None:
    """
    Return the outcome kept on the operator when its task succeeded in this process, if any.

    :param task: the operator.
    """
    outcome = getattr(task, OUTCOME_ATTRIBUTE, None)
    return outcome if isinstance(outcome, Outcome) else None


# -- a single edit ----------------------------------------------------------------------------------


def edit_outcome(result: Mapping[str, Any], images: Sequence[str], paid: int, model: str) -> Outcome:
    """
    Return the outcome of a single edit from its result (as XCom holds it).

    :param result: the task's result: ``request_id``, ``status``, ``model_id``, ``output_paths``.
    :param images: the source images' URLs.
    :param paid: the submits this edit sent (1, plus one per resubmission of an ``ERROR`` job).
    :param model: the operator's model, when the result names none.
    """
    request_id = result.get("request_id")
    status = result.get("status")
    outputs = [str(path) for path in result.get("output_paths") or ()]
    edited = int(status == "COMPLETED")
    extra: dict[str, JsonValue] = {
        "total": 1,
        "edited": edited,
        "reused": 0,
        "failed": 0,  # a failed edit fails its task: no event
        "paid": paid,
        "request_id": str(request_id) if request_id else None,
        "output_paths": outputs,
        "status": str(status) if status else None,
        "model": str(result.get("model_id") or model),
    }
    return Outcome(
        extra=extra,
        inputs=tuple(str(image) for image in images),
        outputs=tuple(outputs),
        request_ids=paid if request_id else 0,
        paid=paid,
        reused=0,
        failed=0,
        model=str(result.get("model_id") or model),
    )


def edit_lineage(task: Any, task_instance: Any) -> OperatorLineage[Any, Any]:
    """
    Return a single edit's lineage: its kept outcome, else one rebuilt from its XCom result.

    :param task: the :class:`~airflow_provider_firered.operators.firered.FireRedEditOperator`.
    :param task_instance: the finished task instance.
    """
    outcome = kept_outcome(task)
    if outcome is None:
        result = task_instance.xcom_pull(task_ids=task_instance.task_id, map_indexes=task_instance.map_index)
        if not isinstance(result, dict):
            result = {}
        outcome = edit_outcome(result, task.images, int(bool(result.get("request_id"))), task.model)
    return outcome.lineage()


# -- a batch ----------------------------------------------------------------------------------------


def batch_outcome(
    result: Mapping[str, Any],
    entries: Iterable[ManifestEntry],
    images: Iterable[str],
    models: Iterable[str],
    contact_sheet: str | None,
) -> Outcome:
    """
    Return the outcome of a batch from its result (its figures, as XCom holds them) and its manifest.

    :param result: the batch's result: :class:`~airflow_provider_firered.batch.figures.NightFigures`,
        ``manifest`` and ``output_root``.
    :param entries: the batch's manifest entries (for the request ids).
    :param images: the source images' URLs.
    :param models: the items' models.
    :param contact_sheet: the address of the task's contact sheet, if known.
    """
    figures = NightFigures(**{f.name: result[f.name] for f in fields(NightFigures) if f.name in result})
    output_root = str(result.get("output_root") or "")
    extra: dict[str, JsonValue] = {
        **figures.as_asset_extra(),
        "manifest": str(result.get("manifest") or ""),
        "output_root": output_root,
        "contact_sheet": contact_sheet,
    }
    # A reused item keeps the request id of the run it was edited in: not one of this task's.
    requests = {e.request_id for e in entries if e.request_id and e.outcome != "reused" and not e.dry_run}
    return Outcome(
        extra=extra,
        inputs=tuple(images),
        outputs=() if figures.dry_run else (output_root,),
        request_ids=len(requests),
        paid=figures.paid,
        reused=figures.reused,
        failed=figures.failed,
        model=", ".join(sorted(set(models))) or None,
    )


def batch_lineage(task: Any) -> OperatorLineage[Any, Any]:
    """
    Return a batch's lineage: its kept outcome, else one rebuilt from the manifest in its output root.

    :param task: the :class:`~airflow_provider_firered.operators.firered_batch.FireRedBatchEditOperator`.
    """
    outcome = kept_outcome(task)
    if outcome is None:
        entries = read_manifest(task.output_root) or []
        result = {**figures_from_manifest(entries).as_dict(), "output_root": str(task.output_root)}
        images = [image for entry in entries for image in entry.images]
        edits = task.edits if isinstance(task.edits, list) else []
        models = [str(e.get("model") or task.model) for e in edits if isinstance(e, dict)]
        outcome = batch_outcome(result, entries, images, models or [task.model], None)
    return outcome.lineage(max_inputs=lineage.MAX_INPUT_DATASETS)


def contact_sheet_address(ti: Any) -> str:
    """
    Return the root-relative address of a batch task instance's contact sheet in Airflow's UI.

    The FireRed plugin serves it (the task's extra link "Contact sheet" leads there).

    :param ti: the task instance.
    """
    return sheet_path(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
