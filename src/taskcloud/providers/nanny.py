"""A pool's nanny, on this host and on an SSH host alike.

It imports only dask's ``Nanny`` and :mod:`taskcloud.providers`, so that an SSH
host's agent (:mod:`taskcloud.hostside`) runs it without importing the local
provider. The cluster base kills its worker by its pid, as any nanny's.
"""

from __future__ import annotations

import asyncio
import contextlib

from distributed import Nanny
from distributed.core import Status

from taskcloud.providers import WORKER_EXIT
from taskcloud.providers import main_module_hidden

__all__ = ["PoolNanny"]


#: A nanny in these states starts its worker anew when the worker dies.
_NANNY_UP = (Status.init, Status.starting, Status.running)


class PoolNanny(Nanny):
    """A pool's nanny: its worker starts without ``__main__``, and it reports exits.

    * The worker process starts inside
      :func:`~taskcloud.providers.main_module_hidden`, whenever the nanny starts
      or replaces it, so a script without a main guard is not run again in it.
    * When the worker process exits, the nanny logs a :data:`WORKER_EXIT` event
      with its exit code, so that :class:`~taskcloud.providers.events.PoolWatch`
      need not wait to learn whether the nanny killed it for memory.
    * A worker that dies while it starts (a call that kills its process can run
      before the nanny hears from it) is replaced once, as the nanny replaces a
      worker that dies later, rather than failing the nanny's start.
    """

    #: The exit reports on their way to the scheduler.
    _reports: set[asyncio.Future[None]]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._reports = set()

    async def instantiate(self) -> Status:
        with main_module_hidden():
            status = await super().instantiate()
        if status == Status.stopped and self.status in _NANNY_UP:
            with main_module_hidden():
                status = await super().instantiate()
        return status

    async def _on_worker_exit(self, exitcode: int) -> None:
        if self.status in _NANNY_UP:
            event = {"nanny": self.address, "worker": self.worker_address, "exitcode": exitcode}
            task = asyncio.ensure_future(self._report_exit(event))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
        await super()._on_worker_exit(exitcode)

    async def _report_exit(self, event: dict[str, object]) -> None:
        # dask's own log_event leaves a failed send's error unretrieved, which asyncio
        # prints at exit; a scheduler that is gone has no use for the event.
        with contextlib.suppress(OSError):
            await self.scheduler.log_event(topic=WORKER_EXIT, msg=event)
