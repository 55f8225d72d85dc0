"""The batch's figures, its budget and its plan's marks, without the operator or a gateway."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.contact_sheet import contact_sheet_html
from airflow_provider_firered.batch.figures import NightFigures, figures_from_manifest
from airflow_provider_firered.batch.items import check_items
from airflow_provider_firered.batch.manifest import (
    ManifestEntry,
    previous_entries,
    read_manifest,
    write_manifest,
)
from airflow_provider_firered.batch.report import summary_of
from airflow_provider_firered.batch.run_results import read_run
from airflow_provider_firered.batch.state import BatchState
from airflow_provider_firered.batch.store import RequestLedger, StoredRequest, stored_paid, stored_request
from airflow_provider_firered.batch.waves import WaveAnswers, submit_wave
from airflow_provider_firered.exceptions import FireRedSubmitUncertainError, FireRedValidationError
from tests.unit.batch.test_state_and_waves import FakeHook, edits, fresh_batch, settings

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_firered.gateway.options import EditRequest
    from airflow_provider_firered.gateway.results import SubmitResult

LOG = logging.getLogger(__name__)
INPUT = "https://images.example.test/shoe.png"


def entry(key: str, outcome: str, status: str | None = None, **fields: Any) -> ManifestEntry:
    return ManifestEntry(key, outcome, status, images=[INPUT], prompt=f"edit {key}", **fields)


def test_the_figures_of_a_night_come_from_its_manifest() -> None:
    figures = figures_from_manifest(
        [
            entry("A", "edited", "COMPLETED", paid=1),
            entry("B", "reused", "COMPLETED"),
            entry("C", "failed", "ERROR", paid=2),
            entry("D", "failed", "INVALID"),
            entry("E", "over_budget", "OVER_BUDGET"),
            entry("F", "pending", paid=1),
        ]
    )
    assert figures == NightFigures(
        total=6, edited=1, reused=1, failed=2, over_budget=1, paid=4, pending=1, invalid=1
    )
    assert figures.not_done == 3
    assert figures.counts() == {
        "total": 6,
        "edited": 1,
        "reused": 1,
        "failed": 2,
        "over_budget": 1,
        "paid": 4,
        "pending": 1,
    }
    # Plain JSON values, every figure: what XCom, summary.json, events and facets carry.
    assert json.loads(json.dumps(figures.as_dict())) == figures.as_dict()
    assert set(figures.as_dict()) == {field.name for field in dataclasses.fields(NightFigures)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        figures.total = 7  # type: ignore[misc]


def test_a_plans_figures_are_the_plans() -> None:
    figures = figures_from_manifest(
        [
            entry("A", "would_edit", "CHANGED", dry_run=True),
            entry("B", "would_reuse", "UNCHANGED", dry_run=True),
            entry("C", "invalid", "INVALID", dry_run=True),
            entry("D", "would_fail", "FAILED", dry_run=True),
            entry("E", "over_budget", "OVER_BUDGET", dry_run=True),
        ]
    )
    assert figures.dry_run
    assert (figures.paid, figures.failed, figures.edited) == (0, 0, 0)
    assert figures.counts() == {
        "total": 5,
        "would_edit": 1,
        "would_reuse": 1,
        "would_fail": 1,
        "invalid": 1,
        "over_budget": 1,
    }


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "5", [5]])
def test_max_paid_edits_is_a_positive_whole_number_or_none(value: Any) -> None:
    with pytest.raises(FireRedValidationError, match=r"max_paid_edits: must be a whole number of at least 1"):
        settings(max_paid_edits=value)
    assert settings(max_paid_edits=None).max_paid_edits is None
    assert settings(max_paid_edits=1).max_paid_edits == 1


def test_dry_run_is_true_or_false() -> None:
    with pytest.raises(FireRedValidationError, match=r"dry_run: must be True or False, got 'yes'"):
        settings(dry_run="yes")


class UncertainHook(FakeHook):
    """Answers the first submit with an uncertain error (it may have been taken), the rest normally."""

    def submit_request(self, request: EditRequest, *, retry: bool = True) -> SubmitResult:
        with self.lock:
            first = not self.sent
        if first:
            self.sent.append(request)
            raise FireRedSubmitUncertainError("gateway.test", "answer lost after sending")
        return super().submit_request(request, retry=retry)


def test_a_wave_spends_no_more_than_the_budget_and_holds_the_rest_back() -> None:
    items, _ = check_items(edits(5), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    hook = FakeHook()
    submit_wave(
        batch,
        WaveAnswers(),
        settings=settings(max_paid_edits=3),
        hook=hook,  # type: ignore[arg-type]
        ledger=None,
        log=LOG,
    )
    assert len(hook.sent) == 3
    assert batch.paid() == 3
    assert not batch.queue  # held back at once: the wait that follows is the last one
    held = [e for e in batch.manifest() if e.outcome == "over_budget"]
    assert len(held) == 2
    assert {e.status for e in held} == {"OVER_BUDGET"}
    assert "max_paid_edits=3 paid submits are spent (2 item(s) over it); raise max_paid_edits" in str(
        held[0].error
    )


def test_an_uncertain_submit_costs_budget_and_a_refused_one_does_not() -> None:
    items, _ = check_items(edits(4), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    hook = UncertainHook()
    submit_wave(
        batch,
        WaveAnswers(),
        settings=settings(max_paid_edits=2, download_threads=1),
        hook=hook,  # type: ignore[arg-type]
        ledger=None,
        log=LOG,
    )
    assert len(hook.sent) == 2  # the uncertain one may have been taken: it counts
    assert [e.status for e in batch.manifest()] == ["UNCERTAIN", None, "OVER_BUDGET", "OVER_BUDGET"]
    assert batch.paid() == 2


class MemoryStore:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def test_what_earlier_tries_paid_is_carried_and_an_over_budget_item_is_taken_up_again() -> None:
    items, _ = check_items(edits(3), "firered-image-edit-v1-1", None)
    store = MemoryStore()
    RequestLedger(store, 5).keep([(items[0], StoredRequest("rid-0", 1, 3))])  # type: ignore[arg-type]
    _ledger, values = RequestLedger.read(store, 5, items)  # type: ignore[arg-type]
    assert values["SKU-0"]["paid"] == 3
    assert stored_request(values["SKU-0"], 5) == StoredRequest("rid-0", 1, 3)
    # A value stored before ``paid`` counts its submits; a malformed one nothing.
    assert stored_paid({"request_id": "rid", "max_tries": 1, "attempt": 2}) == 2
    assert stored_paid({"paid": "many"}) == stored_paid(None) == 0
    batch = BatchState(items, {}, deadline=0.0, timeout=60.0)
    batch.resume(items[0], entry("SKU-0", "edited", "COMPLETED", paid=1), None, paid=2)
    batch.resume(items[1], entry("SKU-1", "over_budget", "OVER_BUDGET", request_id="rid-old"), None, paid=1)
    batch.resume(items[2], None, StoredRequest("rid-2", 1, 4))
    assert [e.paid for e in batch.manifest()] == [2, 1, 4]
    assert [item.key for item in batch.queue] == ["SKU-1"]  # sent if the budget now allows
    assert batch.entries["SKU-1"].request_id is None
    assert batch.paid() == 7


def test_an_earlier_manifest_without_the_new_fields_still_loads(tmp_path: Path) -> None:
    old = {
        "key": "A",
        "outcome": "edited",
        "status": "COMPLETED",
        "request_id": "rid-A",
        "outputs": [],
        "error": None,
        "fingerprint": "f",
        "images": [INPUT],
        "prompt": "white",
        "attempt": 2,
    }
    (tmp_path / "_manifest.jsonl").write_text(json.dumps(old) + "\n")
    (loaded,) = read_manifest(tmp_path) or []
    assert (loaded.paid, loaded.dry_run, loaded.attempt) == (2, False, 2)  # it paid what it submitted
    # A real run's lines keep their shape (plus ``paid``); only a plan's carry ``dry_run``.
    write_manifest(tmp_path, [loaded, entry("B", "would_edit", "NEW", dry_run=True)])
    real, plan = (json.loads(line) for line in (tmp_path / "_manifest.jsonl").read_text().splitlines())
    assert "dry_run" not in real
    assert real["paid"] == 2
    assert plan["dry_run"] is True


@pytest.mark.parametrize(
    ("field", "value"), [("dry_run", "yes"), ("paid", -1), ("paid", True), ("outcome", "would_pay")]
)
def test_a_line_with_a_bad_new_field_is_a_bad_line(tmp_path: Path, field: str, value: Any) -> None:
    line = {"key": "A", "outcome": "over_budget", field: value}
    (tmp_path / "_manifest.jsonl").write_text(
        json.dumps(line) + "\n" + json.dumps({"key": "B", "outcome": "edited"})
    )
    assert [e.key for e in read_manifest(tmp_path) or []] == ["B"]
    folder = tmp_path / "run" / "batch-0000"
    folder.mkdir(parents=True)
    (folder / "_manifest.jsonl").write_text(json.dumps(line) + "\n")
    report = read_run(tmp_path / "run")
    assert report.items == []
    assert len(report.problems) == 1


def test_a_plan_is_never_an_earlier_runs_result(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    real, plan = tmp_path / "real", tmp_path / "plan"
    write_manifest(
        real, [entry("A", "edited", "COMPLETED", fingerprint="f", outputs=[str(real / "A/x.png")])]
    )
    write_manifest(
        plan,
        [
            entry("A", "would_reuse", "UNCHANGED", fingerprint="f", dry_run=True),
            entry("B", "would_fail", "FAILED", fingerprint="g", dry_run=True),
        ],
    )
    with caplog.at_level(logging.WARNING):
        found = previous_entries([str(real), str(plan)])  # later roots win: the plan would
    assert {key: e.outcome for key, (e, _batch) in found.items()} == {"A": "edited"}
    assert "is a dry run's plan: nothing is reused from it" in caplog.text
    assert previous_entries([str(plan)]) == {}


def test_the_report_shows_over_budget_items_and_a_plan(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_manifest(
        run / "batch-0000",
        [
            entry("A", "edited", "COMPLETED", paid=1),
            entry("B", "over_budget", "OVER_BUDGET", error="not sent: raise max_paid_edits"),
        ],
    )
    report = read_run(run)
    summary = summary_of(report)
    assert (summary["edited"], summary["over_budget"], summary["paid"], summary["dry_run"]) == (
        1,
        1,
        1,
        False,
    )
    assert [f["key"] for f in summary["failures"]] == ["B"]
    assert summary["batches"][0]["over_budget"] == 1
    page = contact_sheet_html(report)
    assert "over_budget: <b>1</b>" in page
    assert page.index('<h2 id="failures">Failures (1)') < page.index("not sent: raise max_paid_edits")
    assert "Dry run" not in page

    write_manifest(
        run / "batch-0000",
        [
            entry("A", "would_edit", "CHANGED", error="changed since the earlier run", dry_run=True),
            entry("B", "would_reuse", "UNCHANGED", dry_run=True),
            entry("C", "invalid", "INVALID", error="edits[2].prompt: empty", dry_run=True),
        ],
    )
    report = read_run(run)
    summary = summary_of(report)
    assert (summary["dry_run"], summary["would_edit"], summary["would_reuse"], summary["invalid"]) == (
        True,
        1,
        1,
        1,
    )
    assert [f["key"] for f in summary["failures"]] == ["C"]
    page = contact_sheet_html(report)
    assert "Dry run: this is a plan" in page
    assert "would_edit: <b>1</b>" in page
    assert '<td class="reason">changed since the earlier run</td>' in page
    assert "edited: <b>" not in page


def test_a_submit_answer_is_counted_once_per_item() -> None:
    items, _ = check_items(edits(2), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    batch.submitted(items[0], "rid-1")
    batch.submitted(items[1], "rid-1")  # the same id twice: UNCERTAIN, but the POST was answered 202
    assert [(e.attempt, e.paid) for e in batch.manifest()] == [(1, 1), (1, 1)]
