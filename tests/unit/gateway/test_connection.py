"""How the hook reads its connection: gateway root, key, extras, and what it never shows."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_provider_firered.emulator import Emulator
from airflow_provider_firered.exceptions import FireRedApiError, FireRedValidationError
from airflow_provider_firered.gateway.connection_extras import EXTRAS, PLACEHOLDERS
from airflow_provider_firered.hooks.firered import DEFAULT_GATEWAY, FireRedHook, GatewaySettings
from airflow_provider_firered.utils.retry import RetryPolicy

KEY = "sk-firered-SETTINGS-KEY-42"


def settings_for(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> GatewaySettings:
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_T", json.dumps({"conn_type": "firered", **conn}))
    return FireRedHook("firered_t").settings


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, DEFAULT_GATEWAY),
        ("", None, DEFAULT_GATEWAY),
        ("https://gateway.pixazo.ai/", None, DEFAULT_GATEWAY),
        ("gateway.pixazo.ai", None, DEFAULT_GATEWAY),
        ("http://127.0.0.1:8123", None, "http://127.0.0.1:8123"),
        ("http://127.0.0.1", 8124, "http://127.0.0.1:8124"),
        ("https://proxy.internal.test/firered/", None, "https://proxy.internal.test/firered"),
    ],
)
def test_gateway_root(
    monkeypatch: pytest.MonkeyPatch, host: str | None, port: int | None, expected: str
) -> None:
    conn: dict[str, Any] = {"password": KEY}
    if host is not None:
        conn["host"] = host
    if port is not None:
        conn["port"] = port
    settings = settings_for(monkeypatch, conn)
    assert settings.base_url == expected


def test_key_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(
        monkeypatch,
        {
            "password": KEY,
            "extra": {"request_timeout": 7, "max_download_bytes": 1000, "retry_max_attempts": 2},
        },
    )
    assert settings.api_key == KEY
    assert (settings.request_timeout, settings.max_download_bytes, settings.retry.max_attempts) == (
        7,
        1000,
        2,
    )
    assert settings.headers()["Ocp-Apim-Subscription-Key"] == KEY


@pytest.mark.parametrize(
    ("conn", "field"),
    [
        ({}, "password"),
        ({"password": ""}, "password"),
        ({"password": KEY, "host": "ftp://files.test"}, "connection host"),
        ({"password": KEY, "host": "https://me:pw@gw.test"}, "connection host"),
        ({"password": KEY, "extra": {"request_timeout": 0}}, "connection extra request_timeout"),
        ({"password": KEY, "extra": {"max_download_bytes": "lots"}}, "connection extra max_download_bytes"),
    ],
)
def test_bad_connection_names_the_field(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], field: str
) -> None:
    with pytest.raises(FireRedValidationError) as info:
        settings_for(monkeypatch, conn)
    assert field in str(info.value)
    assert KEY not in str(info.value)


def test_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(monkeypatch, {"password": KEY})
    hook = FireRedHook("firered_t")
    assert hook.settings == settings
    for text in (repr(settings), str(settings), repr(hook)):
        assert KEY not in text


def test_origin_check_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(monkeypatch, {"password": KEY, "host": "https://gw.test"})
    assert settings.is_gateway_url("https://gw.test/v2/requests/status/x")
    assert settings.is_gateway_url("https://GW.test:443/x")
    for other in (
        "http://gw.test/x",
        "https://gw.test:8443/x",
        "https://gw.test.evil.test/x",
        "https://cdn.test/",
    ):
        assert not settings.is_gateway_url(other)


def test_the_connection_is_looked_up_on_first_use_then_kept(
    monkeypatch: pytest.MonkeyPatch, connects: list[Any]
) -> None:
    hook = FireRedHook("firered_later")  # the connection does not exist yet: nothing is looked up
    conn = {"conn_type": "firered", "password": KEY, "host": "https://gw.test"}
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_LATER", json.dumps(conn))
    assert hook.settings.base_url == "https://gw.test"
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_LATER", json.dumps({**conn, "host": "https://moved.test"}))
    assert hook.settings.base_url == "https://gw.test"  # kept for the hook's life...
    assert hook.refresh_settings().base_url == "https://moved.test"  # ...until looked up afresh
    assert hook.settings.base_url == "https://moved.test"
    assert connects == []


def test_a_retry_policy_given_to_the_hook_overrides_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "firered", "password": KEY, "extra": {"retry_max_attempts": 5}}
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_T", json.dumps(conn))
    policy = RetryPolicy(max_attempts=2)
    hook = FireRedHook("firered_t", retry_policy=policy)
    assert hook.settings.retry is policy
    assert hook.refresh_settings().retry is policy
    assert FireRedHook("firered_t").settings.retry.max_attempts == 5


def test_connection_form() -> None:
    from airflow_provider_firered.get_provider_info import get_provider_info

    info = get_provider_info()
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == "firered"
    assert conn_type["hook-class-name"] == "airflow_provider_firered.hooks.firered.FireRedHook"
    legacy = FireRedHook.get_ui_field_behaviour()
    modern = conn_type["ui-field-behaviour"]
    assert legacy["hidden_fields"] == modern["hidden-fields"] == ["schema", "port", "login"]
    assert legacy["relabeling"]["password"] == modern["relabeling"]["password"] == "API key"
    assert legacy["placeholders"]["host"] == modern["placeholders"]["host"] == PLACEHOLDERS["host"]
    assert DEFAULT_GATEWAY in PLACEHOLDERS["host"]
    assert list(conn_type["conn-fields"]) == [extra.name for extra in EXTRAS]


# -- a connection as the UI saves it ---------------------------------------------------------------------


def test_connection_saved_by_the_ui_with_blank_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow 3.2+ stores every form field, a blank one as null.
    blank = {extra.name: None for extra in EXTRAS}
    settings = settings_for(monkeypatch, {"password": KEY, "extra": blank})
    assert settings.request_timeout == 30
    assert settings.max_download_bytes == 50 * 1024 * 1024
    assert settings.retry == RetryPolicy()
    assert (settings.allow_private_media_hosts, settings.resend_submit_on_5xx) == (False, False)
    assert settings.allow_http_host is None


def test_numbers_typed_into_the_form(monkeypatch: pytest.MonkeyPatch) -> None:
    extras = {
        "request_timeout": "30",
        "max_download_bytes": "1000",
        "retry_max_attempts": "2",
        "retry_jitter": "",
    }
    settings = settings_for(monkeypatch, {"password": KEY, "extra": extras})
    assert (settings.request_timeout, settings.max_download_bytes, settings.retry.max_attempts) == (
        30,
        1000,
        2,
    )
    assert settings.retry.jitter == RetryPolicy().jitter


# -- the key ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pasted", [f"{KEY}\n", f"{KEY} ", f"  {KEY}\r\n", f"\t{KEY}"])
def test_key_is_stripped(monkeypatch: pytest.MonkeyPatch, pasted: str) -> None:
    settings = settings_for(monkeypatch, {"password": pasted})
    assert settings.api_key == KEY
    assert settings.headers()["Ocp-Apim-Subscription-Key"] == KEY


@pytest.mark.parametrize(
    "bad",
    [f"{KEY[:8]}\n{KEY[8:]}", f"{KEY[:8]}\x00{KEY[8:]}", f"{KEY[:8]} {KEY[8:]}", f"{KEY[:8]}\u00e9{KEY[8:]}"],
    ids=["newline", "nul", "space", "non-ascii"],
)
def test_key_with_a_control_character_inside_is_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    with pytest.raises(FireRedValidationError) as info:
        settings_for(monkeypatch, {"password": bad})
    assert info.value.field == "connection 'firered_t' password"
    text = str(info.value)
    assert "control" in text
    assert KEY[:8] not in text
    assert KEY[8:] not in text


async def test_pasted_key_works_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # The emulator accepts only the exact key: 404 for an unknown request means the key was accepted.
    with Emulator(keys=[KEY]).start() as emulator:
        monkeypatch.setenv(
            "AIRFLOW_CONN_FIRERED_T",
            json.dumps({"conn_type": "firered", "host": emulator.gateway_url, "password": f"{KEY}\n"}),
        )
        ok, message = FireRedHook("firered_t").test_connection()
        assert ok, message
        async with FireRedHook("firered_t") as hook:
            with pytest.raises(FireRedApiError) as info:
                await hook.aget_status("no-such-request")
        assert info.value.status_code == 404
        assert emulator.submit_attempts() == []


# -- the gateway's scheme ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:8123", "http://127.0.0.2:8123", "http://[::1]:8123", "http://localhost:8123"],
)
def test_plain_http_to_loopback_is_allowed(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    assert settings_for(monkeypatch, {"password": KEY, "host": host}).base_url == host


@pytest.mark.parametrize(
    ("host", "extra"),
    [
        ("http://gw.example.test", {}),
        ("http://10.1.2.3:8080", {}),
        ("http://gw.example.test/firered", {"allow_http_host": None}),
        ("http://gw.example.test", {"allow_http_host": "other.example.test"}),
    ],
)
def test_plain_http_elsewhere_is_refused(
    monkeypatch: pytest.MonkeyPatch, host: str, extra: dict[str, Any]
) -> None:
    with pytest.raises(FireRedValidationError) as info:
        settings_for(monkeypatch, {"password": KEY, "host": host, "extra": extra})
    assert info.value.field == "connection host"
    assert "https" in info.value.message
    assert "allow_http_host" in info.value.message


def test_plain_http_to_the_named_host_is_allowed_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_firered.gateway.connection"):
        settings = settings_for(
            monkeypatch,
            {
                "password": KEY,
                "host": "http://GW.example.test:8080",
                "extra": {"allow_http_host": "gw.example.test"},
            },
        )
    assert settings.base_url == "http://GW.example.test:8080"
    assert settings.allow_http_host == "gw.example.test"
    assert "plain http" in caplog.text
    assert "gw.example.test" in caplog.text
    assert KEY not in caplog.text


# -- the connection type ---------------------------------------------------------------------------------


@pytest.mark.parametrize("conn_type", ["http", "https", "generic"])
def test_a_connection_of_another_type_is_refused(monkeypatch: pytest.MonkeyPatch, conn_type: str) -> None:
    with pytest.raises(FireRedValidationError) as info:
        settings_for(
            monkeypatch, {"conn_type": conn_type, "host": "https://gw.example.test", "password": KEY}
        )
    assert info.value.field == "connection 'firered_t' type"
    assert repr(conn_type) in info.value.message
    assert "'firered'" in info.value.message
    assert KEY not in str(info.value)


# -- bounds: a huge value fails before anything is sent ---------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"request_timeout": 1e300}, "request_timeout"),
        ({"retry_multiplier": 1e300}, "retry_multiplier"),
        ({"retry_max_retry_after": "9" * 5000}, "retry_max_retry_after"),
        ({"allow_http_host": "gw." * 3_400 + "test"}, "allow_http_host"),
    ],
    ids=["timeout-1e300", "multiplier-1e300", "5000-digits", "10k-host"],
)
def test_a_huge_extra_fails_before_any_request(
    monkeypatch: pytest.MonkeyPatch, firered_emulator: Emulator, extra: dict[str, Any], field: str
) -> None:
    conn = {"conn_type": "firered", "host": firered_emulator.gateway_url, "password": KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_T", json.dumps(conn))
    with pytest.raises(FireRedValidationError) as info:
        FireRedHook("firered_t").submit_edit(
            "firered-image-edit-v1-1", "Make it blue", firered_emulator.sample_images[:1]
        )
    assert info.value.field == f"connection extra {field}"
    assert "<=" in info.value.message or "at most 253 characters" in info.value.message
    assert len(str(info.value)) < 400  # the value is shown clipped
    assert firered_emulator.requests == []  # nothing sent, nothing paid


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("https://" + "a" * 10_000 + ".test", "at most 2048 characters, got 10013"),
        ("https://" + "a" * 300 + ".test", "a host of at most 253 characters"),
        ("ftp://" + "x" * 1000, "must be an http(s) gateway URL, got 'ftp://xxx"),
    ],
    ids=["10k-url", "300-char-host", "long-bad-url"],
)
def test_a_huge_gateway_host_is_refused_and_shown_clipped(
    monkeypatch: pytest.MonkeyPatch, host: str, shown: str
) -> None:
    with pytest.raises(FireRedValidationError) as info:
        settings_for(monkeypatch, {"password": KEY, "host": host})
    assert info.value.field == "connection host"
    assert shown in info.value.message
    assert len(info.value.message) < 400
