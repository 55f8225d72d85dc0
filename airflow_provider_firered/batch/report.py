"""
Report a batched catalogue run: its batches' result manifests read and checked, then its files.

The run folder gets ``summary.json`` (written here) and ``index.html``, a contact sheet a person
opens in a browser (:mod:`~airflow_provider_firered.batch.contact_sheet`). The manifests are read as
untrusted input by :mod:`~airflow_provider_firered.batch.run_results`. This module is the report's
public entry point: it also offers the names a DAG needs from those two.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_firered.batch.contact_sheet import (
    CONTACT_SHEET_NAME,
    contact_sheet_html,
    relative_link,
    write_contact_sheet,
)
from airflow_provider_firered.batch.run_results import (
    BatchResult,
    ItemResult,
    RunReport,
    batch_items,
    find_batch_folders,
    is_plain_segment,
    is_web_url,
    read_batch_manifest,
    read_run,
)
from airflow_provider_firered.media.output_paths import as_target
from airflow_provider_firered.utils.atomic_files import write_atomic

__all__ = [
    "CONTACT_SHEET_NAME",
    "SUMMARY_NAME",
    "BatchResult",
    "ItemResult",
    "RunReport",
    "batch_items",
    "contact_sheet_html",
    "find_batch_folders",
    "is_plain_segment",
    "is_web_url",
    "read_batch_manifest",
    "read_run",
    "relative_link",
    "summary_of",
    "write_contact_sheet",
    "write_summary",
]

SUMMARY_NAME = "summary.json"


def summary_of(report: RunReport, **extra: Any) -> dict[str, Any]:
    """
    Return the content of ``summary.json``: figures, figures per batch, the failures and every item.

    The figures are :class:`~airflow_provider_firered.batch.figures.NightFigures` (as the batch tasks'
    XCom carries them); a dry run's summary is its plan (``dry_run`` true, the ``would_*`` figures),
    and its failures are the items that would get no output.

    :param report: the run, from :func:`read_run`.
    :param extra: more top-level fields (the DAG and run ids, ...).
    """
    return {
        **extra,
        "run_folder": report.run_folder,
        **report.figures().as_dict(),
        "batches": [
            {"batch": b.name, "manifest": b.manifest, "found": b.found, **b.figures().as_dict()}
            for b in report.batches
        ],
        "failures": [
            {"key": i.key, "batch": i.batch, "status": i.status, "request_id": i.request_id, "error": i.error}
            for i in report.items
            if i.is_failure
        ],
        "problems": report.problems,
        "items": [
            {
                "key": i.key,
                "batch": i.batch,
                "outcome": i.outcome,
                "status": i.status,
                "request_id": i.request_id,
                "outputs": list(i.outputs),
                "error": i.error,
            }
            for i in report.items
        ],
    }


def write_summary(report: RunReport, **extra: Any) -> str:
    """
    Write ``summary.json`` in the run folder (see :func:`summary_of`); return its location.

    The file is written whole or not at all, never through a link planted at its name.

    :param report: the run, from :func:`read_run`.
    :param extra: more top-level fields.
    """
    target = as_target(report.run_folder, field_name="run_folder") / SUMMARY_NAME
    write_atomic(target, json.dumps(summary_of(report, **extra), indent=1))
    return str(target)
