"""What the benchmarks share: timing round trips, writing a provider profile."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def round_trips(call: Callable[[], Any], n: int = 200) -> float:
    """The median seconds of ``call()`` over ``n`` calls, after ten to warm up."""
    for _ in range(10):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def toml_value(value: object) -> str:
    """``value`` as TOML: booleans, numbers, strings and lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
