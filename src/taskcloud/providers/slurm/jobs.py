"""Slurm itself: its commands, one worker's job (dask-jobqueue's, with GPUs and a
private environment file, watched by the monitor) and steps of an allocation."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from dask_jobqueue.slurm import SLURMJob
from distributed.deploy.spec import ProcessInterface

from taskcloud.capacity import Shape
from taskcloud.errors import JobFailedError
from taskcloud.errors import SlurmUnreachableError
from taskcloud.processes import end
from taskcloud.processes import kill
from taskcloud.providers.slurm.monitor import JobMonitor
from taskcloud.providers.slurm.monitor import _stderr
from taskcloud.providers.slurm.monitor import slurm_command_async
from taskcloud.providers.slurm.monitor import submission_error
from taskcloud.providers.slurm.options import COMMAND_TIMEOUT

logger = logging.getLogger("taskcloud")


def slurm_command(provider: str, *command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a Slurm command; its stdout. Not reaching the controller is an error that
    says so, within ``timeout`` seconds."""
    if shutil.which(command[0]) is None:
        raise SlurmUnreachableError(provider, command[0], "no such command on this host's PATH")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmUnreachableError(
            provider, shlex.join(command), f"no answer within {timeout:g} s"
        ) from None
    if done.returncode != 0:
        raise SlurmUnreachableError(provider, shlex.join(command), done.stderr or done.stdout)
    return done.stdout


def _gpus(gres: str) -> tuple[str, ...]:
    """The GPU ids of a ``sinfo`` GRES field: ``gpu:2``, ``gpu:a100:4(S:0-1)``,
    ``(null)``; Slurm gives each job its own, so they are counted: ``"0"``, ``"1"``, ..."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return tuple(str(i) for i in range(total))


class TaskcloudSlurmJob(SLURMJob):
    """One worker as a Slurm job: dask-jobqueue's, with GPUs, the pool's environment
    from a private file, and its stderr where the monitor can read it.

    The cluster base starts it (``sbatch``), closes it (``scancel``) and kills it
    (``kill_worker``: ``scancel`` at once). The :class:`JobMonitor` watches it from
    ``sbatch`` on: a job that pends too long is cancelled, and one that ends by itself
    finishes, with an ``error`` the base reports when its worker never connected.
    """

    def __init__(
        self,
        *args: Any,
        gpus: int = 0,
        env_file: str | None = None,
        provider: str = "slurm",
        pending_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        self.provider = provider
        self.pending_timeout = pending_timeout
        #: Why the job ended by itself (the monitor says), None while it runs.
        self._ended: BaseException | tuple[str, str] | None = None
        self._cancelling: set[asyncio.Future[Any]] = set()
        if gpus:
            kwargs["job_extra_directives"] = [
                *kwargs.get("job_extra_directives", []),
                f"--gres=gpu:{gpus}",
            ]
        if env_file is not None:
            # The values stay in the file (0600); the script names only its path.
            kwargs["job_script_prologue"] = [
                f"set -a; . {shlex.quote(env_file)}; set +a",
                *kwargs.get("job_script_prologue", []),
            ]
        super().__init__(*args, **kwargs)

    async def start(self) -> None:
        try:
            await super().start()
        except Exception as exc:
            raise submission_error(self.provider, exc) from None
        JobMonitor.of_loop().watch(self)

    async def close(self) -> None:
        JobMonitor.of_loop().forget(self)
        # dask-jobqueue's close cancels the job but leaves the status running, which
        # fails the cluster's own close once the job was cancelled before it.
        await super().close()
        await ProcessInterface.close(self)

    async def ended(self, why: BaseException | tuple[str, str], cancel: bool = False) -> None:
        """The monitor saw the job end (``(job, state)``) or gave up on it (an error,
        and ``cancel``): it is finished, and the cluster forgets it."""
        self._ended = why
        if cancel:
            await self.close()
        else:
            await ProcessInterface.close(self)

    @property
    def error(self) -> BaseException | None:
        """Why the job ended by itself; the cluster base fails the pool's waiting calls
        with it when the job's worker never connected."""
        why = self._ended
        if why is None or isinstance(why, BaseException):
            return why
        return JobFailedError(why[0], why[1], _stderr(self))

    def describe(self) -> str:
        """The job, as messages name a worker: ``Slurm job 12``."""
        return f"Slurm job {self.job_id}"

    def kill_worker(self, for_good: bool = False) -> None:
        """Cancel the job at once; its worker cannot start again, so ``for_good`` or
        not, the cluster starts another job in its place as the pool needs."""
        if self.job_id:
            cancel = asyncio.ensure_future(slurm_command_async("scancel", str(self.job_id)))
            self._cancelling.add(cancel)
            cancel.add_done_callback(self._cancelling.discard)

    @property
    def stderr_path(self) -> Path | None:
        if self.log_directory is None or not getattr(self, "job_id", None):
            return None
        return Path(self.log_directory) / f"{self.job_name or 'worker'}-{self.job_id}.err"


