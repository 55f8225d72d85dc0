"""The README's option reference, generated from the option tables: ``python -m`` this module prints it."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_firered.gateway.options import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_URL_CHARS, MODELS


def _json_values(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def option_reference_markdown() -> str:
    """Render the per-model option reference (the README embeds exactly this text)."""
    lines: list[str] = []
    for spec in MODELS.values():
        lines += [
            f"#### `{spec.model_id}` ({spec.title})",
            "",
            f"Submit path `{spec.submit_path}`; the images go in the `{spec.image_field}` field.",
            "",
            "| option | type | default | allowed | description |",
            "|---|---|---|---|---|",
        ]
        for option in spec.options.values():
            default = f"`{json.dumps(option.default)}`"
            allowed = option.allowed(_json_values) + (" (provider guard)" if option.guard else "")
            lines.append(
                f"| `{option.name}` | {option.type} | {default} | {allowed} | {option.description} |"
            )
        lines.append("")
    lines.append(
        f"Every request: `prompt` a non-blank string of at most {MAX_PROMPT_CHARS} characters; "
        f"`images` 1 to {MAX_IMAGES} distinct http(s) URLs of at most {MAX_URL_CHARS} characters "
        "(provider guards); `webhook_url` https only, `webhook_mode` `terminal` or `sync`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(option_reference_markdown())
