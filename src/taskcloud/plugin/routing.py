"""Which tasks go to a pool of their own: those decorated with ``@taskcloud.function``.

Such a task's call travels to its function's pool instead of the backend; the pool
says when the call starts on a worker, so that the live display shows it running
only then.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pytask import PTask

from taskcloud import worker
from taskcloud.functions import Function
from taskcloud.functions import decorated

__all__ = ["pool_function", "submit_to_pool"]


def pool_function(task: PTask) -> Function[Any] | None:
    """The ``@taskcloud.function`` behind a task, if it has one."""
    return decorated(task.function)


def submit_to_pool(
    function: Function[Any], name: str, payload: bytes, on_start: Callable[[], None]
) -> Future[Any]:
    """Send a pickled task call to ``function``'s pool, started on first use.

    A shape the pool's provider can never hold raises here, as
    :class:`~taskcloud.errors.ResourceUnavailableError`, and fails only this task.
    """
    spec = function.spec
    return function.pool.submit_pickled(
        name,
        worker.run_serialized,
        payload,
        retries=spec.retries,
        timeout=spec.timeout,
        on_start=on_start,
    )
