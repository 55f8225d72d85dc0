"""The emulator against the reference: every documented status code and body shape, both models."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from PIL import Image

from airflow_provider_firered.emulator import Emulator, Fault
from airflow_provider_firered.emulator.process import start_emulator_process

if TYPE_CHECKING:
    from collections.abc import Iterator

KEY = "emulator-test-key"
V10_PATH = "/firered-image-edit/v1/firered-image-edit/generate"
V11_PATH = "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request"
STATUS_KEYS = {
    "request_id",
    "status",
    "model_id",
    "error",
    "output",
    "created_at",
    "updated_at",
    "completed_at",
}


def post(
    emulator: Emulator, path: str, body: Any, key: str | None = KEY, **headers: str
) -> requests.Response:
    if key is not None:
        headers["Ocp-Apim-Subscription-Key"] = key
    return requests.post(emulator.gateway_url + path, json=body, headers=headers, timeout=10)


def status(emulator: Emulator, request_id: str, key: str | None = KEY) -> requests.Response:
    headers = {"Ocp-Apim-Subscription-Key": key} if key else {}
    return requests.get(
        f"{emulator.gateway_url}/v2/requests/status/{request_id}", headers=headers, timeout=10
    )


def finish(emulator: Emulator, request_id: str, limit: float = 20) -> dict[str, Any]:
    seen: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body: dict[str, Any] = status(emulator, request_id).json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] in ("COMPLETED", "FAILED", "ERROR"):
            body["_seen"] = seen
            return body
        time.sleep(0.02)
    raise AssertionError(f"{request_id} did not finish")


def image_of(url: str) -> Image.Image:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    img = Image.open(io.BytesIO(response.content))
    img.load()
    img.info["content_type"] = response.headers["Content-Type"]
    return img


@pytest.mark.parametrize(
    ("path", "body", "fmt", "mime", "count"),
    [
        (V10_PATH, {"prompt": "The dress is changed to black"}, "WEBP", "image/webp", 1),
        (V10_PATH, {"prompt": "red", "output_format": "png", "output_quality": 100}, "PNG", "image/png", 1),
        (
            V10_PATH,
            {"prompt": "red", "output_format": "jpg", "aspect_ratio": "9:16"},
            "JPEG",
            "image/jpeg",
            1,
        ),
        (V11_PATH, {"prompt": "Add an aurora"}, "PNG", "image/png", 1),
        (V11_PATH, {"prompt": "blue", "output_format": "jpeg", "num_images": 3}, "JPEG", "image/jpeg", 3),
        (
            V11_PATH,
            {"prompt": "blue", "output_format": "webp", "acceleration": "fast"},
            "WEBP",
            "image/webp",
            1,
        ),
    ],
)
def test_documented_flow(
    firered_emulator: Emulator, path: str, body: dict[str, Any], fmt: str, mime: str, count: int
) -> None:
    field = "image" if path == V10_PATH else "image_urls"
    model = "firered-image-edit" if path == V10_PATH else "firered-image-edit-v1-1"
    answer = post(firered_emulator, path, {**body, field: firered_emulator.sample_images[:1]})
    assert answer.status_code == 202
    submitted = answer.json()
    assert set(submitted) == {"request_id", "status", "polling_url"}
    assert submitted["request_id"].startswith(model + "_")
    assert submitted["status"] == "QUEUED"
    assert (
        submitted["polling_url"]
        == f"{firered_emulator.gateway_url}/v2/requests/status/{submitted['request_id']}"
    )
    first = status(firered_emulator, submitted["request_id"]).json()
    assert set(first) == STATUS_KEYS
    assert first["output"] is None
    assert first["completed_at"] is None
    done = finish(firered_emulator, submitted["request_id"])
    assert done["_seen"][-1] == "COMPLETED"
    assert "PROCESSING" in done["_seen"]
    assert done["model_id"] == model
    assert done["error"] is None
    assert done["completed_at"]
    assert done["output"]["media_type"] == mime
    assert len(done["output"]["media_url"]) == count
    for url in done["output"]["media_url"]:
        assert url.startswith(firered_emulator.cdn_url)
        img = image_of(url)
        assert img.format == fmt
        assert img.info["content_type"] == mime
        if body.get("aspect_ratio") == "9:16":
            assert img.width / img.height == pytest.approx(9 / 16, rel=0.02)


def test_edits_are_deterministic_for_a_seed(firered_emulator: Emulator) -> None:
    def run(seed: int) -> bytes:
        body = {
            "prompt": "a calm scene",
            "image": firered_emulator.sample_images[1:2],
            "seed": seed,
            "output_format": "png",
        }
        done = finish(firered_emulator, post(firered_emulator, V10_PATH, body).json()["request_id"])
        return requests.get(done["output"]["media_url"][0], timeout=10).content

    assert run(5) == run(5)
    assert run(5) != run(6)


@pytest.mark.parametrize(
    ("kwargs", "key", "code", "error"),
    [
        ({}, None, 401, "Unauthorized"),
        ({}, "", 401, "Unauthorized"),
        ({"keys": ["good"]}, "bad", 401, "Unauthorized"),
        ({"keys": ["good", "off"], "disabled_keys": ["off"]}, "off", 403, "Forbidden"),
        ({"disabled_models": ["firered-image-edit-v1-1"]}, KEY, 400, "Model not found"),
        ({"balance": 0}, KEY, 402, "Insufficient Balance"),
    ],
)
def test_auth_and_queue_errors(kwargs: dict[str, Any], key: str | None, code: int, error: str) -> None:
    with Emulator(**kwargs).start() as emulator:
        answer = post(emulator, V11_PATH, {"prompt": "p", "image_urls": emulator.sample_images[:1]}, key=key)
    assert answer.status_code == code
    assert answer.json()["error"] == error
    assert answer.json()["message"]
    if code == 402:
        assert answer.json()["message"] == "Your wallet does not have enough balance."
    if code == 400:
        assert answer.json()["message"] == "Model 'firered-image-edit-v1-1' not found or is disabled"


def test_key_is_checked_before_404(firered_emulator: Emulator) -> None:
    assert status(firered_emulator, "nope", key=None).status_code == 401
    answer = status(firered_emulator, "nope")
    assert answer.status_code == 404
    assert answer.json()["error"] == "Not Found"
    unknown = requests.get(
        firered_emulator.gateway_url + "/v3/other", headers={"Ocp-Apim-Subscription-Key": KEY}, timeout=5
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "Not Found"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (V10_PATH, {"image": ["u"]}, "prompt"),
        (V10_PATH, {"prompt": "p"}, "image"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "output_quality": 101}, "output_quality"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "true_cfg_scale": 21}, "true_cfg_scale"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "num_inference_steps": 0}, "num_inference_steps"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "aspect_ratio": "2:1"}, "aspect_ratio"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "output_format": "jpeg"}, "output_format"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "go_fast": 1}, "go_fast"),
        (V10_PATH, {"prompt": "p", "image": ["u"], "webhook_events_filter": ["x"]}, "webhook_events_filter"),
        (V11_PATH, {"prompt": "p", "image": ["u"]}, "image_urls"),
        (V11_PATH, {"prompt": "p", "image_urls": ["u"], "num_images": 0}, "num_images"),
        (V11_PATH, {"prompt": "p", "image_urls": ["u"], "output_format": "jpg"}, "output_format"),
        (V11_PATH, {"prompt": "p", "image_urls": ["u"], "acceleration": "turbo"}, "acceleration"),
        (V11_PATH, {"prompt": "p", "image_urls": ["u"], "guidance_scale": "4"}, "guidance_scale"),
        (
            V11_PATH,
            {"prompt": "p", "image_urls": ["u"], "enable_safety_checker": "yes"},
            "enable_safety_checker",
        ),
    ],
)
def test_validation_400(firered_emulator: Emulator, path: str, body: dict[str, Any], field: str) -> None:
    answer = post(firered_emulator, path, body)
    assert answer.status_code == 400
    assert answer.json()["message"].startswith(field + ":")
    assert firered_emulator.submissions() == []


def test_unreachable_or_bad_input_fails_the_job(firered_emulator: Emulator) -> None:
    missing = post(
        firered_emulator,
        V11_PATH,
        {"prompt": "p", "image_urls": [firered_emulator.cdn_url + "/samples/none.png"]},
    )
    done = finish(firered_emulator, missing.json()["request_id"])
    assert done["status"] == "FAILED"
    assert "404" in done["error"]
    assert done["output"] is None
    not_image = post(
        firered_emulator, V11_PATH, {"prompt": "p", "image_urls": [firered_emulator.gateway_url + "/nope"]}
    )
    assert finish(firered_emulator, not_image.json()["request_id"])["status"] == "FAILED"


def test_error_outcome_is_refunded() -> None:
    with Emulator(balance=1).start() as emulator:
        emulator.set_next_outcome("ERROR", "GPU lost")
        body = {"prompt": "p", "image_urls": emulator.sample_images[:1]}
        first = post(emulator, V11_PATH, body).json()["request_id"]
        done = finish(emulator, first)
        assert (done["status"], done["error"], done["output"]) == ("ERROR", "GPU lost", None)
        assert post(emulator, V11_PATH, body).status_code == 202  # the ERROR job was not charged
        assert post(emulator, V11_PATH, body).status_code == 402


def test_failed_outcome(firered_emulator: Emulator) -> None:
    firered_emulator.set_next_outcome("FAILED", "NSFW content detected")
    request_id = post(
        firered_emulator, V11_PATH, {"prompt": "p", "image_urls": firered_emulator.sample_images[:1]}
    ).json()["request_id"]
    done = finish(firered_emulator, request_id)
    assert (done["status"], done["error"]) == ("FAILED", "NSFW content detected")


def test_rate_and_concurrency_limits_answer_429() -> None:
    with Emulator(max_requests_per_second=3).start() as emulator:
        codes = [status(emulator, "x").status_code for _ in range(6)]
        assert codes[:3] == [404, 404, 404]
        assert 429 in codes[3:]
    with Emulator(max_concurrent_jobs=1, processing_seconds=5).start() as emulator:
        body = {"prompt": "p", "image_urls": emulator.sample_images[:1]}
        assert post(emulator, V11_PATH, body).status_code == 202
        limited = post(emulator, V11_PATH, body)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"


def test_cdn_refuses_and_records_the_key(firered_emulator: Emulator) -> None:
    url = firered_emulator.sample_images[0]
    assert requests.get(url, timeout=5).status_code == 200
    refused = requests.get(url, headers={"Ocp-Apim-Subscription-Key": KEY}, timeout=5)
    assert refused.status_code == 403
    (violation,) = firered_emulator.cdn_key_violations
    assert violation.path == "/samples/shoe.png"


def test_injected_faults(firered_emulator: Emulator) -> None:
    body = {"prompt": "p", "image_urls": firered_emulator.sample_images[:1]}
    firered_emulator.inject(Fault(target="submit", kind="status", status_code=503, count=1))
    assert post(firered_emulator, V11_PATH, body).status_code == 503
    assert post(firered_emulator, V11_PATH, body).status_code == 202
    firered_emulator.inject(Fault(target="submit", kind="drop", count=1))
    with pytest.raises(requests.ConnectionError):
        post(firered_emulator, V11_PATH, body)
    assert firered_emulator.submit_attempts()[-1].status == 0
    request_id = post(firered_emulator, V11_PATH, body).json()["request_id"]
    firered_emulator.inject(Fault(target="status", kind="status_value", status_value="WEIRD"))
    assert status(firered_emulator, request_id).json()["status"] == "WEIRD"
    firered_emulator.inject(Fault(target="status", kind="status", status_code=500, fraction=1.0))
    assert status(firered_emulator, request_id).status_code == 500
    firered_emulator.clear_faults()
    assert status(firered_emulator, request_id).status_code == 200


def test_pending_status_fault_answers_a_code_until_the_job_ends(firered_emulator: Emulator) -> None:
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.5)
    body = {"prompt": "p", "image_urls": firered_emulator.sample_images[:1]}
    request_id = post(firered_emulator, V11_PATH, body).json()["request_id"]
    firered_emulator.inject(Fault(target="status", kind="pending_status", status_code=404, count=None))
    pending = status(firered_emulator, request_id)
    assert (pending.status_code, pending.json()["status"]) == (404, "QUEUED")
    deadline = time.monotonic() + 10
    while (answer := status(firered_emulator, request_id)).status_code == 404:
        assert answer.json()["status"] in ("QUEUED", "PROCESSING")
        assert time.monotonic() < deadline, "job never ended"
        time.sleep(0.05)
    assert (answer.status_code, answer.json()["status"]) == (200, "COMPLETED")


def test_render_off_returns_the_input_unedited() -> None:
    with Emulator(render_edits=False, queued_seconds=0, processing_seconds=0.1).start() as emulator:
        source = emulator.sample_images[1]
        request_id = post(emulator, V11_PATH, {"prompt": "p", "image_urls": [source]}).json()["request_id"]
        done = finish(emulator, request_id)
        assert done["output"] == {"media_url": [source], "media_type": "image/png"}
        rendered = requests.get(f"{emulator.cdn_url}/v1/{request_id}/output.png", timeout=10)
        assert rendered.status_code == 404  # nothing was rendered


def test_jobs_are_evicted_after_ttl() -> None:
    with Emulator(job_ttl_seconds=0.3).start() as emulator:
        request_id = post(
            emulator, V11_PATH, {"prompt": "p", "image_urls": emulator.sample_images[:1]}
        ).json()["request_id"]
        deadline = time.monotonic() + 10
        while status(emulator, request_id).status_code != 404:
            assert time.monotonic() < deadline, "job was never evicted"
            time.sleep(0.1)


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize(
    ("mode", "statuses"), [("terminal", ["COMPLETED"]), ("sync", ["PROCESSING", "COMPLETED"])]
)
def test_webhooks(webhook_receiver: tuple[str, list[dict[str, Any]]], mode: str, statuses: list[str]) -> None:
    url, received = webhook_receiver
    with Emulator(allow_http_webhooks=True).start() as emulator:
        answer = post(
            emulator,
            V11_PATH,
            {"prompt": "p", "image_urls": emulator.sample_images[:1]},
            **{"X-Webhook-URL": url, "X-Webhook-Mode": mode},
        )
        done = finish(emulator, answer.json()["request_id"])
        deadline = time.monotonic() + 10
        while len(received) < len(statuses) and time.monotonic() < deadline:
            time.sleep(0.05)
        done.pop("_seen")
    assert [r["status"] for r in received] == statuses
    assert received[-1] == done  # the payload equals the status response


def test_webhook_must_be_https_unless_allowed(firered_emulator: Emulator) -> None:
    body = {"prompt": "p", "image_urls": firered_emulator.sample_images[:1]}
    assert (
        post(firered_emulator, V11_PATH, body, **{"X-Webhook-URL": "http://127.0.0.1:9/x"}).status_code == 400
    )
    v10 = {
        "prompt": "p",
        "image": firered_emulator.sample_images[:1],
        "webhook": "https://hooks.test/x",
        "webhook_events_filter": ["completed"],
    }
    assert post(firered_emulator, V10_PATH, v10).status_code == 202


def test_duplicate_webhooks(webhook_receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook_receiver
    with Emulator(allow_http_webhooks=True, duplicate_webhooks=True).start() as emulator:
        answer = post(
            emulator,
            V11_PATH,
            {"prompt": "p", "image_urls": emulator.sample_images[:1]},
            **{"X-Webhook-URL": url},
        )
        finish(emulator, answer.json()["request_id"])
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(received) == 2
    assert received[0] == received[1]


def test_admin_api(firered_emulator: Emulator) -> None:
    base = firered_emulator.gateway_url + "/_emulator"
    requests.post(
        base + "/faults", json={"target": "status", "kind": "status", "status_code": 502}, timeout=5
    )
    assert status(firered_emulator, "x").status_code == 502
    requests.post(base + "/timings", json={"processing_seconds": 0.01}, timeout=5)
    requests.post(base + "/outcome", json={"status": "FAILED", "error": "bad"}, timeout=5)
    request_id = post(
        firered_emulator, V11_PATH, {"prompt": "p", "image_urls": firered_emulator.sample_images[:1]}
    ).json()["request_id"]
    assert finish(firered_emulator, request_id)["status"] == "FAILED"
    assert [s["path"] for s in requests.get(base + "/submissions", timeout=5).json()] == [V11_PATH]
    assert len(requests.get(base + "/requests", timeout=5).json()) >= 3
    requests.post(base + "/reset", timeout=5)
    assert firered_emulator.requests == []


def test_admin_api_redacts_keys_and_secrets(firered_emulator: Emulator) -> None:
    base = firered_emulator.gateway_url + "/_emulator"
    body = {"prompt": "p", "image_urls": firered_emulator.sample_images[:1]}
    post(
        firered_emulator,
        V11_PATH,
        body,
        Authorization="Bearer other-secret-token",
        **{"X-Webhook-URL": "https://127.0.0.1:9/in?token=webhook-secret"},
    )
    status(firered_emulator, "x")
    requests.get(firered_emulator.sample_images[0], headers={"Ocp-Apim-Subscription-Key": KEY}, timeout=5)
    for endpoint in ("/requests", "/submissions"):
        answer = requests.get(base + endpoint, timeout=5)
        assert answer.status_code == 200
        for secret in (KEY, "other-secret-token", "webhook-secret"):
            assert secret not in answer.text, (endpoint, secret)
        records = answer.json()
        assert records
        # The header names stay: a test can still see that a key was sent (to the CDN, say). The
        # emulator's own fetch of the input (to render the edit) may land any time and sends no key.
        sent_with_key = [r for r in records if "Ocp-Apim-Subscription-Key" in r["headers"]]
        assert sent_with_key
        assert {r["headers"]["Ocp-Apim-Subscription-Key"] for r in sent_with_key} == {"***"}
    (submitted,) = requests.get(base + "/submissions", timeout=5).json()
    assert submitted["headers"]["Authorization"] == "***"
    assert submitted["headers"]["X-Webhook-URL"] == "https://127.0.0.1:9/in?***"
    assert submitted["body"] == body
    cdn = [r for r in requests.get(base + "/requests", timeout=5).json() if r["origin"] == "cdn"]
    assert [r["headers"].get("Ocp-Apim-Subscription-Key") for r in cdn].count("***") == 1
    # In-process tests still read the raw headers, as the CDN key check needs.
    assert firered_emulator.submit_attempts()[0].headers["Ocp-Apim-Subscription-Key"] == KEY
    assert firered_emulator.cdn_key_violations


def test_cli_serves_the_documented_curl_example() -> None:
    process = start_emulator_process(
        "--queued-seconds",
        "0.1",
        "--processing-seconds",
        "0.3",
        command=[str(Path(sys.executable).with_name("firered-emulator"))],  # the console script
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        info = process.info
        assert set(info) == {"gateway_url", "cdn_url", "sample_images"}
        curl = subprocess.run(
            [
                "curl",
                "-s",
                "-X",
                "POST",
                f"{info['gateway_url']}/firered-image-edit/v1/firered-image-edit/generate",
                "-H",
                "Content-Type: application/json",
                "-H",
                "Cache-Control: no-cache",
                "-H",
                "Ocp-Apim-Subscription-Key: YOUR_SUBSCRIPTION_KEY",
                "-w",
                "\n%{http_code}",
                "--data-raw",
                json.dumps(
                    {
                        "prompt": "The woman's dress is changed to black",
                        "image": info["sample_images"][:1],
                        "output_format": "png",
                        "output_quality": 100,
                    }
                ),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        body, code = curl.stdout.rsplit("\n", 1)
        assert code == "202"
        request_id = json.loads(body)["request_id"]
        deadline = time.monotonic() + 20
        while True:
            done = requests.get(
                f"{info['gateway_url']}/v2/requests/status/{request_id}",
                headers={"Ocp-Apim-Subscription-Key": "YOUR_API_KEY"},
                timeout=5,
            ).json()
            if done["status"] == "COMPLETED" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert done["status"] == "COMPLETED"
        assert image_of(done["output"]["media_url"][0]).format == "PNG"
    finally:
        assert process.stop(grace=30) == 0  # SIGTERM is a clean exit
