"""A pool's nanny, on this host and on an SSH host alike.

It imports only dask's ``Nanny`` and :mod:`taskcloud.providers`, so that an SSH
host's agent (:mod:`taskcloud.hostside`) runs it without importing the local
provider. The cluster base kills its worker by its pid, as any nanny's.
"""

from __future__ import annotations

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
            self.log_event(WORKER_EXIT, event)
        await super()._on_worker_exit(exitcode)
