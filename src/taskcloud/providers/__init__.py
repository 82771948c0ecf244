"""Where pools of workers come from: one module per provider, and what they share."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "CALL_STARTED",
    "DONE",
    "TIMED",
    "WORKER_EXIT",
    "forking_workers",
    "main_module_hidden",
    "scheduler_process",
    "start_forkserver",
    "until_done",
]

#: The states of a dask future that is done (until its data is lost, say).
DONE = frozenset({"finished", "error", "cancelled"})

#: How the dask key of a call with a timeout ends: its worker reports when it starts.
TIMED = "-timed"

#: The event a worker logs, through :class:`CallStarts`, when a timed call starts.
CALL_STARTED = "taskcloud-call-started"

#: The event a pool's nanny logs when its worker process exits, with its exit code.
WORKER_EXIT = "taskcloud-worker-exit"

#: How often :func:`until_done` looks at a future's status when it cannot wait on it.
_POLL = 0.005


async def until_done(dask_future: Any) -> None:
    """Wait until ``dask_future`` is finished, erred or cancelled, fetching nothing.

    This is the one way taskcloud waits on a dask future. It waits as dask's own
    gather does, a cheaper coroutine than ``as_completed``: on the future's private
    ``_state`` (``tests/test_private_names.py`` checks it). Without it, the future's
    public ``status`` is polled.
    """
    state = getattr(dask_future, "_state", None)
    wait = getattr(state, "wait", None)
    while dask_future.status not in DONE:
        if wait is not None:
            await wait()
        else:
            await asyncio.sleep(_POLL)


class _MainStandIn(types.ModuleType):
    """``__main__`` as multiprocessing sees it while workers start: no file, no spec.

    Everything else is the real main module's, so that pickling by reference still
    finds what it defines.
    """

    def __init__(self, main: types.ModuleType) -> None:
        super().__init__("__main__", main.__doc__)
        self.__dict__["_taskcloud_main"] = main

    def __getattr__(self, name: str) -> Any:
        if name == "__file__":
            raise AttributeError(name)
        return getattr(self.__dict__["_taskcloud_main"], name)


class _MainHiding:
    """Stands ``sys.modules["__main__"]`` in for while any worker starts, from any thread.

    The script's own globals (its ``__file__`` included) stay as they are: only
    lookups through ``sys.modules`` see the stand-in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._main: types.ModuleType | None = None

    def enter(self) -> None:
        with self._lock:
            self._depth += 1
            main = sys.modules.get("__main__")
            if self._depth == 1 and main is not None:
                self._main = main
                sys.modules["__main__"] = _MainStandIn(main)

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            main, standing_in = self._main, sys.modules.get("__main__")
            if self._depth == 0 and main is not None:
                self._main = None
                if isinstance(standing_in, _MainStandIn):
                    sys.modules["__main__"] = main


_hiding = _MainHiding()


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """Keep processes started in this block from re-running ``__main__``.

    multiprocessing's spawn (and its fork server) re-imports the parent's main script
    in every child: for ``pytask`` that costs a second per worker, and a script that
    calls a decorated function without ``if __name__ == "__main__":`` would call it
    again in each worker, which would start a pool of its own. taskcloud sends all
    work cloudpickled by value, so workers never need the main module. Blocks may
    overlap, in any threads.
    """
    _hiding.enter()
    try:
        yield
    finally:
        _hiding.exit()


#: What the fork server imports before it forks the first worker.
FORKSERVER_PRELOAD = ("distributed", "distributed.worker", "taskcloud.worker")


def start_forkserver() -> bool:
    """Start multiprocessing's fork server now, importing dask while we do other work.

    A worker forked from a server that has distributed imported is ready in a
    fraction of the second a spawned one takes to import it. The server starts in
    the background, on another core, so calling this early (before this process
    imports dask itself) hides most of its cost. False where there is no fork server.
    """
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORKSERVER_PRELOAD))
    with main_module_hidden():
        multiprocessing.forkserver.ensure_running()
    return True


def scheduler_process() -> bool:
    """Whether the schedulers of pools and named clusters run in processes of their own
    (dask config ``taskcloud.scheduler-process``, false by default)."""
    import dask

    return bool(dask.config.get("taskcloud.scheduler-process", False))


@contextmanager
def forking_workers() -> Iterator[Any]:
    """Nanny workers started in this block fork from the fork server, where there is one."""
    import dask

    if not start_forkserver():
        yield
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        yield
