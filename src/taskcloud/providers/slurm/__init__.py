"""The Slurm provider: each worker of a pool's shape is a Slurm batch job.

The provider takes the workers form: the cluster base
(:mod:`taskcloud.providers.cluster`) runs the scheduler, TLS, scaling, replacing,
killing, failure reporting and close; dask-jobqueue's ``Job`` is the engine of one
worker (:meth:`SlurmProvider.worker`), so two shapes in one run get two kinds of jobs
(``--cpus-per-task``, ``--mem``, ``--gres=gpu:N``), each running one worker whose
nthreads, memory limit and resources (``cpu``, ``memory``, ``gpu``) are those of the
local provider's. What is Slurm's own is here:

* **capacity from the cluster itself**: ``sinfo``'s nodes of the partition, so a
  shape no node can hold fails at the first call instead of pending forever;
* **job state**: a :class:`JobMonitor` polls ``squeue``. A job pending past
  ``pending_timeout`` is cancelled, and a job that ends before its worker connects
  fails the pool's waiting calls with its stderr; a job that ends after is replaced;
* **credentials off the command line**: the scheduler and the workers speak TLS with
  the pool's own key, made by the cluster base in 0600 files of a 0700 directory
  under ``$TASKCLOUD_HOME/slurm`` (:attr:`SlurmProvider.shared_directory`) that the
  jobs read (same user, shared filesystem) and removed on close; the job scripts name
  only their paths, and the environment is a 0600 file beside them;
* **nothing left behind**: jobs are cancelled on close (``scancel`` kills at once); a
  worker whose scheduler is gone (its process was killed) exits after
  ``--death-timeout`` and so does its job;
* **inside an allocation** (``allocation = "current"``): workers are ``srun`` steps
  of the job ``SLURM_JOB_ID`` rather than jobs of their own.
"""

from __future__ import annotations

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
from importlib.metadata import version
from pathlib import Path
from typing import Any

from taskcloud.capacity import Capacity
from taskcloud.capacity import Host
from taskcloud.capacity import Shape
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.errors import SlurmUnreachableError
from taskcloud.processes import kill
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import WorkerRequest
from taskcloud.providers.slurm.jobs import TaskcloudSlurmJob
from taskcloud.providers.slurm.jobs import _gpus
from taskcloud.providers.slurm.jobs import _step_job
from taskcloud.providers.slurm.jobs import _write_env
from taskcloud.providers.slurm.jobs import slurm_command
from taskcloud.providers.slurm.monitor import JobMonitor
from taskcloud.providers.slurm.options import COMMAND_TIMEOUT
from taskcloud.providers.slurm.options import REPORT_TIMEOUT
from taskcloud.providers.slurm.options import WALLTIME_MARGIN
from taskcloud.providers.slurm.options import SlurmOptions
from taskcloud.providers.slurm.options import _walltime_seconds
from taskcloud.units import format_bytes

__all__ = ["JobMonitor", "SlurmCapacity", "SlurmOptions", "SlurmProvider"]

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


# -- the provider -----------------------------------------------------------------------


class SlurmProvider:
    """The ``slurm`` provider: each worker of a pool's shape is a Slurm batch job (or
    a step of the allocation), on the cluster base."""

    form = "workers"
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

    @property
    def shared_directory(self) -> Path:
        """Where a pool's credentials are made (the cluster base's): a private
        directory of its own under ``$TASKCLOUD_HOME/slurm``, which the jobs read."""
        from taskcloud.store import home

        return home() / "slurm"

    @property
    def scheduler_options(self) -> dict[str, Any]:
        """Where the scheduler listens for the jobs' workers."""
        if self.options.scheduler_host:
            return {"host": self.options.scheduler_host}
        if self.options.interface:
            return {"host": None, "interface": self.options.interface}
        return {}

    def where(self, hosts: list[str], workers: list[Any]) -> str:
        """The partition (or allocation) and the jobs running now, for summaries."""
        jobs = [str(job.job_id) for job in workers if getattr(job, "job_id", None)]
        listed = f": jobs {', '.join(jobs)}" if jobs else ""
        return f"{self.name} (Slurm {self.capacity().where}){listed}"

    def worker(self, request: WorkerRequest) -> dict[str, Any]:
        """One worker of ``request.shape`` as one job: ``--cpus-per-task``, ``--mem``
        and ``--gres=gpu:N`` of the shape, the TLS files and the environment by path."""
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
        o = self.options
        shape = request.shape
        # The cluster's private directory (its credentials'): 0700, on the shared
        # filesystem for a pool (shared_directory), removed when the cluster closes.
        directory = Path(request.security.tls_worker_key).parent
        logs = directory / "slurm-logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        # Slurm gives a job its GPUs (--gres) and sets CUDA_VISIBLE_DEVICES itself.
        environ = {k: v for k, v in request.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env_file = _write_env(directory, request.name, environ)
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
            "cores": request.threads,
            "processes": 1,
            "memory": f"{shape.memory}B",
            "job_cpu": shape.cpu,
            "job_mem": f"{max(1, -(-shape.memory // 2**20))}M",
            "gpus": shape.gpu,
            "queue": o.queue,
            "account": o.account,
            "walltime": o.walltime,
            "job_extra_directives": list(o.job_extra_directives),
            "job_script_prologue": list(o.job_script_prologue),
            "python": request.python or o.python or sys.executable,
            "interface": o.interface,
            "death_timeout": o.death_timeout,
            "worker_extra_args": extra_args,
            "log_directory": str(logs),
            "job_name": "taskcloud",
            "env_file": str(env_file) if env_file is not None else None,
            "security": request.security,
            "protocol": "tls://",
            "provider": self.name,
            "pending_timeout": o.pending_timeout,
        }
        cls: type = TaskcloudSlurmJob
        if o.allocation == "current":
            cls = _step_job(os.environ["SLURM_JOB_ID"], shape, 1, env_file)
        return {"cls": cls, "options": options}

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
