"""Watching a pool's jobs: what pends too long is cancelled, what ends before its
worker connects fails the pool's calls, what ends later is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from taskcloud.errors import JobFailedError
from taskcloud.errors import JobPendingError
from taskcloud.errors import SlurmUnreachableError
from taskcloud.providers.slurm.jobs import slurm_command_async
from taskcloud.providers.slurm.options import ENDED
from taskcloud.providers.slurm.options import POLL_INTERVAL

logger = logging.getLogger("taskcloud")


def submission_error(provider: str, exc: BaseException) -> BaseException:
    """What a failed ``sbatch`` means: Slurm out of reach, or the job refused."""
    text = str(exc)
    stderr = text.partition("stderr:")[2].strip() or text
    if "Unable to contact slurm controller" in text:
        return SlurmUnreachableError(provider, "sbatch", stderr)
    return JobFailedError("(not submitted)", "REJECTED", stderr)


def _job_name(worker_name: str, spec: dict[str, Any]) -> str:
    """The spec name of the job a worker belongs to (``taskcloud-3-0-1`` of group ``-1``)."""
    if worker_name in spec:
        return worker_name
    base, _, _ = worker_name.rpartition("-")
    return base if base in spec else worker_name


class JobMonitor:
    """Polls ``squeue`` for a cluster's jobs: what pends too long is cancelled, what
    ends before its worker connects fails the pool's calls, what ends later is replaced."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.since: dict[str, float] = {}
        self._stopped = False
        self._failed: set[str] = set()

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        while not self._stopped:
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(Exception):
                await self.check()

    async def check(self) -> None:
        jobs = {
            str(job.job_id): (name, job)
            for name, job in list(self.cluster.workers.items())
            if getattr(job, "job_id", None) and str(job.job_id).isdigit()
        }
        if not jobs:
            return
        for job in jobs:
            if job not in self.cluster.jobs_seen:
                self.cluster.jobs_seen.append(job)
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
        for job, (name, handle) in jobs.items():
            state, reason = states.get(job, ("COMPLETED", "None"))
            await self._judge(job, name, handle, state, reason)

    async def _judge(self, job: str, name: str, handle: Any, state: str, reason: str) -> None:
        now = time.monotonic()
        if state == "PENDING":
            started = self.since.setdefault(job, now)
            if now - started > self.cluster.pending_timeout:
                await self._drop(name, handle)
                self.cluster.fail(JobPendingError(job, state, reason, self.cluster.pending_timeout))
            return
        self.since.pop(job, None)
        if state.split()[0] in ENDED:
            arrived = name in self.cluster._arrived_names
            await self._drop(name, handle, keep_spec=arrived)
            if not arrived and job not in self._failed:
                self._failed.add(job)
                self.cluster.fail(JobFailedError(job, state, _stderr(handle)))

    async def _drop(self, name: str, handle: Any, keep_spec: bool = False) -> None:
        """Forget a job; with ``keep_spec`` the cluster starts another in its place."""
        self.cluster.workers.pop(name, None)
        if not keep_spec:
            self.cluster.worker_spec.pop(name, None)
        with contextlib.suppress(Exception):
            await handle.close()
        if keep_spec:
            await self.cluster._correct_state()


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
