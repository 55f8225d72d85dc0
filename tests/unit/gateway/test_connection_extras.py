"""The one declaration of the connection extras: parsing, the generated form, and the README table."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.gateway.connection_extras import (
    EXTRAS,
    EXTRAS_BY_NAME,
    MAX_SHOWN_CHARS,
    PLACEHOLDERS,
    RELABELING,
    clip,
    conn_fields,
    extras_table_markdown,
    legacy_field_behaviour,
    parse_extras,
    provider_field_behaviour,
    retry_policy,
)
from airflow_provider_firered.utils.retry import RetryPolicy

NAMES = [extra.name for extra in EXTRAS]
DEFAULTS = {extra.name: extra.default for extra in EXTRAS}


@pytest.mark.parametrize("blank", [None, "", "   "], ids=["null", "empty", "spaces"])
def test_blank_extra_means_its_default(blank: Any) -> None:
    # The UI stores every form field it shows, a blank one as null.
    assert parse_extras(dict.fromkeys(NAMES, blank)) == DEFAULTS


def test_absent_extras_mean_their_defaults() -> None:
    assert parse_extras({}) == parse_extras(None) == DEFAULTS


def test_numbers_typed_as_text_are_accepted() -> None:
    values = parse_extras(
        {
            "request_timeout": "30",
            "max_download_bytes": " 1000 ",
            "retry_max_attempts": "3",
            "retry_jitter": "0.5",
            "retry_max_wait": 12,
            "retry_initial_wait": 2.0,
        }
    )
    assert values["request_timeout"] == 30.0
    assert values["max_download_bytes"] == 1000
    assert isinstance(values["max_download_bytes"], int)
    assert values["retry_max_attempts"] == 3
    assert isinstance(values["retry_max_attempts"], int)
    assert (values["retry_jitter"], values["retry_max_wait"], values["retry_initial_wait"]) == (0.5, 12, 2)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(True, True), (False, False), ("true", True), ("False", False), (" TRUE ", True), ("no", False)],
)
def test_booleans(raw: Any, expected: bool) -> None:
    assert parse_extras({"resend_submit_on_5xx": raw})["resend_submit_on_5xx"] is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gw.internal", "gw.internal"),
        ("GW.Internal.", "gw.internal"),
        ("10.0.0.5", "10.0.0.5"),
        ("[fd00::1]", "fd00::1"),
    ],
)
def test_allow_http_host_is_a_normalised_host_name(raw: str, expected: str) -> None:
    assert parse_extras({"allow_http_host": raw})["allow_http_host"] == expected


BAD_VALUES = [
    ("request_timeout", 0, "a number > 0"),
    ("request_timeout", -1, "a number > 0"),
    ("request_timeout", "soon", "a number > 0"),
    ("request_timeout", "nan", "a number > 0"),
    ("request_timeout", "inf", "a number > 0"),
    ("request_timeout", True, "a number > 0"),
    ("request_timeout", [30], "a number > 0"),
    ("max_download_bytes", "lots", "an integer >= 1"),
    ("max_download_bytes", 0, "an integer >= 1"),
    ("max_download_bytes", 10.5, "an integer >= 1"),
    ("retry_max_attempts", "2.5", "an integer >= 1"),
    ("retry_max_attempts", 0, "an integer >= 1"),
    ("retry_initial_wait", -0.1, "a number >= 0"),
    ("retry_multiplier", "x2", "a number >= 0"),
    ("retry_max_wait", "-5", "a number >= 0"),
    ("retry_jitter", "lots", "a number >= 0"),
    ("retry_max_retry_after", False, "a number >= 0"),
    ("retry_max_elapsed", {"s": 1}, "a number >= 0"),
    ("allow_private_media_hosts", "maybe", "true or false"),
    ("resend_submit_on_5xx", 1, "true or false"),
    ("allow_http_host", "http://gw.internal", "a host name"),
    ("allow_http_host", "gw.internal:8080", "a host name"),
    ("allow_http_host", "gw internal", "a host name"),
    ("allow_http_host", 42, "a host name"),
]

#: Each number extra just past its maximum (the maximum itself is accepted).
PAST_THE_MAXIMUM = [
    ("request_timeout", 3600, 3600.5, "a number > 0 and <= 3600"),
    ("max_download_bytes", 1073741824, 1073741825, "an integer >= 1 and <= 1073741824"),
    ("retry_max_attempts", 100, 101, "an integer >= 1 and <= 100"),
    ("retry_initial_wait", 3600, 3601, "a number >= 0 and <= 3600"),
    ("retry_max_wait", 3600, "3601", "a number >= 0 and <= 3600"),
    ("retry_multiplier", 10, 10.01, "a number >= 0 and <= 10"),
    ("retry_jitter", 3600, 1e300, "a number >= 0 and <= 3600"),
    ("retry_max_retry_after", 3600, 3601, "a number >= 0 and <= 3600"),
    ("retry_max_elapsed", 86400, 86401, "a number >= 0 and <= 86400"),
]


@pytest.mark.parametrize(("name", "raw", "allowed"), BAD_VALUES)
def test_a_wrong_value_names_the_extra_and_what_is_allowed(name: str, raw: Any, allowed: str) -> None:
    with pytest.raises(FireRedValidationError) as info:
        parse_extras({name: raw})
    assert info.value.field == f"connection extra {name}"
    assert allowed in info.value.message
    assert repr(raw) in info.value.message


def test_every_extra_has_a_bad_value_test() -> None:
    assert {name for name, _, _ in BAD_VALUES} == set(NAMES)


@pytest.mark.parametrize(("name", "top", "past", "allowed"), PAST_THE_MAXIMUM)
def test_every_number_extra_has_a_maximum(name: str, top: float, past: Any, allowed: str) -> None:
    assert parse_extras({name: top})[name] == top
    with pytest.raises(FireRedValidationError) as info:
        parse_extras({name: past})
    assert info.value.field == f"connection extra {name}"
    assert f"must be {allowed}, got {past!r}" in info.value.message


def test_every_number_extra_has_a_maximum_test() -> None:
    numbers = {extra.name for extra in EXTRAS if extra.kind in ("number", "integer")}
    assert {name for name, *_ in PAST_THE_MAXIMUM} == numbers
    assert all(EXTRAS_BY_NAME[name].maximum == top for name, top, *_ in PAST_THE_MAXIMUM)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("request_timeout", 1e300),
        ("retry_multiplier", 1e300),
        ("retry_max_attempts", 10**5000),
        ("request_timeout", "9" * 5000),
        ("max_download_bytes", "1" + "0" * 4000),
        ("allow_http_host", "a" * 10_000_000),
        ("retry_max_elapsed", [1] * 10_000),
    ],
    ids=[
        "1e300",
        "multiplier-1e300",
        "int-5000-digits",
        "text-5000-digits",
        "text-4001-digits",
        "10MB-host",
        "list",
    ],
)
def test_a_huge_value_is_refused_and_shown_clipped(name: str, raw: Any) -> None:
    with pytest.raises(FireRedValidationError) as info:
        parse_extras({name: raw})
    assert info.value.field == f"connection extra {name}"
    assert EXTRAS_BY_NAME[name].allowed().replace("`", "") in info.value.message
    # The field, the allowed range and at most ~100 characters of the value, marked as cut.
    assert len(str(info.value)) < 400
    if isinstance(raw, (str, list)):
        assert "..." in info.value.message


def test_clip() -> None:
    assert clip("short") == "'short'"
    assert clip(12.5) == "12.5"
    long = clip("x" * 1000)
    assert long == f"{'x' * MAX_SHOWN_CHARS!r}... (1000 characters)"
    assert clip(list(range(1000))).endswith("characters)")
    assert len(clip(list(range(1000)))) < MAX_SHOWN_CHARS + 30
    assert clip(10**5000) == "a int too large to show"  # past Python's digit limit for str()


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        (".".join(["a" * 63] * 3) + "." + "b" * 61, True),  # 253 characters, the most DNS allows
        (".".join(["a" * 63] * 3) + "." + "b" * 61 + ".", True),  # the same, with the root's dot
        (".".join(["a" * 63] * 3) + "." + "b" * 62, False),  # 254
        ("a" * 64 + ".internal", False),  # a label longer than 63
        ("a" * 10_000_000, False),
    ],
    ids=["253", "253-dot", "254", "label-64", "10MB"],
)
def test_allow_http_host_is_at_most_253_characters(raw: str, ok: bool) -> None:
    if ok:
        assert parse_extras({"allow_http_host": raw})["allow_http_host"] == raw.rstrip(".")
        return
    with pytest.raises(FireRedValidationError) as info:
        parse_extras({"allow_http_host": raw})
    assert info.value.field == "connection extra allow_http_host"
    assert "at most 253 characters" in info.value.message
    assert len(info.value.message) < 400


def test_unknown_extras_are_named_within_bounds(caplog: pytest.LogCaptureFixture) -> None:
    extras = {f"unknown_{i:05d}": 1 for i in range(10_000)} | {"z" * 100_000: 1}
    with caplog.at_level(logging.WARNING, logger="airflow_provider_firered.gateway.connection_extras"):
        assert parse_extras(extras) == DEFAULTS
    (record,) = caplog.records
    assert "unknown_00000" in record.getMessage()
    assert "and 9991 more" in record.getMessage()
    assert len(record.getMessage()) < 1000


def test_unknown_extras_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_firered.gateway.connection_extras"):
        assert parse_extras({"request_timout": 5}) == DEFAULTS
    assert "request_timout" in caplog.text


def test_retry_extras_reach_the_policy() -> None:
    policy = retry_policy(
        parse_extras(
            {
                "retry_max_attempts": "2",
                "retry_initial_wait": "0.25",
                "retry_max_wait": 3,
                "retry_multiplier": 1.5,
                "retry_jitter": "0",
                "retry_max_retry_after": 9,
                "retry_max_elapsed": "60",
            }
        )
    )
    assert policy == RetryPolicy(
        max_attempts=2,
        initial_wait=0.25,
        max_wait=3,
        multiplier=1.5,
        jitter=0,
        max_retry_after=9,
        max_elapsed=60,
    )
    assert retry_policy(parse_extras({})) == RetryPolicy()


def test_every_retry_policy_field_is_an_extra() -> None:
    for field in dataclasses.fields(RetryPolicy):
        extra = EXTRAS_BY_NAME[f"retry_{field.name}"]
        assert extra.default == field.default


# -- what is generated from the declaration --------------------------------------------------------------


def test_conn_fields_offer_every_extra_with_its_bounds() -> None:
    fields = conn_fields()
    assert list(fields) == NAMES
    for extra in EXTRAS:
        field = fields[extra.name]
        assert field["label"] == extra.label
        assert extra.help in field["description"]
        assert "null" in field["schema"]["type"], "a blank field must be valid"
        assert "default" not in field["schema"], "a default would be stored into every new connection"
    # Anything above 0 is a valid timeout: the form must not ask for more than the hook does.
    assert fields["request_timeout"]["schema"] == {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "maximum": 3600,
    }
    assert fields["retry_max_attempts"]["schema"] == {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 100,
    }
    assert fields["allow_private_media_hosts"]["schema"] == {"type": ["boolean", "null"]}
    assert fields["allow_http_host"]["schema"] == {"type": ["string", "null"], "maxLength": 253}
    # Every number the form takes has both bounds, as parsing has.
    for extra in EXTRAS:
        if extra.kind in ("number", "integer"):
            assert "maximum" in fields[extra.name]["schema"]
            assert extra.maximum is not None
            assert f"<= {int(extra.maximum)}" in fields[extra.name]["description"]


def test_form_behaviour_for_every_airflow_version() -> None:
    modern = provider_field_behaviour()
    legacy = legacy_field_behaviour()
    assert modern["hidden-fields"] == legacy["hidden_fields"] == ["schema", "port", "login"]
    assert modern["relabeling"] == legacy["relabeling"] == RELABELING
    assert modern["placeholders"] == PLACEHOLDERS
    assert {k: v for k, v in legacy["placeholders"].items() if k != "extra"} == PLACEHOLDERS
    assert json.loads(legacy["placeholders"]["extra"]) == DEFAULTS


def test_placeholders_read_as_instructions_not_values() -> None:
    assert PLACEHOLDERS["host"] == "Leave empty for https://gateway.pixazo.ai"
    assert "Ocp-Apim" not in PLACEHOLDERS["password"]
    assert "subscription key" in PLACEHOLDERS["password"]


def test_readme_extras_table_is_generated_from_the_declaration() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert extras_table_markdown() in readme, (
        "README extras table is stale: regenerate it with "
        "`python -m airflow_provider_firered.gateway.connection_extras`"
    )
