"""How the hook reads its connection: gateway root, key, extras, and what it never shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.hooks.firered import DEFAULT_GATEWAY, FireRedHook, GatewaySettings

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
    hook._use_settings(settings)
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


def test_no_connection_lookup_or_network_in_init() -> None:
    hook = FireRedHook("does_not_exist")
    assert hook._settings is None
    assert hook._async_session is None


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
    assert legacy["placeholders"]["host"] == modern["placeholders"]["host"] == DEFAULT_GATEWAY
