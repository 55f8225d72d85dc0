"""Every fault kind, seen on the wire: what replaces an answer, what bends one, and when neither."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_firered.emulator import Emulator, Fault

KEY = {"Ocp-Apim-Subscription-Key": "fault-test-key"}
NO_KEY = {"Accept": "application/json"}
V11_PATH = "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request"
STATUS_PATH = "/v2/requests/status/"


def submit(emulator: Emulator, headers: dict[str, str] = KEY) -> requests.Response:
    body = {"prompt": "p", "image_urls": emulator.sample_images[:1]}
    return requests.post(emulator.gateway_url + V11_PATH, json=body, headers=headers, timeout=10)


def status(emulator: Emulator, request_id: str) -> requests.Response:
    return requests.get(emulator.gateway_url + STATUS_PATH + request_id, headers=KEY, timeout=10)


def test_a_replacing_fault_comes_before_the_key_check(firered_emulator: Emulator) -> None:
    firered_emulator.inject(Fault(target="submit", kind="status", status_code=503, headers={"X-A": "1"}))
    answer = submit(firered_emulator, NO_KEY)
    assert (answer.status_code, answer.headers["X-A"]) == (503, "1")
    assert answer.json() == {"error": "Service Unavailable", "message": "Emulated 503 Service Unavailable"}
    assert submit(firered_emulator, NO_KEY).status_code == 401
    assert [r.status for r in firered_emulator.submit_attempts()] == [503, 401]


def test_a_bending_fault_leaves_a_refused_answer_alone(firered_emulator: Emulator) -> None:
    firered_emulator.inject(Fault(target="submit", kind="missing_fields"))
    assert submit(firered_emulator, NO_KEY).status_code == 401
    assert set(submit(firered_emulator).json()) == {"request_id", "status", "polling_url"}  # used up


def test_a_fault_for_another_kind_of_request_is_used_up_unapplied(firered_emulator: Emulator) -> None:
    firered_emulator.inject(Fault(target="any", kind="status_value", status_value="WEIRD"))
    request_id = submit(firered_emulator).json()["request_id"]
    assert status(firered_emulator, request_id).json()["status"] in ("QUEUED", "PROCESSING")


def test_submit_answers_bent(firered_emulator: Emulator) -> None:
    firered_emulator.inject(Fault(target="submit", kind="missing_fields"))
    missing = submit(firered_emulator)
    assert (missing.status_code, missing.json()) == (202, {"status": "QUEUED"})
    firered_emulator.inject(Fault(target="submit", kind="foreign_polling_url"))
    foreign = submit(firered_emulator).json()
    assert foreign["polling_url"] == f"https://foreign.invalid{STATUS_PATH}{foreign['request_id']}"
    assert [r.status for r in firered_emulator.submissions()] == [202, 202]  # both jobs exist


def test_status_answers_bent(firered_emulator: Emulator) -> None:
    request_id = submit(firered_emulator).json()["request_id"]
    firered_emulator.inject(Fault(target="status", kind="missing_fields"))
    assert status(firered_emulator, request_id).json() == {"request_id": request_id}
    firered_emulator.inject(Fault(target="status", kind="missing_fields"))
    unknown = status(firered_emulator, "no-such-job")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "Not Found")  # not bent


def test_broken_answers(firered_emulator: Emulator) -> None:
    firered_emulator.inject(Fault(target="submit", kind="malformed_json"))
    malformed = submit(firered_emulator)
    assert malformed.status_code == 202
    with pytest.raises(requests.JSONDecodeError):
        malformed.json()
    firered_emulator.inject(Fault(target="submit", kind="reset_mid_body"))
    with pytest.raises(requests.RequestException):
        submit(firered_emulator)
    firered_emulator.inject(Fault(target="submit", kind="delay", delay_seconds=0.3))
    started = time.monotonic()
    assert submit(firered_emulator).status_code == 202
    assert time.monotonic() - started >= 0.3
    assert firered_emulator.submissions() != []


def test_cdn_faults(firered_emulator: Emulator) -> None:
    image = firered_emulator.sample_images[0]
    firered_emulator.inject(Fault(target="cdn", kind="wrong_content_type"))
    html = requests.get(image, timeout=10)
    assert (html.status_code, html.headers["Content-Type"].split(";")[0]) == (200, "text/html")
    firered_emulator.inject(Fault(target="cdn", kind="oversized", size_bytes=12345))
    assert len(requests.get(image, timeout=10).content) == 12345
    firered_emulator.inject(Fault(target="cdn", kind="truncated"))
    with pytest.raises(requests.RequestException):
        requests.get(image, timeout=10)
    firered_emulator.inject(Fault(target="cdn", kind="status", status_code=502))
    assert requests.get(image, timeout=10).status_code == 502
    firered_emulator.inject(Fault(target="cdn", kind="missing_fields"))  # a gateway kind: no effect
    assert requests.get(image, timeout=10).content.startswith(b"\x89PNG")
    assert [r.status for r in firered_emulator.requests if r.origin == "cdn"] == [200, 200, 200, 502, 200]


def test_gateway_ignores_cdn_kinds(firered_emulator: Emulator) -> None:
    firered_emulator.inject(Fault(target="submit", kind="wrong_content_type"))
    answer = submit(firered_emulator)
    assert (answer.status_code, answer.headers["Content-Type"]) == (202, "application/json; charset=utf-8")
