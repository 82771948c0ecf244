"""Decorated tasks in a serial build (no ``-n``): in pytask's process, or on their pool.

pytask calls a task's plain function, in its own process, so that ``--pdb`` and
``breakpoint()`` work. :class:`SerialExecution` keeps what the decorator promises
there: ``environ=`` is set around the call and restored after it, and a task whose
``software=`` names a software environment, which this process does not have, runs
on its pool. The run's summary then says where tasks ran. ``timeout=`` holds only
for the tasks that run on a pool.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from collections.abc import Callable
from collections.abc import Generator
from typing import Any

from pytask import PTask
from pytask import Session
from pytask import console
from pytask import hookimpl

from taskcloud.frames import hide_internals
from taskcloud.functions import Function
from taskcloud.functions import decorated
from taskcloud.plugin.summary import where_table
from taskcloud.pools import pools
from taskcloud.worker import environ_set

__all__ = ["IN_PROCESS", "SerialExecution"]

#: Where the summary counts the tasks that ran in pytask's process.
IN_PROCESS = "pytask's process"


class SerialExecution:
    """The per-session plugin of a build without parallel execution."""

    def __init__(self) -> None:
        self.where: Counter[str] = Counter()

    @hookimpl(wrapper=True)
    def pytask_execute_task(self, session: Session, task: PTask) -> Generator[None, Any, Any]:
        """Run a decorated task with its environment, or on its pool; count where."""
        # pytask shows a failure from the first frame that is neither its own nor
        # hidden; this wrapper runs for every task and must not change that.
        __tracebackhide__ = True
        original = task.function
        function = decorated(original) or decorated(inspect.unwrap(original))
        where = IN_PROCESS
        if function is not None and function.spec.software is not None:
            task.function, where = _on_pool(function, original), function.pool.label
        elif function is not None and function.spec.environ:
            task.function = _with_environ(function, original)
        try:
            return (yield)
        finally:
            task.function = original
            self.where[where] += 1

    @hookimpl(tryfirst=True)
    def pytask_log_session_footer(self) -> None:
        """Say where the tasks ran, when any went to a pool."""
        if set(self.where) - {IN_PROCESS}:
            console.print(where_table(self.where, pools.active()))

    @hookimpl
    def pytask_unconfigure(self) -> None:
        """Stop the pools that tasks started."""
        pools.close_all()


def _with_environ(function: Function[Any], call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def with_environ(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        with environ_set(function.spec.environ):
            return call(*args, **kwargs)

    return with_environ


def _on_pool(function: Function[Any], call: Callable[..., Any]) -> Callable[..., Any]:
    # Products are paths on this host, which the pool's workers share.
    @functools.wraps(call)
    def on_pool(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return function.submit(*args, **kwargs).result()
        except Exception as exc:
            hide_internals(exc)  # the user's frames from the worker, none of ours
            raise

    return on_pool
