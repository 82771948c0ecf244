"""Preloaded into the worker processes of a cluster that one process owns and kills.

Ctrl-C in a terminal reaches the whole process group. The owner handles it and kills
its workers at once; a worker that took the signal itself would instead stop its
running task half-way and log a warning before the kill arrives. So such workers
ignore it, as the owner's scheduler process does.

The owner also says how quiet its workers' logs are (a nanny's ``silence_logs``), and
the workers share its terminal. dask quiets a worker's log handler only while the
worker is open: its close sets the handler back, while callbacks of the closing
worker still run and log (a connection closed, a second close that failed). So the
level the worker started with holds for the rest of its process.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

__all__ = ["PRELOAD", "dask_setup"]

#: What a worker's ``preload`` option names to load this module.
PRELOAD = __name__


class _AtLeast(logging.Filter):
    """Lets records of ``level`` and above through."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def dask_setup(worker: Any) -> None:
    """Leave Ctrl-C to the owner, and keep the worker's logs as quiet as they are now
    until its process ends; dask calls this in the worker's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # dask's log handler, shared by its loggers and tornado's, as the worker set it.
    for handler in logging.getLogger("distributed").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.level > logging.NOTSET:
            handler.addFilter(_AtLeast(handler.level))
