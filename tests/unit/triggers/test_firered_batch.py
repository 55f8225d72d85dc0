"""FireRedBatchStatusTrigger's kwargs: plain values, small enough for a trigger row at 1,000 items."""

from __future__ import annotations

import json

import pytest

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.triggers.firered_batch import FireRedBatchStatusTrigger

RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-{:012d}"


def test_kwargs_hold_only_ids_and_plain_values_and_round_trip() -> None:
    trigger = FireRedBatchStatusTrigger(
        [[RID.format(1), 1_900_000_000.5], [RID.format(2), None]], "firered_default", 5, 1_900_000_100.0, 1
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_firered.triggers.firered_batch.FireRedBatchStatusTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert FireRedBatchStatusTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert kwargs["min_ended"] == 1
    assert kwargs["not_before"] == 0.0
    assert (kwargs["ready_at"], kwargs["due"]) == (0.0, 0.0)  # fires only when enough jobs ended


def test_ready_at_and_due_round_trip() -> None:
    trigger = FireRedBatchStatusTrigger(
        [[RID.format(1), None]],
        "firered_default",
        5,
        1_900_000_100.0,
        1,
        ready_at=1_900_000_018.5,
        due=1_900_000_021.0,
    )
    classpath, kwargs = trigger.serialize()
    assert (kwargs["ready_at"], kwargs["due"]) == (1_900_000_018.5, 1_900_000_021.0)
    assert FireRedBatchStatusTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_the_trigger_row_at_a_thousand_items_is_small() -> None:
    requests = [[RID.format(n), 1_900_000_000.5 + n] for n in range(1000)]
    trigger = FireRedBatchStatusTrigger(requests, "firered_default", 10, 1_900_000_100.0, 500)
    size = len(json.dumps(trigger.serialize()[1]))
    # About 80 bytes an item (a 63-character id and a start deadline): 1,000 items in under 100 KB.
    assert size < 100_000, size


@pytest.mark.parametrize("requests", ["abc", [["only-id"]], [[1, None]], None])
def test_malformed_requests_are_refused(requests: object) -> None:
    with pytest.raises(FireRedValidationError, match=r"^requests: must be a list of"):
        FireRedBatchStatusTrigger(requests, "firered_default", 5, 0.0, 1)  # type: ignore[arg-type]


def test_min_ended_is_kept_within_the_batch() -> None:
    trigger = FireRedBatchStatusTrigger([[RID.format(1), None]], "firered_default", 5, 0.0, 50)
    assert trigger.min_ended == 1


def test_the_manifest_kwarg_round_trips_and_is_optional() -> None:
    with_manifest = FireRedBatchStatusTrigger(
        [[RID.format(1), None]],
        "firered_default",
        5,
        1_900_000_100.0,
        1,
        manifest="s3://b/run/_manifest.jsonl",
    )
    classpath, kwargs = with_manifest.serialize()
    assert kwargs["manifest"] == "s3://b/run/_manifest.jsonl"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert FireRedBatchStatusTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert FireRedBatchStatusTrigger([[RID.format(1), None]]).serialize()[1]["manifest"] is None


def test_a_manifest_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(FireRedValidationError, match=r"^manifest: must be a string or None, got dict"):
        FireRedBatchStatusTrigger([[RID.format(1), None]], manifest={"path": "x"})  # type: ignore[arg-type]
