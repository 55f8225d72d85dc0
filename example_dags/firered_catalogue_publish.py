"""
### Publish the re-edited catalogue (runs on the catalogue's asset events)

Scheduled on the asset `firered_catalogue`: `firered_catalogue_reedit`'s `publish` task records an
event on it once the night is approved (or at once, where the catalogue asks for no review), whose
`extra` carries the night's figures (`total`, `edited`, `reused`, `failed`, `over_budget`, `paid`, as
`summarise` counted them from the batch manifests), its `summary.json` (`manifest`) and its contact
sheet. A night nobody approved records no event, so nothing here runs for it. The scheduler queues a
run of this DAG, which gets every event recorded since its last run (`triggering_asset_events`).
The batch operators' own events (`outlets` on `FireRedBatchEditOperator`, one per batch with its
manifest and its page in Airflow's UI) are read the same way.

This example only **logs** what it would publish (the counts, the manifest, the contact sheet):
replace `publish` with the call to your shop. A dry run's plan also records an event (Airflow does
so for every successful task with outlets); its `extra` says `dry_run: true` and it is skipped here:
a plan edited nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Asset, get_current_context, task

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

DAG_ID = "firered_catalogue_publish"
#: The asset `firered_catalogue_reedit`'s `publish` task updates (the same name and URI there).
CATALOGUE = Asset(name="firered_catalogue")
#: The figures summed over a run's batches.
FIGURES = ("total", "edited", "reused", "failed", "over_budget", "paid")


def describe(events: Iterable[Any]) -> list[str]:
    """
    Return what the events would publish: a line per batch, then each catalogue run's totals.

    A dry run's event (``dry_run: true``) is reported and skipped; so is an event without figures.

    :param events: asset events (anything with ``extra``, ``source_dag_id`` and ``source_run_id``).
    """
    lines: list[str] = []
    totals: dict[str, dict[str, int]] = {}
    for event in events:
        extra: Mapping[str, Any] = getattr(event, "extra", None) or {}
        source = f"{getattr(event, 'source_dag_id', None)}/{getattr(event, 'source_run_id', None)}"
        if extra.get("dry_run"):
            lines.append(f"skipped: a dry run's plan from {source}, nothing was edited")
            continue
        if not isinstance(extra.get("total"), int):
            lines.append(f"skipped: an event from {source} without figures")
            continue
        counts = {name: int(extra.get(name) or 0) for name in FIGURES}
        night = totals.setdefault(source, dict.fromkeys(FIGURES, 0))
        for name, value in counts.items():
            night[name] += value
        where = extra.get("output_root") or ", ".join(extra.get("output_paths") or []) or "-"
        lines.append(
            f"would publish {counts['edited'] + counts['reused']} image(s) from {where}: "
            + ", ".join(f"{value} {name}" for name, value in counts.items())
            + f"; manifest {extra.get('manifest') or '-'}; contact sheet {extra.get('contact_sheet') or '-'}"
        )
    for source, night in totals.items():
        lines.append(f"{source}: " + ", ".join(f"{value} {name}" for name, value in night.items()))
    return lines


with DAG(
    dag_id=DAG_ID,
    description="Publish the re-edited catalogue once a night is approved (its asset event)",
    schedule=[CATALOGUE],
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    doc_md=__doc__,
    tags=["firered", "example"],
) as dag:

    @task
    def publish() -> list[str]:
        """Log what the triggering events would publish (a real DAG sends the images to the shop)."""
        triggering = get_current_context()["triggering_asset_events"]
        events = [event for asset_events in triggering.values() for event in asset_events]
        lines = describe(events) or ["no asset event triggered this run: nothing to publish"]
        for line in lines:
            print(line)
        return lines

    publish()
