"""
The gateway's own request validation, written from the reference on its own.

Kept apart from the provider's option tables on purpose: the emulator is the provider's test
partner, so it must not share (and hide) the provider's mistakes.
"""

from __future__ import annotations

import math
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "firered-image-edit": {
        "path": "/firered-image-edit/v1/firered-image-edit/generate",
        "image_field": "image",
        "default_format": "webp",
    },
    "firered-image-edit-v1-1": {
        "path": "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request",
        "image_field": "image_urls",
        "default_format": "png",
    },
}
PATHS = {spec["path"]: model for model, spec in MODELS.items()}
MAX_IMAGES_PER_JOB = 8


class Invalid(ValueError):
    """A request the gateway answers with 400; the message names the field."""


def _int(body: dict[str, Any], name: str, lo: int | None = None, hi: int | None = None) -> None:
    if name not in body:
        return
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{name}: must be an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise Invalid(f"{name}: must be between {lo} and {hi}")


def _num(body: dict[str, Any], name: str, lo: float, hi: float | None = None) -> None:
    if name not in body:
        return
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid(f"{name}: must be a number")
    if value < lo or (hi is not None and value > hi):
        raise Invalid(f"{name}: must be between {lo} and {hi}")


def _bool(body: dict[str, Any], name: str) -> None:
    if name in body and not isinstance(body[name], bool):
        raise Invalid(f"{name}: must be a boolean")


def _enum(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if name in body and body[name] not in allowed:
        raise Invalid(f"{name}: must be one of {', '.join(allowed)}")


def validate(model: str, body: Any) -> list[str]:
    """Check a submit body; return the input image URLs or raise :class:`Invalid`."""
    if not isinstance(body, dict):
        raise Invalid("body: must be a JSON object")
    if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
        raise Invalid("prompt: is required and must be a non-empty string")
    field = MODELS[model]["image_field"]
    images = body.get(field)
    if not isinstance(images, list) or not images or not all(isinstance(u, str) and u for u in images):
        raise Invalid(f"{field}: is required and must be a non-empty array of URL strings")
    if model == "firered-image-edit":
        if body.get("seed") is not None:
            _int(body, "seed")
        _bool(body, "go_fast")
        _enum(body, "aspect_ratio", ("1:1", "16:9", "9:16", "4:3", "3:4", "match_input_image"))
        _enum(body, "output_format", ("webp", "jpg", "png"))
        _int(body, "output_quality", 0, 100)
        _num(body, "true_cfg_scale", 0, 20)
        _int(body, "num_inference_steps", 1, 100)
        if body.get("webhook") is not None and not isinstance(body["webhook"], str):
            raise Invalid("webhook: must be a string")
        events = body.get("webhook_events_filter")
        if events is not None and (
            not isinstance(events, list) or not events or any(e not in ("*", "completed") for e in events)
        ):
            raise Invalid('webhook_events_filter: must be an array of "*" or "completed"')
    else:
        _int(body, "num_inference_steps", 1)
        _num(body, "guidance_scale", 0)
        _int(body, "num_images", 1, MAX_IMAGES_PER_JOB)
        _bool(body, "enable_safety_checker")
        _enum(body, "output_format", ("png", "jpeg", "webp"))
        _enum(body, "acceleration", ("regular", "fast"))
    return images
