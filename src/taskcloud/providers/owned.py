"""Preloaded into the worker processes of a cluster that one process owns and kills.

Ctrl-C in a terminal reaches the whole process group. The owner handles it and kills
its workers at once; a worker that took the signal itself would instead stop its
running task half-way and log a warning before the kill arrives. So such workers
ignore it, as the owner's scheduler process does.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["PRELOAD", "dask_setup"]

#: What a worker's ``preload`` option names to load this module.
PRELOAD = __name__


def dask_setup(worker: Any) -> None:
    """Leave Ctrl-C to the owner; dask calls this in the worker's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
