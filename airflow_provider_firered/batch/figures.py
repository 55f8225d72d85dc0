"""
Count a batch's (or a catalogue night's) items, from its manifest: one function, so the figures agree.

The batch's log and XCom, ``summary.json``, the contact sheet, the outlet assets' events and the
OpenLineage run facet all count through :func:`figures_from_manifest`, over the manifest's entries as
the batch wrote them or as the report read them back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

#: An item the task did not send because its ``max_paid_edits`` was spent.
OVER_BUDGET = "over_budget"
#: The outcomes of a dry run's plan: what the night would do with each item.
PLAN_OUTCOMES = ("would_edit", "would_reuse", "would_fail", "invalid")
#: Outcomes that mean an item got no output (listed first in the report, counted for ``max_failed``).
FAILURE_OUTCOMES = frozenset({"failed", OVER_BUDGET, "would_fail", "invalid"})

_REAL_COUNTS = ("total", "edited", "reused", "failed", OVER_BUDGET, "paid", "pending")
_PLAN_COUNTS = ("total", *PLAN_OUTCOMES, OVER_BUDGET)


class Counted(Protocol):
    """What is counted of one manifest entry (a ``ManifestEntry``, or an item the report read back)."""

    @property
    def outcome(self) -> str:
        """Return how the item ended (or, in a plan, would end)."""

    @property
    def status(self) -> str | None:
        """Return the job's status or why the item ended without one."""

    @property
    def paid(self) -> int:
        """Return how many paid submits the task sent for the item."""

    @property
    def dry_run(self) -> bool:
        """Return whether the entry belongs to a dry run's plan."""


@dataclass(frozen=True)
class NightFigures:
    """
    The figures of a batch or a night, all from its manifest entries.

    :param total: the items.
    :param edited: items edited (outputs downloaded).
    :param reused: items whose earlier outputs were copied.
    :param failed: items that failed (invalid ones included); not those over budget.
    :param over_budget: items not sent because ``max_paid_edits`` was spent (in a plan: would not be).
    :param paid: the submits the gateway accepted, or may have (an uncertain answer), over every try of
        the task; 0 in a plan.
    :param pending: items still waiting (a progress snapshot).
    :param would_edit: in a plan, the items that would be submitted (paid).
    :param would_reuse: in a plan, the items whose earlier outputs would be copied.
    :param would_fail: in a plan, the items not sent because they ended ``FAILED`` unchanged before.
    :param invalid: the items that fail their checks (in a real run, also counted in ``failed``).
    :param dry_run: whether these are a dry run's figures (a plan: nothing was sent or written).
    """

    total: int = 0
    edited: int = 0
    reused: int = 0
    failed: int = 0
    over_budget: int = 0
    paid: int = 0
    pending: int = 0
    would_edit: int = 0
    would_reuse: int = 0
    would_fail: int = 0
    invalid: int = 0
    dry_run: bool = False

    @property
    def not_done(self) -> int:
        """Return the items counted against ``max_failed``: failed ones and those over budget."""
        return self.failed + self.over_budget

    def as_dict(self) -> dict[str, int | bool]:
        """Return every figure as plain JSON values (XCom, ``summary.json``, events and facets)."""
        return asdict(self)

    def as_asset_extra(self) -> dict[str, int | bool]:
        """
        Return the figures an outlet asset's event carries, as plain JSON values.

        ``total``, ``edited``, ``reused``, ``failed``, ``over_budget``, ``paid`` and ``dry_run``; a
        plan's ``would_*`` and ``invalid`` too (its ``edited`` and ``paid`` are 0: a plan edits nothing).
        """
        names = ("total", "edited", "reused", "failed", OVER_BUDGET, "paid")
        extra: dict[str, int | bool] = {name: int(getattr(self, name)) for name in names}
        if self.dry_run:
            extra.update({name: int(getattr(self, name)) for name in PLAN_OUTCOMES})
        extra["dry_run"] = self.dry_run
        return extra

    def counts(self) -> dict[str, int]:
        """Return the figures a person reads: a real run's, or a plan's, ``total`` first."""
        names = _PLAN_COUNTS if self.dry_run else _REAL_COUNTS
        return {name: int(getattr(self, name)) for name in names}


def figures_from_manifest(entries: Iterable[Counted]) -> NightFigures:
    """
    Count manifest entries (of one batch, or of every batch of a night).

    They are a plan's figures when any entry belongs to a dry run.

    :param entries: the entries, as written or as read back.
    """
    counts = dict.fromkeys(("edited", "reused", "failed", OVER_BUDGET, "pending", *PLAN_OUTCOMES), 0)
    total = paid = invalid = 0
    dry_run = False
    for entry in entries:
        total += 1
        paid += entry.paid
        dry_run = dry_run or entry.dry_run
        if entry.outcome in counts:
            counts[entry.outcome] += 1
        if entry.outcome == "failed" and entry.status == "INVALID":
            invalid += 1
    return NightFigures(
        total=total,
        edited=counts["edited"],
        reused=counts["reused"],
        failed=counts["failed"],
        over_budget=counts[OVER_BUDGET],
        paid=paid,
        pending=counts["pending"],
        would_edit=counts["would_edit"],
        would_reuse=counts["would_reuse"],
        would_fail=counts["would_fail"],
        invalid=counts["invalid"] + invalid,
        dry_run=dry_run,
    )
