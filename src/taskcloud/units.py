"""Units: memory and durations as options accept them, and bytes as messages show them.

A value type below every other module: it imports nothing from taskcloud but
:mod:`taskcloud.errors`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from taskcloud.errors import InvalidOptionError

__all__ = ["MIN_MEMORY", "format_bytes", "parse_duration", "parse_memory"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.I)
#: Less than this is never a worker's memory; a float of bytes like 1.5 is a slip.
MIN_MEMORY = 2**20
_MEMORY_FORM = "bytes as an int >= 1048576 (1 MiB), or a string like '512 MiB', '8 GiB' or '16GB'"

_SECONDS = {
    "ms": 1e-3,
    **dict.fromkeys(("", "s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_DURATION_FORM = "seconds as a number >= 0, or a string like '30 s', '500 ms' or '2 minutes'"


def parse_memory(value: Any, parameter: str = "memory") -> int:
    """Turn ``"8 GiB"``, ``"16GB"`` or a number of bytes into bytes."""
    if isinstance(value, bool):
        raise InvalidOptionError(parameter, value, _MEMORY_FORM)
    if isinstance(value, int | float):
        whole = isinstance(value, int) or (math.isfinite(value) and value.is_integer())
        if whole and value >= MIN_MEMORY:
            return int(value)
        raise InvalidOptionError(parameter, value, _MEMORY_FORM)
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidOptionError(parameter, value, _MEMORY_FORM)
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    size = int(number * _UNITS[unit])
    if size < MIN_MEMORY:
        raise InvalidOptionError(parameter, value, _MEMORY_FORM)
    return size


def parse_duration(value: Any, parameter: str) -> float:
    """Turn ``"30 s"``, ``"2 minutes"`` or a number of seconds into seconds."""
    if isinstance(value, bool):
        raise InvalidOptionError(parameter, value, _DURATION_FORM)
    if isinstance(value, int | float) and value >= 0 and math.isfinite(value):
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or match.group(2) not in _SECONDS:
        raise InvalidOptionError(parameter, value, _DURATION_FORM)
    return float(match.group(1)) * _SECONDS[match.group(2)]


def format_bytes(n: int) -> str:
    """Render bytes the way the options accept them: ``1.5 GiB``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        size = _UNITS[unit.lower()]
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
