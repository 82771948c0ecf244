"""The Slurm provider: a pool's workers arrive and leave as batch jobs of its shape.

dask-jobqueue is the engine: each pool (one shape) is a ``SLURMCluster`` of its own,
so two shapes in one run get two kinds of jobs (``--cpus-per-task``, ``--mem``,
``--gres=gpu:N``), each job running ``processes`` workers whose nthreads, memory
limit and resources (``cpu``, ``memory``, ``gpu``) are those of the local provider's.

What dask-jobqueue leaves out, this module adds:

* **capacity from the cluster itself**: ``sinfo``'s nodes of the partition, so a
  shape no node can hold fails at the first call instead of pending forever;
* **job state**: a :class:`JobMonitor` polls ``squeue``. A job pending past
  ``pending_timeout`` is cancelled, and a job that ends before its worker connects
  fails the pool's waiting calls with its stderr; a job that ends after is replaced;
* **credentials off the command line**: the scheduler (in this process) and the
  workers speak TLS with the pool's own key, kept in 0600 files of a 0700
  directory under ``$TASKCLOUD_HOME/slurm`` that the jobs read (same user, shared
  filesystem) and removed on close; the job scripts name only their paths;
* **nothing left behind**: jobs are cancelled on close; a worker whose scheduler is
  gone (its process was killed) exits after ``--death-timeout`` and so does its job;
* **inside an allocation** (``allocation = "current"``): workers are ``srun`` steps
  of the job ``SLURM_JOB_ID`` rather than jobs of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from inspect import isawaitable
from pathlib import Path
from typing import Any

import dask
from dask_jobqueue import SLURMCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from taskcloud import credentials
from taskcloud.capacity import Capacity
from taskcloud.capacity import Host
from taskcloud.capacity import Shape
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.errors import SlurmUnreachableError
from taskcloud.processes import kill
from taskcloud.providers import events
from taskcloud.providers.cluster import PoolAdaptive
from taskcloud.providers.cluster import SchedulerOverTheWire
from taskcloud.providers.cluster import adapt
from taskcloud.providers.cluster import http_config
from taskcloud.providers.protocol import ClusterRequest
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import PoolRequest
from taskcloud.providers.slurm.jobs import TaskcloudSlurmJob
from taskcloud.providers.slurm.jobs import _gpus
from taskcloud.providers.slurm.jobs import _private_directory
from taskcloud.providers.slurm.jobs import _step_job
from taskcloud.providers.slurm.jobs import _write_env
from taskcloud.providers.slurm.jobs import slurm_command
from taskcloud.providers.slurm.monitor import JobMonitor
from taskcloud.providers.slurm.monitor import _job_name
from taskcloud.providers.slurm.monitor import submission_error
from taskcloud.providers.slurm.options import COMMAND_TIMEOUT
from taskcloud.providers.slurm.options import REPORT_TIMEOUT
from taskcloud.providers.slurm.options import WALLTIME_MARGIN
from taskcloud.providers.slurm.options import SlurmOptions
from taskcloud.providers.slurm.options import _walltime_seconds
from taskcloud.units import format_bytes

__all__ = ["JobMonitor", "SlurmCapacity", "SlurmOptions", "SlurmPoolCluster", "SlurmProvider"]

logger = logging.getLogger("taskcloud")

# -- capacity ---------------------------------------------------------------------------


#: A node of the partition (or the allocation's share), as a capacity counts it.
Node = Host


class SlurmCapacity(Capacity):
    """What the partition's nodes hold; Slurm queues what does not fit now.

    ``check`` refuses a shape no node can hold (Slurm would pend it forever) and
    names the largest node; ``grant`` caps a pool at ``max_jobs`` jobs; nothing waits
    for room here, and nothing is held, since Slurm's queue does the waiting.
    """

    def __init__(self, provider: str, where: str, nodes: list[Host], options: SlurmOptions):
        cap = None if options.max_jobs is None else options.max_jobs * options.processes
        super().__init__(provider, nodes, queued=True, max_workers=cap)
        self.where = where
        self.options = options

    @property
    def nodes(self) -> tuple[Host, ...]:
        return self.hosts

    @property
    def largest(self) -> Host:
        return max(self.nodes, key=lambda node: (node.cores, node.memory, len(node.gpus)))

    def describe(self) -> str:
        node = self.largest
        gpus = f", {len(node.gpus)} GPUs" if node.gpus else ", no GPUs"
        largest = f"{node.name} ({node.cores} cores, {format_bytes(node.memory)}{gpus})"
        return f"{self.where}, whose largest node is {largest}"

    def _refusal(self, shape: Shape, lacking: str) -> ResourceUnavailableError:
        return ResourceUnavailableError(shape_text(shape), self.describe(), self.provider)


def shape_text(shape: Shape) -> str:
    return shape.asked("cpu", "memory", *(["gpu"] if shape.gpu else []))


def partition_nodes(provider: str, queue: str | None) -> tuple[str, list[Node]]:
    """The nodes of ``queue`` (else the default partition) from ``sinfo``."""
    command = ["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G"]
    if queue:
        command += ["-p", queue]
    rows = [line.split("|") for line in slurm_command(provider, *command).splitlines()]
    rows = [row for row in rows if len(row) == 5]
    if queue is None:
        default = [row for row in rows if row[0].endswith("*")]
        rows = default or rows
    if not rows:
        raise ResourceUnavailableError(
            f"queue={queue!r}", "no such partition (sinfo lists none)", provider
        )
    name = rows[0][0].rstrip("*")
    nodes = {row[1]: Node(row[1], int(row[2]), int(row[3]) * 2**20, _gpus(row[4])) for row in rows}
    return f"partition {name!r}", list(nodes.values())


def allocation_nodes(provider: str, job: str) -> tuple[str, list[Node]]:
    """The share of the allocation ``job``: its CPUs, memory and GPUs, from ``scontrol``."""
    shown = slurm_command(provider, "scontrol", "show", "job", "-o", job)
    tres = dict(item.split("=", 1) for item in _field(shown, "TRES").split(",") if "=" in item)
    memory = _mebibytes(tres.get("mem", "0")) * 2**20
    gpus = tuple(str(i) for i in range(int(tres.get("gres/gpu", "0") or 0)))
    node = Node(_field(shown, "NodeList"), int(tres.get("cpu", "1")), memory, gpus)
    return f"allocation {job}", [node]


def _field(shown: str, key: str) -> str:
    match = re.search(rf"\b{key}=(\S*)", shown)
    return match.group(1) if match else ""


def _mebibytes(value: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    match = re.fullmatch(r"([\d.]+)([KMGT]?)", value)
    if match is None:
        return 0
    return int(float(match.group(1)) * units.get(match.group(2) or "M", 1))


# -- the cluster ------------------------------------------------------------------------


class _Arrivals(SchedulerPlugin):
    """Which job each worker that connected came from, by worker address."""

    name = "taskcloud-slurm-arrivals"

    def __init__(self, cluster: SlurmPoolCluster) -> None:
        self.cluster = cluster

    def add_worker(self, scheduler: Any, worker: str) -> None:
        state = scheduler.workers.get(worker)
        if state is not None:
            self.cluster.arrived(worker, str(state.name))


class SlurmPoolCluster(SchedulerOverTheWire, SLURMCluster):
    """One shape's workers as Slurm jobs (or steps), with the scheduler in this process.

    Answers :class:`~taskcloud.providers.protocol.Workers`, plus ``on_failure`` (the
    pool's calls fail when no worker can arrive) and ``describe_worker`` (the job a
    worker ran in).
    """

    job_cls = TaskcloudSlurmJob

    def __init__(
        self,
        *,
        capacity: SlurmCapacity,
        shape: Shape,
        directory: Path,
        provider: str,
        pending_timeout: float,
        **kwargs: Any,
    ) -> None:
        self._capacity = capacity
        self._shape = shape
        self.directory = directory
        self.provider = provider
        self.pending_timeout = pending_timeout
        self.label = str(kwargs.get("name") or "")
        self._failure_callbacks: list[Callable[[BaseException], None]] = []
        self._job_of_address: dict[str, str] = {}
        self._arrived_names: set[str] = set()
        self.jobs_seen: list[str] = []
        self.monitor: JobMonitor | None = None
        super().__init__(**kwargs)

    def begin(self) -> None:
        """Watch arrivals and jobs, once the scheduler runs (in its event loop)."""
        self.scheduler.add_plugin(_Arrivals(self), name=_Arrivals.name)
        self.monitor = JobMonitor(self)
        self._monitoring = asyncio.ensure_future(self.monitor.run())

    # -- bookkeeping the monitor and messages use

    def arrived(self, address: str, name: str) -> None:
        job = self.workers.get(_job_name(name, self.worker_spec))
        self._arrived_names.add(_job_name(name, self.worker_spec))
        self._job_of_address[address] = str(getattr(job, "job_id", "") or "?")

    def describe_worker(self, address: str) -> str:
        job = self._job_of_address.get(address)
        return f"{address}, Slurm job {job}" if job else address

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        self._failure_callbacks.append(callback)

    def fail(self, exc: BaseException) -> None:
        """Fail the pool's waiting calls, unless a worker is there to run them.

        Called in the event loop; the pool cancels its calls' dask futures, which
        blocks, so the callbacks run in a thread.
        """
        if self.n_workers:
            logger.warning("%s: %s", self.label, exc)
            return
        loop = asyncio.get_running_loop()
        for callback in list(self._failure_callbacks):
            loop.run_in_executor(None, callback, exc)

    def _correct_state(self) -> asyncio.Future[None]:
        # A job sbatch refused (or could not submit) would stay in ``workers`` with no
        # job id, blocking its place for good: it goes, and the pool's calls fail.
        return asyncio.ensure_future(self._correct_state_checked())

    async def _correct_state_checked(self) -> None:
        try:
            await super()._correct_state()
        except Exception as exc:
            for name, job in list(self.workers.items()):
                if not getattr(job, "job_id", None):
                    self.workers.pop(name, None)
                    self.worker_spec.pop(name, None)
            self.fail(submission_error(self.provider, exc))

    def job_ids(self) -> list[str]:
        return [str(job.job_id) for job in self.workers.values() if getattr(job, "job_id", None)]

    # -- protocol.Workers

    @property
    def capacity(self) -> SlurmCapacity:
        return self._capacity

    @property
    def where(self) -> str:
        jobs = self.job_ids() or self.jobs_seen[-4:]
        listed = f": jobs {', '.join(jobs)}" if jobs else ""
        return f"{self.provider} (Slurm {self._capacity.where}){listed}"

    def replace_worker(self, address: str) -> None:
        self.sync(self._replace_worker, address)

    async def _replace_worker(self, address: str) -> None:
        # The worker runs on another host: its job goes, and the spec starts another.
        worker = await self.scheduler_comm.taskcloud_replace(address=address)
        if worker is None:
            return
        name = _job_name(str(worker), self.worker_spec)
        job = self.workers.pop(name, None)
        if job is not None:
            await job.close()
        await self._correct_state()

    def kill(self) -> None:
        jobs = self.job_ids()
        if jobs:
            with contextlib.suppress(Exception):
                subprocess.run(["scancel", *jobs], capture_output=True, timeout=COMMAND_TIMEOUT)

    def scale_between(self, minimum: int, maximum: int, keepalive: float) -> Any:
        return adapt(
            self,
            self._capacity,
            self._shape,
            minimum,
            maximum,
            keepalive,
            adaptive=PoolAdaptive,
        )

    def close(self, timeout: float | None = None) -> Any:
        self.stop_adapting()
        if self.monitor is not None:
            self.monitor.stop()
        closed = super().close(timeout)
        if not isawaitable(closed):
            shutil.rmtree(self.directory, ignore_errors=True)
            return closed

        async def closing() -> None:  # an asynchronous cluster: a named cluster's
            try:
                await closed
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)

        return closing()


# -- the provider -----------------------------------------------------------------------


class SlurmProvider:
    """The ``slurm`` provider: workers of a pool's shape as Slurm batch jobs."""

    form = "clusters"
    kind = "slurm"

    def __init__(self, name: str = "slurm", options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.options = SlurmOptions.parse(dict(options or {}))
        self._capacity: SlurmCapacity | None = None
        if self.options.allocation == "current" and not os.environ.get("SLURM_JOB_ID"):
            raise InvalidOptionError(
                "allocation", "current", "'current' inside a Slurm allocation (SLURM_JOB_ID set)"
            )

    def capacity(self) -> SlurmCapacity:
        """The partition's nodes (or the allocation's share), read once."""
        if self._capacity is None:
            if self.options.allocation == "current":
                where, nodes = allocation_nodes(self.name, os.environ["SLURM_JOB_ID"])
            else:
                where, nodes = partition_nodes(self.name, self.options.queue)
            self._capacity = SlurmCapacity(self.name, where, nodes, self.options)
        return self._capacity

    def start_pool(self, request: PoolRequest) -> SlurmPoolCluster:
        settings = {"distributed.scheduler.allowed-failures": 0, **http_config(request.dashboard)}
        with dask.config.set(settings):
            cluster = self._build(
                request.shape,
                request.threads_per_worker,
                name=request.name,
                python=request.python,
                env=dict(request.environ),
                dashboard=request.dashboard,
            )
        cluster.label = request.label
        cluster.sync(_begin, cluster)
        cluster.scale_between(request.minimum, request.maximum, request.keepalive)
        return cluster

    async def start_cluster(self, request: ClusterRequest) -> SlurmPoolCluster:
        # dask-jobqueue starts its own workers from the job script: a named cluster's
        # worker class and options have nowhere to go, so they are refused, not dropped.
        if request.worker_class not in ("", "distributed.Nanny"):
            raise InvalidOptionError(
                "worker_class",
                request.worker_class,
                "'distributed.Nanny' on the slurm provider: its jobs start dask-jobqueue's workers",
            )
        if request.worker_options:
            raise InvalidOptionError(
                "worker_options",
                request.worker_options,
                "{} on the slurm provider: set the jobs' options in its profile "
                "(job_extra_directives, job_script_prologue)",
            )
        cluster = self._build(
            request.shape,
            request.threads_per_worker,
            name=request.name,
            python=None,
            env={},
            dashboard=request.dashboard,
            security=request.security,
            asynchronous=True,
            scheduler_options=request.scheduler_options,
        )
        await cluster
        await events.install(cluster.scheduler_comm)
        cluster.begin()
        return cluster

    def _build(
        self,
        shape: Shape,
        threads: int,
        *,
        name: str,
        python: str | None,
        env: dict[str, str],
        dashboard: bool,
        security: Any = None,
        asynchronous: bool = False,
        scheduler_options: dict[str, Any] | None = None,
    ) -> SlurmPoolCluster:
        capacity = self.capacity()
        capacity.check(shape)
        directory = _private_directory(name)
        try:
            if security is None:
                security = credentials.create(directory / "tls", name)
            env_file = _write_env(directory, env)
            options = self._cluster_options(shape, threads, name, python, env_file, directory)
            return SlurmPoolCluster(
                capacity=capacity,
                shape=shape,
                directory=directory,
                provider=self.name,
                pending_timeout=self.options.pending_timeout,
                security=security,
                asynchronous=asynchronous,
                name=name,
                scheduler_options=self._scheduler_options(dashboard, scheduler_options),
                **options,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _scheduler_options(self, dashboard: bool, given: dict[str, Any] | None) -> dict[str, Any]:
        settings: dict[str, Any] = {"dashboard": dashboard, "dashboard_address": "127.0.0.1:0"}
        if self.options.scheduler_host:
            settings["host"] = self.options.scheduler_host
        elif self.options.interface:
            settings["interface"] = self.options.interface
        else:
            settings["host"] = "127.0.0.1"
        settings.update({k: v for k, v in (given or {}).items() if k != "security"})
        return settings

    def _cluster_options(
        self,
        shape: Shape,
        threads: int,
        name: str,
        python: str | None,
        env_file: Path | None,
        directory: Path,
    ) -> dict[str, Any]:
        o = self.options
        processes = o.processes
        extra_args = [
            "--resources",
            f"cpu={shape.cpu},memory={shape.memory},gpu={shape.gpu}",
            "--no-dashboard",
        ]
        seconds = _walltime_seconds(o.walltime) if o.walltime else None
        if seconds is not None:
            margin = min(WALLTIME_MARGIN, seconds / 5)
            extra_args += [
                "--lifetime",
                f"{max(seconds - 2 * margin, 1):.0f}s",
                "--lifetime-stagger",
                f"{margin:.0f}s",
            ]
        options: dict[str, Any] = {
            "cores": threads * processes,
            "processes": processes,
            "memory": f"{shape.memory * processes}B",
            "job_cpu": shape.cpu * processes,
            "job_mem": f"{max(1, -(-shape.memory * processes // 2**20))}M",
            "gpus": shape.gpu * processes,
            "queue": o.queue,
            "account": o.account,
            "walltime": o.walltime,
            "job_extra_directives": list(o.job_extra_directives),
            "job_script_prologue": list(o.job_script_prologue),
            "python": python or o.python or sys.executable,
            "interface": o.interface,
            "death_timeout": o.death_timeout,
            "worker_extra_args": extra_args,
            "log_directory": str(directory / "logs"),
            "job_name": name,
            "env_file": str(env_file) if env_file is not None else None,
            "shared_temp_directory": str(directory),
        }
        if o.allocation == "current":
            options["job_cls"] = _step_job(os.environ["SLURM_JOB_ID"], shape, processes, env_file)
        return options

    def check(self) -> list[HostReport]:
        """Each node of the partition (or the allocation), with the versions that the
        workers' Python reports in a job step: one step, on whichever node Slurm gives
        it, for every node, since the nodes share the interpreter's filesystem."""
        try:
            capacity = self.capacity()
        except (SlurmUnreachableError, ResourceUnavailableError) as exc:
            return [
                HostReport(host=self.options.queue or "slurm", reachable=False, reason=str(exc))
            ]
        found, reason = self._report()
        ours = (version("distributed"), version("taskcloud"))
        versions = {key: found.get(key, "") for key in ("python", "distributed", "taskcloud")}
        return [
            HostReport(
                host=f"{capacity.where}: {node.name}",
                reachable=True,
                reason=reason,
                versions_match=(versions["distributed"], versions["taskcloud"]) == ours,
                cores=node.cores,
                memory=node.memory,
                gpus=len(node.gpus),
                **versions,
            )
            for node in capacity.nodes
        ]

    def _report(self) -> tuple[dict[str, Any], str]:
        """``python -m taskcloud.hostside report`` as a job step, after the profile's
        ``job_script_prologue``: what it printed, or why it printed nothing."""
        o = self.options
        python = o.python or sys.executable
        script = "\n".join(
            [*o.job_script_prologue, f"exec {shlex.quote(python)} -m taskcloud.hostside report"]
        )
        if o.allocation == "current":
            where = [f"--jobid={os.environ['SLURM_JOB_ID']}", "--overlap"]
        else:
            where = [
                *([f"--partition={o.queue}"] if o.queue else []),
                *([f"--account={o.account}"] if o.account else []),
                *([f"--time={o.walltime}"] if o.walltime else []),
                *o.job_extra_directives,
                f"--immediate={COMMAND_TIMEOUT:.0f}",
                "--job-name=taskcloud-check",
            ]
        command = ["srun", *where, "--nodes=1", "--ntasks=1", "bash", "-c", script]
        shown = f"{python} -m taskcloud.hostside report in a job step (srun)"
        if shutil.which("srun") is None:
            return {}, f"{shown} could not start: no srun on this host's PATH"
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as process:
            try:
                out, err = process.communicate(timeout=REPORT_TIMEOUT)
            except subprocess.TimeoutExpired:
                # srun cancels its step, and the job it asked for
                kill(process.pid, sig=signal.SIGTERM)
                try:
                    process.communicate(timeout=COMMAND_TIMEOUT)
                except subprocess.TimeoutExpired:
                    kill(process.pid)
                return {}, f"{shown} did not answer within {REPORT_TIMEOUT:g} s"
        with contextlib.suppress(ValueError, IndexError):
            found = json.loads(out.strip().splitlines()[-1])
            if isinstance(found, dict):
                return found, ""
        said = " ".join((err or out).split())[-300:]
        return {}, f"{shown} failed with exit status {process.returncode}: {said}"

    def close(self) -> None:
        """Nothing to close: each pool cancels its own jobs."""


async def _begin(cluster: SlurmPoolCluster) -> None:
    await events.install(cluster.scheduler_comm)
    cluster.begin()
