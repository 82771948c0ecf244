"""Ending processes: the one way taskcloud kills what it started.

Everything that ends a process of ours (a worker taken back mid-call, the workers
after Ctrl-C or ``-x``, a software environment's worker, a named cluster's process
group) goes through :func:`kill`, or :func:`end` to give it a moment first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

__all__ = ["end", "kill"]


def kill(pid: int | None, *, group: bool = False) -> bool:
    """SIGKILL the process ``pid`` (with ``group``, its whole process group) now.

    False when there was nothing to kill: no pid, or the process is gone already.
    """
    if not pid:
        return False
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def end(process: Any, grace: float) -> None:
    """Ask the process (an ``asyncio`` subprocess, or anything with ``terminate``,
    ``wait`` and ``pid``) to stop, and kill it after ``grace`` seconds."""
    if getattr(process, "returncode", None) is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        kill(process.pid)
        await process.wait()
