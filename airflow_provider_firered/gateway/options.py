"""
The two FireRed models, their documented options, and validation of an edit request.

These tables are the single source of truth: the hook validates with them, builds request bodies
from them, and the README's option reference is generated from them (``python -m
airflow_provider_firered.gateway.option_reference`` prints it; a test checks the README holds exactly
that text).
Ranges and value sets come from the gateway reference; where the reference documents none, the
bound marked "provider guard" is ours and only rejects values that cannot mean anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.utils.urls import http_url_parts

OptionType = Literal["integer", "number", "boolean", "string", "array"]

DEFAULT_MODEL = "firered-image-edit-v1-1"
STATUS_PATH = "/v2/requests/status/{request_id}"
WEBHOOK_MODES = ("terminal", "sync")

#: The most images one edit may ask for (``num_images``): a provider guard, and the most media URLs
#: a ``COMPLETED`` answer may carry.
MAX_NUM_IMAGES = 8
#: Provider guards on model 1.1's tuning options: several times what any sensible edit uses (the
#: reference shows 30 steps and a guidance scale of 4), so only a typo or a runaway template reaches
#: them, and it is refused before anything is paid.
MAX_INFERENCE_STEPS_V1_1 = 500
MAX_GUIDANCE_SCALE_V1_1 = 100
#: Provider guards on the request as a whole (the reference documents no limit for these).
MAX_PROMPT_CHARS = 5000
MAX_IMAGES = 10
MAX_URL_CHARS = 2048

_TEMPLATE_HINT = (
    " (Jinja renders templated values as strings unless the DAG sets render_template_as_native_obj=True)"
)


@dataclass(frozen=True)
class OptionSpec:
    """
    One documented option of a model.

    :param name: the API name, as sent in the request body.
    :param type: the JSON type the gateway expects.
    :param default: the gateway's default, as documented.
    :param description: a short description for the reference.
    :param minimum: smallest allowed value (numbers) or item count (arrays).
    :param maximum: largest allowed value.
    :param choices: allowed values (strings) or allowed items (arrays).
    :param nullable: whether ``None`` (JSON null) is allowed.
    :param https_only: the value is a URL that must use https.
    :param guard: the bounds are a provider guard, not documented by the gateway.
    """

    name: str
    type: OptionType
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    https_only: bool = False
    guard: bool = False

    def allowed(self, show: Callable[[Any], str] = repr) -> str:
        """
        Describe the allowed values in words, for error messages and the reference.

        :param show: how a value is written (``repr`` in errors, JSON in the README's reference).
        """
        if self.choices is not None:
            values = ", ".join(show(c) for c in self.choices)
            return f"a list of values from {values}" if self.type == "array" else f"one of {values}"
        text = {
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
            "string": "a string",
            "array": "a list",
        }[self.type]
        if self.https_only:
            text = "an https:// URL"
        if self.minimum is not None and self.maximum is not None:
            text += f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            text += f" >= {self.minimum:g}"
        if self.nullable:
            text += ", or null"
        return text

    def validate(self, value: Any, field_name: str) -> Any:
        """
        Return ``value`` if it is allowed, else raise :class:`FireRedValidationError`.

        :param value: the value to check.
        :param field_name: the name used in the error (``parameters.<name>``).
        """
        if value is None:
            if self.nullable:
                return None
            raise FireRedValidationError(field_name, f"must be {self.allowed()}, got null")
        if not _has_type(value, self.type):
            hint = _TEMPLATE_HINT if isinstance(value, str) else ""
            raise FireRedValidationError(
                field_name,
                f"must be {self.allowed()}, got {type(value).__name__} {_short(value)}{hint}",
            )
        if self.type == "array":
            return self._validate_items(value, field_name)
        if self.choices is not None and value not in self.choices:
            raise FireRedValidationError(field_name, f"must be {self.allowed()}, got {_short(value)}")
        if self.https_only:
            _check_url(value, field_name, schemes=("https",))
        if self.minimum is not None and value < self.minimum:
            raise FireRedValidationError(field_name, f"must be {self.allowed()}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise FireRedValidationError(field_name, f"must be {self.allowed()}, got {value!r}")
        return value

    def _validate_items(self, value: Sequence[Any], field_name: str) -> list[Any]:
        if not value:
            raise FireRedValidationError(field_name, f"must be {self.allowed()}, got an empty list")
        for item in value:
            if self.choices is not None and item not in self.choices:
                raise FireRedValidationError(field_name, f"must be {self.allowed()}, got item {_short(item)}")
        return list(value)


@dataclass(frozen=True)
class ModelSpec:
    """
    A model served by the gateway.

    :param model_id: the id the gateway uses (also the prefix of its request ids).
    :param title: a human name.
    :param submit_path: the submit endpoint, under the gateway root.
    :param image_field: the body field that carries the input image URLs.
    :param options: the documented optional parameters, by API name.
    """

    model_id: str
    title: str
    submit_path: str
    image_field: str
    options: Mapping[str, OptionSpec] = field(default_factory=dict)


def _options(*specs: OptionSpec) -> dict[str, OptionSpec]:
    return {spec.name: spec for spec in specs}


MODELS: dict[str, ModelSpec] = {
    "firered-image-edit": ModelSpec(
        model_id="firered-image-edit",
        title="FireRed Image Edit 1",
        submit_path="/firered-image-edit/v1/firered-image-edit/generate",
        image_field="image",
        options=_options(
            OptionSpec("seed", "integer", None, "Random seed for reproducibility", nullable=True),
            OptionSpec("go_fast", "boolean", True, "Optimized cache scheduling for faster generation"),
            OptionSpec(
                "aspect_ratio",
                "string",
                "match_input_image",
                "Aspect ratio of the output",
                choices=("1:1", "16:9", "9:16", "4:3", "3:4", "match_input_image"),
            ),
            OptionSpec(
                "output_format", "string", "webp", "Output image format", choices=("webp", "jpg", "png")
            ),
            OptionSpec("output_quality", "integer", 95, "Image quality", minimum=0, maximum=100),
            OptionSpec("true_cfg_scale", "number", 4, "True CFG guidance scale", minimum=0, maximum=20),
            OptionSpec(
                "num_inference_steps", "integer", 40, "Number of denoising steps", minimum=1, maximum=100
            ),
            OptionSpec(
                "webhook",
                "string",
                None,
                "Callback URL for completion notification",
                nullable=True,
                https_only=True,
            ),
            OptionSpec(
                "webhook_events_filter",
                "array",
                ["*"],
                "Events that trigger the webhook",
                choices=("*", "completed"),
            ),
        ),
    ),
    "firered-image-edit-v1-1": ModelSpec(
        model_id="firered-image-edit-v1-1",
        title="FireRed Image Edit 1.1",
        submit_path="/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request",
        image_field="image_urls",
        options=_options(
            OptionSpec(
                "num_inference_steps",
                "integer",
                30,
                "Number of denoising steps",
                minimum=1,
                maximum=MAX_INFERENCE_STEPS_V1_1,
                guard=True,
            ),
            OptionSpec(
                "guidance_scale",
                "number",
                4,
                "How closely the output follows the prompt",
                minimum=0,
                maximum=MAX_GUIDANCE_SCALE_V1_1,
                guard=True,
            ),
            OptionSpec(
                "num_images",
                "integer",
                1,
                "Number of edited images to generate",
                minimum=1,
                maximum=MAX_NUM_IMAGES,
                guard=True,
            ),
            OptionSpec("enable_safety_checker", "boolean", True, "Content safety filtering"),
            OptionSpec(
                "output_format", "string", "png", "Output image format", choices=("png", "jpeg", "webp")
            ),
            OptionSpec("acceleration", "string", "regular", "Processing mode", choices=("regular", "fast")),
        ),
    ),
}


@dataclass(frozen=True)
class EditRequest:
    """
    A validated edit request, ready to send.

    :param model: the model spec.
    :param body: the JSON body, built exactly as the reference documents it.
    :param headers: extra headers (webhook), without the subscription key.
    """

    model: ModelSpec
    body: dict[str, Any]
    headers: dict[str, str]


def get_model(model: str) -> ModelSpec:
    """Return the spec of ``model`` or raise a validation error naming the allowed ids."""
    if not isinstance(model, str) or model not in MODELS:
        allowed = ", ".join(repr(m) for m in MODELS)
        raise FireRedValidationError("model", f"must be one of {allowed}, got {_short(model)}")
    return MODELS[model]


def validate_edit(
    model: str,
    prompt: Any,
    images: Any,
    parameters: Mapping[str, Any] | None = None,
    *,
    webhook_url: str | None = None,
    webhook_mode: str | None = None,
) -> EditRequest:
    """
    Validate an edit request and build its body; raise :class:`FireRedValidationError` on bad input.

    :param model: the model id.
    :param prompt: the edit instruction.
    :param images: input image URLs (http or https).
    :param parameters: the model's documented options, by their API names.
    :param webhook_url: optional https URL sent as ``X-Webhook-URL``.
    :param webhook_mode: optional ``terminal`` or ``sync``, sent as ``X-Webhook-Mode``.
    """
    spec = get_model(model)
    body: dict[str, Any] = {
        "prompt": validate_prompt(prompt),
        spec.image_field: validate_images(images),
    }
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, Mapping):
        raise FireRedValidationError(
            "parameters", f"must be a mapping of option names to values, got {type(parameters).__name__}"
        )
    for name, value in parameters.items():
        option = spec.options.get(name)
        if option is None:
            allowed = ", ".join(spec.options)
            raise FireRedValidationError(
                f"parameters.{name}", f"is not an option of {spec.model_id}; allowed options: {allowed}"
            )
        body[name] = option.validate(value, f"parameters.{name}")
    return EditRequest(model=spec, body=body, headers=validate_webhook(webhook_url, webhook_mode))


def validate_prompt(prompt: Any) -> str:
    """Return the prompt if it is a non-blank string within the provider's length guard."""
    if not isinstance(prompt, str):
        raise FireRedValidationError("prompt", f"must be a non-empty string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise FireRedValidationError("prompt", "must be a non-empty string, got an empty or blank one")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise FireRedValidationError(
            "prompt", f"must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}"
        )
    return prompt


def validate_images(images: Any) -> list[str]:
    """Return the image URLs as a list if there are 1..MAX_IMAGES distinct http(s) URLs."""
    if isinstance(images, str) or not isinstance(images, Sequence):
        hint = _TEMPLATE_HINT if isinstance(images, str) else ""
        raise FireRedValidationError(
            "images", f"must be a list of http(s) image URLs, got {type(images).__name__}{hint}"
        )
    if not images:
        raise FireRedValidationError("images", "must hold at least one image URL, got an empty list")
    if len(images) > MAX_IMAGES:
        raise FireRedValidationError("images", f"must hold at most {MAX_IMAGES} URLs, got {len(images)}")
    seen: set[str] = set()
    for index, url in enumerate(images):
        name = f"images[{index}]"
        _check_url(url, name, schemes=("http", "https"))
        if url in seen:
            raise FireRedValidationError(name, f"duplicates an earlier URL: {_short(url)}")
        seen.add(url)
    return list(images)


def validate_webhook(webhook_url: Any, webhook_mode: Any) -> dict[str, str]:
    """Return the webhook headers to send (empty without a webhook)."""
    if webhook_url is None or webhook_url == "":
        if webhook_mode:
            raise FireRedValidationError("webhook_mode", "needs webhook_url to be set")
        return {}
    _check_url(webhook_url, "webhook_url", schemes=("https",))
    headers = {"X-Webhook-URL": webhook_url}
    if webhook_mode:
        if webhook_mode not in WEBHOOK_MODES:
            allowed = ", ".join(repr(m) for m in WEBHOOK_MODES)
            raise FireRedValidationError(
                "webhook_mode", f"must be one of {allowed}, got {_short(webhook_mode)}"
            )
        headers["X-Webhook-Mode"] = webhook_mode
    return headers


def _check_url(url: Any, field_name: str, *, schemes: tuple[str, ...]) -> None:
    wanted = " or ".join(f"{s}://" for s in schemes)
    if not isinstance(url, str):
        raise FireRedValidationError(field_name, f"must be an {wanted} URL, got {type(url).__name__}")
    if len(url) > MAX_URL_CHARS:
        raise FireRedValidationError(field_name, f"must be at most {MAX_URL_CHARS} characters long")
    parts = http_url_parts(url, schemes)
    if parts is None:
        raise FireRedValidationError(field_name, f"must be an {wanted} URL, got {_short(url)}")
    if parts.username or parts.password:
        raise FireRedValidationError(field_name, "must not embed credentials (user:password@) in the URL")


def expected_outputs(model: str, parameters: Mapping[str, Any] | None = None) -> int:
    """
    Return how many media URLs a completed edit may carry.

    That is its ``num_images`` when the model has that option, else 1. A ``COMPLETED`` answer
    listing more is a bad answer.

    :param model: the model id.
    :param parameters: the edit's options, as validated by :func:`validate_edit`.
    """
    spec = get_model(model)
    option = spec.options.get("num_images")
    if option is None:
        return 1
    value = (parameters or {}).get("num_images")
    return int(option.default if value is None else option.validate(value, "parameters.num_images"))


def _has_type(value: Any, kind: OptionType) -> bool:
    # bool is a subclass of int in Python but not a JSON integer.
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "string":
        return isinstance(value, str)
    return isinstance(value, (list, tuple))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
