"""
The ``firered`` connection form and its extras, declared once.

Everything else is generated from :data:`EXTRAS` and the form constants below: the ``conn-fields``
schema and ``ui-field-behaviour`` in ``get_provider_info`` (Airflow 3.2+), the legacy
``FireRedHook.get_ui_field_behaviour`` (Airflow 3.0/3.1), the README's extras table
(``python -m airflow_provider_firered.gateway.connection_extras``; a test keeps it in step) and the parsing
of a connection's extras in :func:`parse_extras`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_firered.utils.retry import RetryPolicy

if TYPE_CHECKING:
    # Not imported at run time: Airflow imports this module (through get_provider_info) while it is
    # itself starting, before exceptions.py, whose base class is Airflow's, can load.
    from airflow_provider_firered.exceptions import FireRedValidationError

log = logging.getLogger(__name__)

DEFAULT_GATEWAY = "https://gateway.pixazo.ai"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
#: Upper bounds of the extras: far above any sensible setting, low enough that no timer, socket
#: timeout or wait computed from them overflows or outlasts a task.
MAX_REQUEST_TIMEOUT = 3600.0
MAX_DOWNLOAD_BYTES_LIMIT = 1024 * 1024 * 1024
MAX_RETRY_ATTEMPTS = 100
MAX_RETRY_WAIT = 3600.0
MAX_RETRY_MULTIPLIER = 10.0
MAX_RETRY_ELAPSED = 86400.0
#: The longest host name DNS allows, and the longest label in it.
MAX_HOST_CHARS = 253
MAX_LABEL_CHARS = 63
#: How much of a refused value an error message shows.
MAX_SHOWN_CHARS = 100
#: No number in the allowed ranges needs more characters than this when typed as text.
_MAX_NUMBER_TEXT = 40
#: How many unknown extras the warning names.
_MAX_UNKNOWN_SHOWN = 10

#: Standard connection fields the gateway does not use.
HIDDEN_FIELDS = ("schema", "port", "login")
#: Labels of the standard fields the gateway uses.
RELABELING = {"host": "Gateway URL", "password": "API key"}
#: What a first-time user reads in the empty standard fields.
PLACEHOLDERS = {
    "host": f"Leave empty for {DEFAULT_GATEWAY}",
    "password": "Your FireRed subscription key",
}

Kind = Literal["number", "integer", "boolean", "host"]
_JSON_TYPE: dict[Kind, str] = {
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "host": "string",
}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


@dataclass(frozen=True)
class Extra:
    """
    One connection extra.

    :param name: the key in the connection's extra JSON.
    :param kind: ``number``, ``integer``, ``boolean`` or ``host`` (a bare host name).
    :param default: the value used when the extra is absent, null or empty.
    :param label: the form's label.
    :param help: one sentence for the form and the README.
    :param minimum: the smallest value allowed (numbers only).
    :param exclusive: whether ``minimum`` itself is refused.
    :param maximum: the largest value allowed (numbers only; every number extra has one).
    """

    name: str
    kind: Kind
    default: Any
    label: str
    help: str
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None

    def allowed(self) -> str:
        """Return the allowed values in words, for error messages and the README."""
        if self.kind == "boolean":
            return "true or false"
        if self.kind == "host":
            return (
                "a host name such as `gateway.internal` (no scheme, port or path) of at most "
                f"{MAX_HOST_CHARS} characters"
            )
        noun = "an integer" if self.kind == "integer" else "a number"
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive else '>='} {_number_text(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"<= {_number_text(self.maximum)}")
        return " ".join([noun, " and ".join(bounds)]) if bounds else noun

    def schema(self) -> dict[str, Any]:
        """Return the JSON schema of the form field; null is allowed and means the default."""
        schema: dict[str, Any] = {"type": [_JSON_TYPE[self.kind], "null"]}
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.kind == "host":
            schema["maxLength"] = MAX_HOST_CHARS
        return schema

    def parse(self, raw: Any) -> Any:
        """
        Read the extra's stored value: null, an empty string or whitespace means the default.

        :param raw: the value from the connection's extra JSON (the UI may store numbers as text).
        :raises FireRedValidationError: naming the extra and what is allowed.
        """
        value = raw.strip() if isinstance(raw, str) else raw
        if value is None or value == "":
            return self.default
        if self.kind == "boolean":
            return self._boolean(value, raw)
        if self.kind == "host":
            return self._host(value, raw)
        return self._number(value, raw)

    def _fail(self, raw: Any) -> FireRedValidationError:
        from airflow_provider_firered.exceptions import FireRedValidationError

        return FireRedValidationError(
            f"connection extra {self.name}", f"must be {self.allowed().replace('`', '')}, got {clip(raw)}"
        )

    def _boolean(self, value: Any, raw: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise self._fail(raw)

    def _host(self, value: Any, raw: Any) -> str:
        if not isinstance(value, str) or len(value) > MAX_HOST_CHARS + 1:  # one more for a final dot
            raise self._fail(raw)
        host = value.lower().rstrip(".")
        try:
            return str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            pass
        labels = host.split(".")
        if len(host) > MAX_HOST_CHARS or not all(
            len(label) <= MAX_LABEL_CHARS and _HOST_LABEL.match(label) for label in labels
        ):
            raise self._fail(raw)
        return host

    def _number(self, value: Any, raw: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self._fail(raw)
        if isinstance(value, str) and len(value) > _MAX_NUMBER_TEXT:
            raise self._fail(raw)
        try:
            number: float | int = (
                value
                if isinstance(value, int)
                else int(value)
                if isinstance(value, str) and value.isdigit()
                else float(value)
            )
        except (ValueError, OverflowError):
            raise self._fail(raw) from None
        if isinstance(number, float):
            if not math.isfinite(number):
                raise self._fail(raw)
            if self.kind == "integer":
                if not number.is_integer():
                    raise self._fail(raw)
                number = int(number)
        if self.minimum is not None and (
            number < self.minimum or (self.exclusive and number == self.minimum)
        ):
            raise self._fail(raw)
        if self.maximum is not None and number > self.maximum:
            raise self._fail(raw)
        return number if self.kind == "integer" else float(number)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def clip(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """
    Show ``value`` for an error message: its ``repr``, cut to ``limit`` characters with ``...``.

    :param value: the refused value (text, a number, anything read from JSON).
    :param limit: the most characters of the value shown.
    """
    if isinstance(value, str) and len(value) > limit:
        # Cut before repr: a value of megabytes is never copied whole.
        return f"{value[:limit]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past Python's digit limit, a deeply nested list
        return f"a {type(value).__name__} too large to show"
    return f"{text[:limit]}... ({len(text)} characters)" if len(text) > limit else text


_RETRY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RetryPolicy)}


def _retry(
    name: str,
    label: str,
    help: str,
    *,
    kind: Kind = "number",
    minimum: float = 0,
    maximum: float = MAX_RETRY_WAIT,
) -> Extra:
    """Return a retry extra: ``retry_<field>``, its default taken from :class:`RetryPolicy`."""
    return Extra(f"retry_{name}", kind, _RETRY_DEFAULTS[name], label, help, minimum=minimum, maximum=maximum)


#: Every extra a user may set, in form order.
EXTRAS: tuple[Extra, ...] = (
    Extra(
        "request_timeout",
        "number",
        DEFAULT_REQUEST_TIMEOUT,
        "Request timeout (seconds)",
        "Seconds allowed for one HTTP exchange with the gateway or the CDN.",
        minimum=0,
        exclusive=True,
        maximum=MAX_REQUEST_TIMEOUT,
    ),
    Extra(
        "max_download_bytes",
        "integer",
        DEFAULT_MAX_DOWNLOAD_BYTES,
        "Largest output file (bytes)",
        "Output files larger than this are refused; 52428800 is 50 MiB.",
        minimum=1,
        maximum=MAX_DOWNLOAD_BYTES_LIMIT,
    ),
    _retry(
        "max_attempts",
        "Retry: attempts",
        "Tries of one call on 429, 5xx and network errors, the first included.",
        kind="integer",
        minimum=1,
        maximum=MAX_RETRY_ATTEMPTS,
    ),
    _retry("initial_wait", "Retry: first wait (seconds)", "Wait before the first retry."),
    _retry("max_wait", "Retry: longest wait (seconds)", "Cap on the exponential wait between retries."),
    _retry(
        "multiplier",
        "Retry: wait multiplier",
        "Each wait is this many times the previous one.",
        maximum=MAX_RETRY_MULTIPLIER,
    ),
    _retry("jitter", "Retry: jitter (seconds)", "Up to this many random seconds are added to each wait."),
    _retry(
        "max_retry_after",
        "Retry: longest Retry-After (seconds)",
        "Cap on a Retry-After the gateway asks for.",
    ),
    _retry(
        "max_elapsed",
        "Retry: give up after (seconds)",
        "No retry starts once this many seconds have passed since the first try of a call.",
        maximum=MAX_RETRY_ELAPSED,
    ),
    Extra(
        "resend_submit_on_5xx",
        "boolean",
        False,
        "Re-send a submit after a 5xx answer",
        "Risky: after a 5xx or 408 answer the gateway may have accepted the submit, so each re-send "
        "can be another paid edit. When off, a submit is sent again only after a 429 or a connection "
        "that never opened.",
    ),
    Extra(
        "allow_private_media_hosts",
        "boolean",
        False,
        "Allow media from private addresses",
        "Download outputs from loopback, private, link-local or metadata addresses too (a gateway on "
        "such an address allows it for itself).",
    ),
    Extra(
        "allow_http_host",
        "host",
        None,
        "Allow plain http to this gateway host",
        "A gateway host reached over plain http (the key travels in clear text; a warning is logged). "
        "Every other gateway must use https; loopback may always use http.",
    ),
)

EXTRAS_BY_NAME: Mapping[str, Extra] = {extra.name: extra for extra in EXTRAS}
#: The retry extras, mapped to :class:`RetryPolicy` fields.
RETRY_EXTRAS: Mapping[str, str] = {
    e.name: e.name.removeprefix("retry_") for e in EXTRAS if e.name.startswith("retry_")
}


def parse_extras(extras: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    Every declared extra's value, its default where it is absent, null or empty.

    :param extras: the connection's extra JSON, as a mapping.
    :raises FireRedValidationError: naming the first bad extra and what it allows.
    """
    extras = extras or {}
    if not isinstance(extras, Mapping):
        from airflow_provider_firered.exceptions import FireRedValidationError

        raise FireRedValidationError(
            "connection extra", f"must be a JSON object, got {type(extras).__name__}"
        )
    unknown = sorted(str(key) for key in extras if key not in EXTRAS_BY_NAME)
    if unknown:
        # Named, but bounded: a connection may hold any number of keys of any length.
        shown = ", ".join(clip(name, 40) for name in unknown[:_MAX_UNKNOWN_SHOWN])
        more = len(unknown) - _MAX_UNKNOWN_SHOWN
        log.warning(
            "Ignoring unknown FireRed connection extras: %s%s", shown, f" and {more} more" if more > 0 else ""
        )
    return {extra.name: extra.parse(extras.get(extra.name)) for extra in EXTRAS}


