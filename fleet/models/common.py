"""Shared field types, the fleet's SQLModel base, and the error/page schemas.

Every string or number that reaches the database passes through one of these types, so
input the database would choke on (NUL characters, lone surrogates, NaN, integers past
64 bits) is refused at the boundary with a 422 that says how to fix it, instead of a 500
from the driver. The JSON Schema each type publishes matches what its validator accepts,
so generated clients and Schemathesis see the same rules the server enforces.
"""

from __future__ import annotations

import enum
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from sqlalchemy import MetaData
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

# Deterministic constraint names: Alembic batch migrations on SQLite and downgrades
# need to address constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The fleet's own metadata: other packages may use SQLModel too, and the fleet's
#: migrations must only ever see the fleet's tables.
fleet_registry = registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))


class FleetModel(SQLModel, registry=fleet_registry):
    """Base of every fleet table and schema (keeps them out of SQLModel's global metadata)."""


class InputModel(FleetModel):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


def enum_type(enum_cls: type[enum.Enum]) -> sa.Enum:
    """Store an enum as its string value in a VARCHAR (no native PostgreSQL enum type:
    adding a value later would need an ``ALTER TYPE`` outside a transaction)."""
    return sa.Enum(
        enum_cls,
        native_enum=False,
        length=16,
        values_callable=lambda cls: [member.value for member in cls],
        validate_strings=True,
    )


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


#: Largest id accepted anywhere (PostgreSQL ``integer``).
MAX_ID = 2**31 - 1

SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
METRIC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"
_SLUG_RE = re.compile(SLUG_PATTERN[1:-1])
_NAME_RE = re.compile(NAME_PATTERN[1:-1])
_METRIC_RE = re.compile(METRIC_PATTERN[1:-1])
# Characters no text field may hold: C0 controls except tab/newline/CR, DEL, and lone
# UTF-16 surrogates (PostgreSQL rejects NUL; no database can encode a lone surrogate).
_BAD_TEXT_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _check_slug(value: str) -> str:
    if not _SLUG_RE.fullmatch(value):
        raise ValueError(
            f"{value[:70]!r} is not a valid name: use 1-63 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (for example 'ward-3')"
        )
    return value


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value[:70]!r} is not a valid name: use 1-63 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (for example 'pi-ward3-01')"
        )
    return value


def _check_metric(value: str) -> str:
    if not _METRIC_RE.fullmatch(value):
        raise ValueError(
            f"{value[:70]!r} is not a valid metric name: use 1-63 letters, digits, '_', "
            "'.' or '-', starting with a letter or '_' (for example 'accuracy')"
        )
    return value


def check_text(value: str) -> str:
    """Refuse control characters (other than tab/newline) and lone surrogates."""
    bad = _BAD_TEXT_RE.search(value)
    if bad:
        raise ValueError(
            f"text contains the forbidden character U+{ord(bad.group()):04X} at position "
            f"{bad.start()}; remove control characters"
        )
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    return value


#: Lowercase identifier: group, tag, hardware target, task name.
Slug = Annotated[
    str,
    AfterValidator(_check_slug),
    WithJsonSchema({"type": "string", "pattern": SLUG_PATTERN, "minLength": 1, "maxLength": 63}),
]
#: Human-chosen name: device name, token name.
Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 63}),
]
MetricName = Annotated[
    str,
    AfterValidator(_check_metric),
    WithJsonSchema({"type": "string", "pattern": METRIC_PATTERN, "minLength": 1, "maxLength": 63}),
]
#: JSON Schema pattern equivalent to :func:`check_text` (for clients and fuzzers).
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$"
#: Free text (descriptions, labels), at most 1,000 characters.
Text = Annotated[
    str,
    Field(max_length=1000),
    AfterValidator(check_text),
    WithJsonSchema({"type": "string", "maxLength": 1000, "pattern": TEXT_PATTERN}),
]
#: A finite float (JSON has no NaN, but Python's parser accepts the literal). Strict:
#: a JSON number (integers included), never a string such as ``"0.5"``.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_DEVICE_ID_RE = re.compile(r"dev-[0-9a-f]{16}")


def _check_device_id(value: str) -> str:
    if not _DEVICE_ID_RE.fullmatch(value):
        raise ValueError(
            f"{value[:70]!r} is not a device id; device ids look like 'dev-0123456789abcdef'"
        )
    return value


#: A device id as issued at enrollment (also its MQTT username).
DeviceId = Annotated[
    str,
    AfterValidator(_check_device_id),
    WithJsonSchema({"type": "string", "pattern": "^dev-[0-9a-f]{16}$"}),
]


def _json_integer(value: Any) -> Any:
    # JSON Schema's "integer" admits 7 and 7.0, but not true or "7", which pydantic's lax
    # mode would quietly read as 1 and 7.
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON integer (not a string or boolean)")
    return value


#: Put after the bounds: ``Annotated[int, Field(ge=0, le=9), JSON_INTEGER]`` (bounds
#: placed after a validator would not reach the published JSON Schema).
JSON_INTEGER = BeforeValidator(_json_integer)


#: A database id in a request body (PostgreSQL ``integer``).
Id = Annotated[int, Field(ge=1, le=MAX_ID), JSON_INTEGER]

_MAX_JSON_DEPTH = 32
_MAX_JSON_NODES = 10_000


def _check_unicode(text: str) -> None:
    for position, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            raise ValueError(
                f"text contains a lone UTF-16 surrogate (U+{ord(char):04X}) at position "
                f"{position}; send valid Unicode"
            )


def check_json(value: Any) -> Any:
    """Validate a free-form JSON document: bounded depth and size, storable values.

    Any JSON string or number is storable (the JSON columns keep control characters and
    big integers escaped as text), except lone surrogates and NaN/Infinity.

    Raises:
        ValueError: naming what to change.
    """
    nodes = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > _MAX_JSON_NODES:
            raise ValueError(f"JSON document has more than {_MAX_JSON_NODES} values; trim it")
        if depth > _MAX_JSON_DEPTH:
            raise ValueError(f"JSON document is nested deeper than {_MAX_JSON_DEPTH} levels")
        if isinstance(node, str):
            _check_unicode(node)
        elif isinstance(node, bool) or node is None or isinstance(node, int):
            return
        elif isinstance(node, float):
            _finite(node)
        elif isinstance(node, dict):
            for key, item in node.items():
                _check_unicode(key)
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)
        else:  # pragma: no cover - JSON parsing yields only the types above
            raise ValueError(f"unsupported JSON value of type {type(node).__name__}")

    walk(value, 0)
    return value


#: A free-form JSON object (run configuration, extra metrics).
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]
#: Named numeric metrics (``{"accuracy": 0.93, "loss": 0.21}``), at most 64 of them.
Metrics = Annotated[
    dict[MetricName, FiniteFloat],
    Field(max_length=64),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": METRIC_PATTERN, "minLength": 1, "maxLength": 63},
            "additionalProperties": {"type": "number"},
            "maxProperties": 64,
        }
    ),
]


class FieldError(BaseModel):
    """One problem with one input field."""

    field: str = Field(description="Where: 'body.group', 'query.limit', 'path.device_id'.")
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx response body: what was wrong and how to fix it."""

    detail: str = Field(description="One sentence saying what was wrong and how to fix it.")
    errors: list[FieldError] | None = Field(
        default=None, description="Per-field problems, for validation errors."
    )


ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    """One page of a list: ``items`` plus where it sits in the whole result."""

    items: list[ItemT]
    total: int = Field(description="Number of matching items across all pages.")
    limit: int
    offset: int
