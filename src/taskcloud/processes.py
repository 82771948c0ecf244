"""Ending processes: the one way taskcloud kills what it started.

Everything that ends a process of ours (a worker taken back mid-call, the workers
after Ctrl-C or ``-x``, a software environment's worker, a named cluster's process
group, an SSH host's workers, a Slurm command or step) goes through :func:`kill`
(SIGKILL, or another signal such as SIGTERM to ask first), or :func:`end` to give it
a moment first. :func:`alive` is the one answer to whether a process still runs.

Standard library only (``psutil``, which dask depends on, is imported when
:func:`alive` is asked): an SSH host's agent imports it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

__all__ = ["alive", "end", "kill"]


def kill(pid: int | None, *, group: bool = False, sig: int = signal.SIGKILL) -> bool:
    """SIGKILL the process ``pid`` (with ``group``, its whole process group) now, or
    send it ``sig`` (SIGTERM: ask it to stop).

    False when there was nothing to kill: no pid, or the process is gone already.
    """
    if not pid:
        return False
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def alive(pid: Any, started: float | None = None) -> bool:
    """Whether the process ``pid`` runs, is this user's to signal and not a zombie;
    with ``started`` (its start time, seconds since the epoch), also whether it is the
    process that started then, not another that reused its number."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's now
        return False
    import psutil

    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - float(started)) > 1:
            return False  # the pid was reused
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


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