def retry_policy(values: Mapping[str, Any]) -> RetryPolicy:
    """Return the retry policy of parsed extras (see :func:`parse_extras`)."""
    return RetryPolicy(**{field: values[name] for name, field in RETRY_EXTRAS.items()})


# -- the form ----------------------------------------------------------------------------------------


def conn_fields() -> dict[str, dict[str, Any]]:
    """Return the ``conn-fields`` of provider info (Airflow 3.2+ builds the form's extra fields from it)."""
    return {
        extra.name: {
            "label": extra.label,
            "description": f"{extra.help} Default: {_default_text(extra)}. Allowed: "
            f"{extra.allowed().replace('`', '')}.",
            "schema": extra.schema(),
        }
        for extra in EXTRAS
    }


def provider_field_behaviour() -> dict[str, Any]:
    """Return the ``ui-field-behaviour`` of provider info (kebab-case keys)."""
    return {
        "hidden-fields": list(HIDDEN_FIELDS),
        "relabeling": dict(RELABELING),
        "placeholders": dict(PLACEHOLDERS),
    }


def legacy_field_behaviour() -> dict[str, Any]:
    """Return what ``get_ui_field_behaviour`` gives Airflow 3.0/3.1, with every extra's default as JSON."""
    defaults = {extra.name: extra.default for extra in EXTRAS}
    return {
        "hidden_fields": list(HIDDEN_FIELDS),
        "relabeling": dict(RELABELING),
        "placeholders": {**PLACEHOLDERS, "extra": json.dumps(defaults)},
    }


# -- the README ---------------------------------------------------------------------------------------


def _default_text(extra: Extra) -> str:
    if extra.default is None:
        return "none"
    if isinstance(extra.default, bool):
        return str(extra.default).lower()
    return _number_text(extra.default)


def extras_table_markdown() -> str:
    """Return the README's extras table (the README embeds exactly this text)."""
    lines = [
        "| extra | form label | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for extra in EXTRAS:
        lines.append(
            f"| `{extra.name}` | {extra.label} | {_default_text(extra)} | {extra.allowed()} | {extra.help} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(extras_table_markdown(), end="")
