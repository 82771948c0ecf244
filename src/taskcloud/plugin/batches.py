"""Which waiting tasks share one submission to the backend.

Each submission to a process or dask backend pays a round trip: pickling, a queue or
the scheduler, a worker picking it up, the outcome coming back. For a task that runs
in a millisecond that trip is most of its cost; on dask it is several times the task.
So, as joblib does with its automatic batch size, tiny tasks travel together: a
function whose calls have all taken less than :data:`TINY` seconds on a worker so far
may share a submission with other such calls, at most :data:`MOST` of them. A
function not seen yet, or ever slower, travels alone. A batch is meant to be a few
tens of milliseconds of work; when a call in it turns out slow anyway, the worker
starts no further call once the batch has run for :data:`BUDGET` seconds and the rest
are sent again, so a long task never holds up others behind it.
"""

from __future__ import annotations

import math
from types import CodeType
from typing import Any

from attrs import define
from attrs import field

__all__ = ["BUDGET", "MOST", "TINY", "Batches"]

#: A call this quick (in seconds, on its worker) may share a submission.
TINY = 0.005

#: The most calls one submission carries.
MOST = 8

#: Seconds after which a batch on a worker starts no further call.
BUDGET = 0.05


@define
class Batches:
    """What one build has seen of its functions' durations, and the batches it allows."""

    enabled: bool = True
    _longest: dict[CodeType | None, float] = field(factory=dict)

    def record(self, function: Any, start: float, end: float) -> None:
        """Note one call's duration; a call with no timing (its worker died) is not tiny."""
        seconds = end - start if start and end else math.inf
        code = _code(function)
        self._longest[code] = max(seconds, self._longest.get(code, 0.0))

    @property
    def budget(self) -> float:
        """Seconds after which a batch on a worker starts no further call."""
        return BUDGET

    def tiny(self, function: Any) -> bool:
        """Whether calls of ``function`` may share a submission."""
        return self.enabled and self._longest.get(_code(function), math.inf) < TINY

    def size(self, waiting: int, free: int) -> int:
        """How many calls the next submission may carry.

        The waiting tasks are spread over the free slots, so that near the end of a
        fan-out every worker still gets some of them.
        """
        if not self.enabled or free < 1:
            return 1
        return max(1, min(MOST, math.ceil(waiting / free)))


def _code(function: Any) -> CodeType | None:
    """Calls are told apart by code: a loop of ``@task`` functions shares one."""
    return getattr(function, "__code__", None)
