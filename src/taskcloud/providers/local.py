"""The local provider: worker processes on this host.

Each worker is a ``Nanny``-supervised process listening on 127.0.0.1 with the
cluster's TLS credentials (:class:`PoolNanny`), or, for a software environment, the
same started by that environment's Python (:class:`EnvironmentWorker`). The nanny
enforces the memory limit and replaces a worker that dies. Everything else about the
cluster is :mod:`taskcloud.providers.cluster`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from typing import Any

import psutil
from distributed import Nanny
from distributed.deploy.spec import ProcessInterface
from distributed.utils import import_term

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.errors import InvalidOptionError
from taskcloud.processes import end
from taskcloud.processes import kill
from taskcloud.providers import main_module_hidden
from taskcloud.providers.cluster import HEALTH_ONLY
from taskcloud.providers.cluster import ProviderCluster
from taskcloud.providers.cluster import quiet_logs
from taskcloud.providers.cluster import scheduler_spec
from taskcloud.providers.owned import PRELOAD
from taskcloud.providers.protocol import THIS_HOST
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import WorkerRequest
from taskcloud.providers.protocol import on_hosts
from taskcloud.providers.scheduler import SchedulerProcess

__all__ = ["EnvironmentWorker", "LocalProvider", "build"]

logger = logging.getLogger("taskcloud")

#: The worker class of a pool's workers here.
POOL_NANNY = "taskcloud.providers.nanny.PoolNanny"


class EnvironmentWorker(ProcessInterface):
    """A nanny and its worker run by another Python: that of a software environment.

    multiprocessing starts every child with this process's interpreter, so these
    workers start as ``python -m distributed.cli.dask_worker --nanny`` of the
    environment instead. The nanny still enforces the memory limit and replaces a
    worker that dies.
    """

    def __init__(
        self,
        scheduler: str,
        name: Any = None,
        *,
        python: str,
        nthreads: int,
        memory_limit: int,
        resources: dict[str, Any],
        env: dict[str, str] | None = None,
        security: Any = None,
        **ignored: Any,
    ) -> None:
        super().__init__(scheduler, name)
        self.name = name
        self.command = [
            python,
            "-m",
            "distributed.cli.dask_worker",
            scheduler,
            "--nanny",
            "--name",
            str(name),
            "--nthreads",
            str(nthreads),
            "--memory-limit",
            str(memory_limit),
            "--resources",
            ",".join(f"{key}={value}" for key, value in resources.items()),
            "--host",
            "127.0.0.1",
            "--no-dashboard",
        ]
        if security is not None:
            self.command += [
                "--tls-ca-file",
                security.tls_ca_file,
                "--tls-cert",
                security.tls_worker_cert,
                "--tls-key",
                security.tls_worker_key,
            ]
        self.env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "error", **(env or {})}
        self.process: asyncio.subprocess.Process | None = None
        self.errors: collections.deque[str] = collections.deque(maxlen=40)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.ensure_future(self._read_errors())
        await super().start()

    async def _read_errors(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.errors.append(line.decode(errors="replace").rstrip())
        code = await self.process.wait()
        if code and self.status.name != "closed":
            logger.error(
                "worker %s of the software environment exited with %s:\n%s",
                self.name,
                code,
                "\n".join(self.errors),
            )

    def kill_worker(self, for_good: bool = False) -> None:
        """Kill the worker process at once; its nanny starts another, unless
        ``for_good``: then the nanny goes too."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children():
                kill(child.pid)
        if for_good:
            kill(self.process.pid)

    async def close(self) -> None:
        if self.process is not None:
            await end(self.process, grace=10)
        await super().close()


