"""Watching the jobs: what pends too long is cancelled; what ends by itself finishes,
and fails the pool's calls (with its stderr) when its worker never connected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

from taskcloud.errors import JobFailedError
from taskcloud.errors import JobPendingError
from taskcloud.errors import SlurmUnreachableError
from taskcloud.processes import kill
from taskcloud.providers.slurm.options import COMMAND_TIMEOUT
from taskcloud.providers.slurm.options import ENDED
from taskcloud.providers.slurm.options import POLL_INTERVAL

logger = logging.getLogger("taskcloud")


async def slurm_command_async(*command: str, timeout: float = COMMAND_TIMEOUT) -> str | None:
    """A Slurm command's stdout from the event loop; None when it failed."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        kill(process.pid)
        await process.wait()
        return None
    return out.decode() if process.returncode == 0 else None


def submission_error(provider: str, exc: BaseException) -> BaseException:
    """What a failed ``sbatch`` means: Slurm out of reach, or the job refused."""
    text = str(exc)
    stderr = text.partition("stderr:")[2].strip() or text
    if "Unable to contact slurm controller" in text:
        return SlurmUnreachableError(provider, "sbatch", stderr)
    return JobFailedError("(not submitted)", "REJECTED", stderr)


class JobMonitor:
    """Polls ``squeue`` for the jobs started in one event loop, all in one call: a job
    pending past its ``pending_timeout`` is cancelled with :class:`JobPendingError`; a
    job that ended finishes with its state, and its ``error`` (its stderr) is what the
    cluster reports when its worker never connected. Runs while it has jobs to watch."""

    _monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobMonitor] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.since: dict[str, float] = {}
        self._task: asyncio.Future[None] | None = None

    @classmethod
    def of_loop(cls) -> JobMonitor:
        """The monitor of the running event loop."""
        loop = asyncio.get_running_loop()
        monitor = cls._monitors.get(loop)
        if monitor is None:
            monitor = cls._monitors[loop] = cls()
        return monitor

    def watch(self, job: Any) -> None:
        """Watch ``job`` (submitted: it has a job id) until it ends or is forgotten."""
        if not str(job.job_id).isdigit():
            return
        self.jobs[str(job.job_id)] = job
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.run())

    def forget(self, job: Any) -> None:
        """Stop watching ``job``: it is being closed."""
        self.jobs.pop(str(job.job_id), None)
        self.since.pop(str(job.job_id), None)

    async def run(self) -> None:
        while self.jobs:
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(Exception):
                await self.check()

    async def check(self) -> None:
        jobs = dict(self.jobs)
        if not jobs:
            return
        out = await slurm_command_async(
            "squeue", "-h", "--states=all", "-j", ",".join(jobs), "-o", "%i|%T|%r"
        )
        if out is None:
            return  # the controller did not answer this time: ask again
        states = {}
        for line in out.splitlines():
            job, _, rest = line.partition("|")
            state, _, reason = rest.partition("|")
            states[job.strip()] = (state.strip(), reason.strip())
        for job, handle in jobs.items():
            if job in self.jobs:  # not closed meanwhile
                state, reason = states.get(job, ("COMPLETED", "None"))
                await self._judge(job, handle, state, reason)

    async def _judge(self, job: str, handle: Any, state: str, reason: str) -> None:
        now = time.monotonic()
        if state == "PENDING":
            started = self.since.setdefault(job, now)
            if now - started > handle.pending_timeout:
                self.forget(handle)
                error = JobPendingError(job, state, reason, handle.pending_timeout)
                await handle.ended(error, cancel=True)
            return
        self.since.pop(job, None)
        if state.split()[0] in ENDED:
            self.forget(handle)
            await handle.ended((job, state))


def _stderr(handle: Any, lines: int = 30) -> str:
    path = getattr(handle, "stderr_path", None)
    if path is None:
        return ""
    deadline = time.monotonic() + 2.0
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # a shared filesystem may show the file late
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
