"""A scheduler in a process of its own, for a cluster whose owner is busy.

A scheduler in the owner's process shares its interpreter lock: every message between
scheduler, workers and client runs between the owner's own Python. The dask backend's
cluster, whose owner is pytask, runs its scheduler here instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
from typing import Any

import dask
from distributed import Scheduler
from distributed.deploy.spec import ProcessInterface

__all__ = ["SchedulerProcess"]


class SchedulerProcess(ProcessInterface):
    """A scheduler in a process of its own, started the way nannies start workers.

    A scheduler in the caller's process shares its interpreter lock: every message
    between scheduler, workers and client runs between the caller's own Python. In
    its own process it runs beside it. The process is a dask ``AsyncProcess``, so it
    forks from the fork server inside :func:`~taskcloud.providers.forking_workers`
    and exits should this process die; it takes this process's dask config as it
    is when the scheduler starts, as a nanny does for its worker. Once the process
    has exited (its scheduler closed by itself, say), this closes too: ``finished()``
    returns, and the cluster asks the scheduler nothing more.
    """

    def __init__(self, *, timeout: float = 60.0, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.timeout = timeout
        self.process: Any = None

    async def start(self) -> None:
        from distributed.process import AsyncProcess
        from distributed.utils import get_mp_context
        from tornado.ioloop import IOLoop

        receiver, sender = get_mp_context().Pipe(duplex=False)
        self.process = AsyncProcess(
            loop=IOLoop.current(),
            target=_serve_scheduler,
            name="taskcloud scheduler",
            args=(sender, self.options, copy.deepcopy(dask.config.config)),
        )
        self.process.set_exit_callback(self._exited)
        await self.process.start()
        sender.close()
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(None, _receive, receiver, self.timeout)
        finally:
            receiver.close()
        if "address" not in reply:
            await self.close()
            raise RuntimeError(f"the scheduler process did not start: {reply.get('error')}")
        self.address = reply["address"]
        await super().start()

    def _exited(self, process: Any) -> None:
        self._closing = asyncio.ensure_future(self.close())

    async def close(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            await process.join(10)
            if process.is_alive():
                await process.terminate()
                await process.join(5)
        await super().close()


def _serve_scheduler(sender: Any, options: dict[str, Any], config: dict[str, Any]) -> None:
    """Run a scheduler until it is told to stop; its address goes to ``sender``."""
    # Ctrl-C in a terminal reaches the whole process group. The owner handles it and
    # closes the cluster through this scheduler, which must still be there to do so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dask.config.set(config)
    logging.getLogger("distributed").setLevel(logging.WARNING)

    async def serve() -> None:
        async with Scheduler(**options) as scheduler:
            sender.send({"address": scheduler.address})
            sender.close()
            await scheduler.finished()

    try:
        asyncio.run(serve())
    except BaseException as exc:
        # The starting process raises this as its own error.
        with contextlib.suppress(OSError):
            sender.send({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None


def _receive(receiver: Any, timeout: float) -> dict[str, Any]:
    try:
        if receiver.poll(timeout):
            return dict(receiver.recv())
    except EOFError:
        return {"error": "it exited before it answered"}
    return {"error": f"no answer in {timeout:g} s"}
