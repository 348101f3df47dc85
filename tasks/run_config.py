"""Typed values from a Flower run config (``--run-config K=V``, TOML, the ServerApp's
``context.run_config``), with one error wording for every package's options.

Run-config values arrive as bool, int, float or str depending on where they were
written; these helpers turn them into the option's type or raise ``ValueError``
naming the key, the value and what it should be.
"""

from __future__ import annotations

from typing import Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def as_number(key: str, raw: Any, target: type[int] | type[float] = float) -> Any:
    """``raw`` as an int or float; booleans and non-integral values for ints refused."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
        if target is int:
            if value != int(value):
                raise ValueError
            return int(value)
        return value
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if target is int else "a number"
        raise ValueError(f"run config {key}={raw!r} must be {kind}") from None


def as_bool(key: str, raw: Any) -> bool:
    """``raw`` as a bool: true/false, 1/0, yes/no, on/off."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE:
        return True
    if isinstance(raw, str) and raw.strip().lower() in _FALSE:
        return False
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise ValueError(f"run config {key}={raw!r} must be true or false")
