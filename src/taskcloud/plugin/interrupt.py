"""Stopping a build at once: Ctrl-C, or ``-x``/``--max-failures`` reached.

Queued calls are cancelled and the processes running calls are killed, the backend's
and every pool's; nothing a stopped call would still produce is wanted.
"""

from __future__ import annotations

from concurrent.futures import Executor
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress

from taskcloud.processes import kill as kill_process

__all__ = ["kill_executor"]


def kill_executor(executor: Executor) -> None:
    """Cancel queued work and end worker processes without waiting for them.

    An executor with a ``kill()`` method (taskcloud's dask executor) does it itself;
    loky's pools take ``kill_workers``; for the standard library's process pool its
    processes are killed first, since ``shutdown`` would wait for running calls.
    """
    kill = getattr(executor, "kill", None)
    if callable(kill):
        kill()
        return
    if isinstance(executor, ProcessPoolExecutor):
        # ``_processes`` is the pool's only handle on its workers; without it the
        # shutdown below still cancels what is queued.
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            kill_process(getattr(process, "pid", None))
    for kwargs in ({"kill_workers": True}, {"cancel_futures": True}, {}):
        with suppress(TypeError):
            executor.shutdown(wait=False, **kwargs)
            return