class StepWorker(ProcessInterface):
    """Workers as an ``srun`` step of the allocation ``job``, not as a job of their own."""

    def __init__(
        self,
        scheduler: str,
        name: Any = None,
        *,
        job: str,
        command: list[str],
        cpus: int,
        memory: int,
        gpus: int,
        env: dict[str, str],
        log: Path,
        **ignored: Any,
    ) -> None:
        super().__init__(scheduler, name)
        self.name = name
        self.step = [
            "srun",
            f"--jobid={job}",
            "-N1",
            "-n1",
            f"--cpus-per-task={cpus}",
            f"--mem={max(1, memory // 2**20)}M",
            "--exact",
            "--kill-on-bad-exit=1",
            *([f"--gres=gpu:{gpus}"] if gpus else []),
            *[
                part.replace("{scheduler}", scheduler).replace("{name}", str(name))
                for part in command
            ],
        ]
        self.env = {**os.environ, **env}
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.step,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        await super().start()

    async def close(self) -> None:
        if self.process is not None:
            await end(self.process, 10)  # srun passes SIGTERM on to the step
        await super().close()


def _write_env(directory: Path, name: Any, env: dict[str, str]) -> Path | None:
    """The worker's environment as a 0600 shell file that the job sources."""
    if not env:
        return None
    path = directory / f"environ-{name}.sh"
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        for key, value in env.items():
            file.write(f"{key}={shlex.quote(value)}\n")
    return path


def _step_job(job: str, shape: Shape, processes: int, env_file: Path | None) -> type:
    """A job class whose ``start`` runs the worker command as an ``srun`` step (a
    class per worker: the step's resources and environment file are its own)."""

    class AllocationStep(TaskcloudSlurmJob):
        async def start(self) -> None:
            command = self._command_template
            if env_file is not None:
                command = f"set -a; . {shlex.quote(str(env_file))}; set +a; {command}"
            log = Path(self.log_directory or ".") / f"{self.name}-step.err"
            self.step = StepWorker(
                self.scheduler,
                self.name,
                job=job,
                command=["bash", "-c", command],
                cpus=shape.cpu * processes,
                memory=shape.memory * processes,
                gpus=shape.gpu * processes,
                env={},
                log=log,
            )
            await self.step.start()
            self.job_id = f"{job}.step"
            self.status = self.step.status

        async def close(self) -> None:
            step = getattr(self, "step", None)
            if step is not None:
                await step.close()
            await ProcessInterface.close(self)

        def describe(self) -> str:
            return f"a step of Slurm job {job}"

        def kill_worker(self, for_good: bool = False) -> None:
            step = getattr(self, "step", None)
            if step is not None and step.process is not None:
                kill(step.process.pid)

        @property
        def stderr_path(self) -> Path | None:
            return Path(self.log_directory or ".") / f"{self.name}-step.err"

    return AllocationStep
