"""Durations and sizes as field engineers write them in YAML ("500ms", "1s", "14d"; "2GiB")."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["Duration", "Size", "format_duration", "parse_duration", "parse_size"]

# --------------------------------------------------------------------------------------------------
# Durations and sizes as strings ("500ms", "1s", "14d"; "2GiB")
# --------------------------------------------------------------------------------------------------
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d|w)\s*$")
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)\s*$", re.IGNORECASE)


def parse_duration(v: Any) -> float:
    """``"500ms"`` → 0.5; bare numbers are seconds. Raises ValueError with the accepted forms."""
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 500ms, 1s, 5min, 2h, 14d")
    if isinstance(v, int | float):
        secs = float(v)
    else:
        m = _DURATION_RE.match(str(v))
        if not m:
            raise ValueError(f"{v!r} is not a duration; use e.g. 500ms, 1s, 5min, 2h, 14d")
        secs = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if secs < 0 or not math.isfinite(secs):
        raise ValueError("a duration must be zero or positive")
    return secs


def format_duration(secs: float) -> str:
    """Inverse of :func:`parse_duration` for display."""
    for unit, mult in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if secs >= mult and secs % mult == 0:
            return f"{int(secs // mult)}{unit}"
    return f"{secs * 1000:g}ms"


def parse_size(v: Any) -> int:
    """``"2GiB"`` → 2147483648; bare integers are bytes."""
    if isinstance(v, bool):
        raise ValueError("expected a size such as 512MiB or 2GiB")
    if isinstance(v, int):
        n = v
    else:
        m = _SIZE_RE.match(str(v))
        if not m:
            raise ValueError(f"{v!r} is not a size; use e.g. 500MB, 512MiB, 2GiB")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError("a size must be positive")
    return n


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?\s*(ms|s|min|m|h|d|w)$",
                    "description": "duration: 500ms, 1s, 5min, 2h, 14d (bare numbers are seconds)"}),
]  # fmt: skip
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {"type": ["string", "integer"], "description": "size: 500MB, 512MiB, 2GiB (bare integers are bytes)"}
    ),
]
