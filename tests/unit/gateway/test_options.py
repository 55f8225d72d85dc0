"""Validation tables: every option's boundaries and wrong types, for both models, and body building."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.gateway.option_reference import option_reference_markdown
from airflow_provider_firered.gateway.options import (
    MAX_IMAGES,
    MAX_NUM_IMAGES,
    MAX_PROMPT_CHARS,
    MODELS,
    expected_outputs,
    validate_edit,
)

IMG = "https://cdn.example.test/a.png"
V10 = "firered-image-edit"
V11 = "firered-image-edit-v1-1"


def edit(model: str = V11, **parameters: Any) -> dict[str, Any]:
    return validate_edit(model, "make it red", [IMG], parameters).body


def rejects(field: str, model: str = V11, **parameters: Any) -> FireRedValidationError:
    with pytest.raises(FireRedValidationError) as info:
        edit(model, **parameters)
    assert info.value.field == field
    return info.value


# (model, option, accepted values, rejected values) — boundaries from the reference.
CASES: list[tuple[str, str, list[Any], list[Any]]] = [
    (V10, "seed", [0, 42, None, 2**31], ["1", 1.5, True]),
    (V10, "go_fast", [True, False], [1, "true", None]),
    (V10, "aspect_ratio", ["1:1", "16:9", "9:16", "4:3", "3:4", "match_input_image"], ["2:1", "", None, 1]),
    (V10, "output_format", ["webp", "jpg", "png"], ["jpeg", "gif", "PNG", None]),
    (V10, "output_quality", [0, 1, 95, 100], [-1, 101, 50.5, "95", True]),
    (V10, "true_cfg_scale", [0, 0.5, 4, 20, 20.0], [-0.01, 20.01, "4", math.nan, math.inf, False]),
    (V10, "num_inference_steps", [1, 40, 100], [0, 101, 10.0, "40"]),
    (V10, "webhook", ["https://hooks.example.test/cb", None], ["http://hooks.example.test/cb", "nope", 5]),
    (V10, "webhook_events_filter", [["*"], ["completed"], ["*", "completed"]], [[], ["done"], "*", None]),
    (V11, "num_inference_steps", [1, 30, 500], [0, -3, 2.5, "30", 501, 10**9]),
    (V11, "guidance_scale", [0, 4, 7.5, 100], [-0.5, "4", None, math.nan, 100.01, 1e9]),
    (V11, "num_images", [1, 4, MAX_NUM_IMAGES], [0, 1.0, "2", True, MAX_NUM_IMAGES + 1, 10_000]),
    (V11, "enable_safety_checker", [True, False], [0, "false", None]),
    (V11, "output_format", ["png", "jpeg", "webp"], ["jpg", "gif", ""]),
    (V11, "acceleration", ["regular", "fast"], ["turbo", "", None]),
]


@pytest.mark.parametrize(("model", "option", "good", "bad"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_option_boundaries(model: str, option: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert edit(model, **{option: value})[option] == value
    for value in bad:
        err = rejects(f"parameters.{option}", model, **{option: value})
        assert "must be" in err.message


def test_every_documented_option_is_covered() -> None:
    covered = {(m, o) for m, o, _, _ in CASES}
    assert covered == {(m, o) for m, spec in MODELS.items() for o in spec.options}


def test_unknown_option_lists_the_allowed_ones() -> None:
    err = rejects("parameters.aspect_ratio", V11, aspect_ratio="1:1")
    for name in MODELS[V11].options:
        assert name in err.message
    rejects("parameters.num_images", V10, num_images=2)


def test_string_value_from_a_template_gets_a_hint() -> None:
    err = rejects("parameters.num_images", V11, num_images="2")
    assert "render_template_as_native_obj" in err.message


def test_body_for_v1_uses_image_field() -> None:
    body = validate_edit(V10, "p", [IMG], {"output_format": "png", "output_quality": 100}).body
    assert body == {"prompt": "p", "image": [IMG], "output_format": "png", "output_quality": 100}


def test_body_for_v1_1_uses_image_urls_field() -> None:
    body = validate_edit(V11, "p", [IMG, IMG + "?b"], {"num_images": 2}).body
    assert body == {"prompt": "p", "image_urls": [IMG, IMG + "?b"], "num_images": 2}


def test_unknown_model() -> None:
    with pytest.raises(FireRedValidationError, match="model: must be one of 'firered-image-edit'"):
        validate_edit("dall-e", "p", [IMG])


BAD_PROMPTS: list[tuple[Any, ...]] = [
    ("", "empty"),
    ("   \n", "blank"),
    (None, "NoneType"),
    (7, "int"),
    ("x" * (MAX_PROMPT_CHARS + 1), "at most"),
]


@pytest.mark.parametrize(
    ("prompt", "why"),
    BAD_PROMPTS,
)
def test_bad_prompt(prompt: Any, why: str) -> None:
    with pytest.raises(FireRedValidationError, match=why) as info:
        validate_edit(V11, prompt, [IMG])
    assert info.value.field == "prompt"


def test_longest_prompt_is_accepted() -> None:
    assert validate_edit(V11, "x" * MAX_PROMPT_CHARS, [IMG]).body["prompt"]


BAD_IMAGES: list[tuple[Any, ...]] = [
    ([], "images", "at least one"),
    (IMG, "images", "list"),
    (None, "images", "list"),
    ([f"{IMG}?{i}" for i in range(MAX_IMAGES + 1)], "images", "at most"),
    ([IMG, IMG], "images[1]", "duplicates"),
    (["not a url"], "images[0]", "http"),
    (["file:///etc/passwd"], "images[0]", "http"),
    (["ftp://host/a.png"], "images[0]", "http"),
    (["s3://bucket/a.png"], "images[0]", "http"),
    (["https://"], "images[0]", "http"),
    (["https://user:pw@host/a.png"], "images[0]", "credentials"),
    (["https://host:99999/a.png"], "images[0]", "http"),
    ([42], "images[0]", "int"),
    (["https://host/" + "a" * 2100], "images[0]", "at most"),
]


@pytest.mark.parametrize(
    ("images", "field", "why"),
    BAD_IMAGES,
)
def test_bad_images(images: Any, field: str, why: str) -> None:
    with pytest.raises(FireRedValidationError, match=why) as info:
        validate_edit(V11, "p", images)
    assert info.value.field == field


def test_most_images_accepted() -> None:
    images = [f"http://127.0.0.1/{i}.png" for i in range(MAX_IMAGES)]
    assert validate_edit(V11, "p", images).body["image_urls"] == images


def test_webhook_headers() -> None:
    request = validate_edit(V11, "p", [IMG], webhook_url="https://h.test/cb", webhook_mode="sync")
    assert request.headers == {"X-Webhook-URL": "https://h.test/cb", "X-Webhook-Mode": "sync"}
    assert validate_edit(V11, "p", [IMG]).headers == {}


BAD_WEBHOOKS: list[tuple[Any, ...]] = [
    ("http://h.test/cb", None, "webhook_url"),
    ("https://h.test/cb", "always", "webhook_mode"),
    (None, "sync", "webhook_mode"),
    ("ftp://h.test", "terminal", "webhook_url"),
]


@pytest.mark.parametrize(
    ("url", "mode", "field"),
    BAD_WEBHOOKS,
)
def test_bad_webhook(url: Any, mode: Any, field: str) -> None:
    with pytest.raises(FireRedValidationError) as info:
        validate_edit(V11, "p", [IMG], webhook_url=url, webhook_mode=mode)
    assert info.value.field == field


def test_parameters_must_be_a_mapping() -> None:
    with pytest.raises(FireRedValidationError, match="mapping"):
        validate_edit(V11, "p", [IMG], "{'num_images': 2}")  # type: ignore[arg-type]


def test_readme_option_reference_is_generated_from_the_tables() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert option_reference_markdown() in readme, (
        "README option reference is stale: regenerate it with "
        "`python -m airflow_provider_firered.gateway.option_reference`"
    )


def test_provider_guards_are_in_the_option_reference() -> None:
    reference = option_reference_markdown()
    for text in (
        f"| `num_images` | integer | `1` | an integer from 1 to {MAX_NUM_IMAGES} (provider guard)",
        "| `num_inference_steps` | integer | `30` | an integer from 1 to 500 (provider guard)",
        "| `guidance_scale` | number | `4` | a number from 0 to 100 (provider guard)",
    ):
        assert text in reference


@pytest.mark.parametrize(
    ("model", "parameters", "expected"),
    [
        (V10, None, 1),
        (V10, {"output_format": "png"}, 1),
        (V11, None, 1),
        (V11, {"num_images": None}, 1),
        (V11, {"num_images": 3}, 3),
        (V11, {"num_images": MAX_NUM_IMAGES}, MAX_NUM_IMAGES),
    ],
)
def test_expected_outputs(model: str, parameters: dict[str, Any] | None, expected: int) -> None:
    assert expected_outputs(model, parameters) == expected


def test_expected_outputs_refuses_what_validation_refuses() -> None:
    with pytest.raises(FireRedValidationError, match=r"parameters\.num_images"):
        expected_outputs(V11, {"num_images": MAX_NUM_IMAGES + 1})
    with pytest.raises(FireRedValidationError, match="model"):
        expected_outputs("dall-e", {})