def worker_spec(request: WorkerRequest) -> dict[str, Any]:
    """One worker of the request's shape on 127.0.0.1, tagged with its resources.

    With ``python`` (a software environment's interpreter) it runs in that Python.
    The request's ``environ`` is set in the worker's process as it starts (the nanny
    passes it on, not the command line), and nowhere else. Its HTTP server serves
    :data:`HEALTH_ONLY`.
    """
    shape = request.shape
    resources = {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu}
    if request.python is not None:
        settings = {
            "python": request.python,
            "nthreads": request.threads,
            "memory_limit": shape.memory,
            "resources": resources,
            "env": {**request.environ, _ROUTES_VARIABLE: repr(HEALTH_ONLY)},
            "security": request.security,
            **request.worker_options,
        }
        return {"cls": EnvironmentWorker, "options": settings}
    cls = import_term(request.worker_class or POOL_NANNY)
    settings = {
        "nthreads": request.threads,
        "memory_limit": shape.memory,
        "resources": resources,
        "host": "127.0.0.1",
        "dashboard": False,
        "dashboard_address": "127.0.0.1:0",
        "security": request.security,
    }
    if issubclass(cls, Nanny):
        # A failing call is the caller's exception, not a worker's log line. The nanny
        # hands the worker process this process's config, and these keys.
        settings.update(
            env=dict(request.environ),
            silence_logs=quiet_logs(),
            config={_ROUTES_KEY: list(HEALTH_ONLY)},
        )
    settings.update(request.worker_options)
    if issubclass(cls, Nanny):
        # The owner of these workers handles Ctrl-C and kills them.
        preload = settings.get("preload") or []
        settings["preload"] = [*([preload] if isinstance(preload, str) else preload), PRELOAD]
    return {"cls": cls, "options": settings}


_ROUTES_KEY = "distributed.worker.http.routes"
_ROUTES_VARIABLE = "DASK_DISTRIBUTED__WORKER__HTTP__ROUTES"


class LocalProvider:
    """The ``local`` provider: workers are processes on this host. It has no options."""

    form = "workers"
    kind = "local"

    def __init__(
        self, name: str = "local", options: dict[str, Any] | None = None, *, capacity: Any = None
    ) -> None:
        if options:
            raise InvalidOptionError(
                "provider_options", options, "{} for the local provider: it has no options"
            )
        self.name = name
        #: The scheduler listens on 127.0.0.1; the TLS files are this host's.
        self.scheduler_options: dict[str, Any] = {}
        self.shared_directory = None
        self._capacity = capacity
        self._given = capacity is not None
        self._read_with: str | None = None

    def where(self, hosts: list[str], workers: list[Any]) -> str:
        return on_hosts(self.name, hosts)

    def capacity(self) -> HostCapacity:
        """The capacity given, else the host's: read once, and again when the GPUs
        this process may use (``CUDA_VISIBLE_DEVICES``) have changed since."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self._capacity is None or (not self._given and visible != self._read_with):
            self._capacity, self._read_with = HostCapacity(), visible
        return self._capacity

    def worker(self, request: WorkerRequest) -> dict[str, Any]:
        return worker_spec(request)

    def check(self) -> list[HostReport]:
        import platform

        import distributed

        import taskcloud

        capacity = self.capacity()
        return [
            HostReport(
                host=THIS_HOST,
                reachable=True,
                python=platform.python_version(),
                distributed=distributed.__version__,
                taskcloud=taskcloud.__version__,
                versions_match=True,
                cores=capacity.cores,
                memory=capacity.memory,
                gpus=len(capacity.gpus),
            )
        ]

    def close(self) -> None:
        """Nothing to close: each pool closes its own workers."""


def build(shape: Shape, n_workers: int, *, name: str, worker_options: dict[str, Any]) -> Any:
    """The dask backend's cluster: ``n_workers`` workers of ``shape`` on this host, with
    the scheduler in a process of its own, started as this returns."""
    with main_module_hidden():
        return ProviderCluster(
            LocalProvider(),
            shape=shape,
            threads=1,
            capacity=None,
            name=name,
            scheduler=scheduler_spec(cls=SchedulerProcess),
            worker_class="distributed.Nanny",
            worker_options=worker_options,
            n_workers=n_workers,
            start_errors=True,
            silence_logs=logging.WARNING,
        )
