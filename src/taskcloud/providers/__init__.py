"""Where pools of workers come from: one module per provider, and what they share."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SETTLED", "forking_workers", "main_module_hidden", "settled", "start_forkserver"]

#: The states of a dask future that is done (until its data is lost, say).
SETTLED = frozenset({"finished", "error", "cancelled"})


async def settled(dask_future: Any) -> None:
    """Wait until ``dask_future`` is finished, erred or cancelled, fetching nothing.

    This is how dask's own gather waits, a cheaper coroutine than ``as_completed``.
    """
    while dask_future.status not in SETTLED:
        await dask_future._state.wait()


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """Keep spawned workers from re-running ``__main__``, e.g. pytask's console script.

    multiprocessing's spawn re-imports the parent's main script in every child, which
    for ``pytask`` costs a second per worker. taskcloud sends all work cloudpickled by
    value, so workers never need the main module.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


#: What the fork server imports before it forks the first worker.
FORKSERVER_PRELOAD = ("distributed", "distributed.worker", "taskcloud.runner")


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


@contextmanager
def forking_workers() -> Iterator[Any]:
    """Nanny workers started in this block fork from the fork server, where there is one."""
    import dask

    if not start_forkserver():
        yield
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        yield
