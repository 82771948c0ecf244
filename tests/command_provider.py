"""A provider written from docs/providers.md alone: workers are plain subprocesses
started through a command template. It uses only what that page documents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import sys

import psutil
from distributed.deploy.spec import ProcessInterface

from taskcloud.capacity import Capacity
from taskcloud.capacity import Host
from taskcloud.errors import InvalidOptionError
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import WorkerRequest
from taskcloud.providers.protocol import on_hosts

TEMPLATE = (
    "{python} -m distributed.cli.dask_worker {scheduler} --nanny --name {name} "
    "--nthreads {threads} --memory-limit {memory} --host 127.0.0.1 --no-dashboard "
    "--death-timeout 10 --tls-ca-file {ca} --tls-cert {cert} --tls-key {key}"
)


class CommandWorker(ProcessInterface):
    """One worker: the command, run with the worker's environment."""

    def __init__(self, scheduler: str, name: int, *, command: str, environ: dict) -> None:
        super().__init__(scheduler, name)
        self.argv = command.replace("{scheduler}", scheduler).split()
        self.environ = {**os.environ, **environ}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._waiter = asyncio.ensure_future(self._wait())
        await super().start()

    async def _wait(self) -> None:
        await self.process.wait()
        await super().close()  # ended by itself: taskcloud replaces it

    def kill_worker(self, for_good: bool = False) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children():
                child.kill()  # the worker: its nanny starts another
        if for_good:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.kill_worker(for_good=True)
        await super().close()


class CommandProvider:
    """Workers as subprocesses of this host, started through ``command``."""

    form = "workers"
    kind = "command"

    def __init__(self, name: str, options: dict) -> None:
        unknown = set(options) - {"command", "cores", "memory", "gpus"}
        if unknown:
            raise InvalidOptionError(
                "provider_options", options, "'command', 'cores', 'memory' and 'gpus'"
            )
        self.name = name
        self.command = options.get("command", TEMPLATE)
        self.scheduler_options = {}  # the scheduler on 127.0.0.1: workers are local
        self.shared_directory = None  # TLS files in this host's temporary directory
        self._capacity = Capacity(
            name,
            [
                Host(
                    "127.0.0.1",
                    cores=int(options.get("cores", os.cpu_count() or 1)),
                    memory=int(options.get("memory", psutil.virtual_memory().total)),
                    gpus=tuple(options.get("gpus", ())),
                )
            ],
        )

    def where(self, hosts: list, workers: list) -> str:
        return on_hosts(self.name, hosts)

    def capacity(self) -> Capacity:
        return self._capacity

    def worker(self, request: WorkerRequest) -> dict:
        if request.worker_class not in ("", "distributed.Nanny"):
            raise InvalidOptionError("worker_class", request.worker_class, "'distributed.Nanny'")
        security = request.security
        command = self.command.format(
            python=request.python or sys.executable,
            scheduler="{scheduler}",
            name=request.name,
            threads=request.threads,
            memory=request.shape.memory,
            ca=security.tls_ca_file,
            cert=security.tls_worker_cert,
            key=security.tls_worker_key,
        )
        return {
            "cls": CommandWorker,
            "options": {"command": command, "environ": dict(request.environ)},
        }

    def check(self) -> list[HostReport]:
        host = self._capacity.hosts[0]
        return [
            HostReport(
                host=host.name,
                reachable=True,
                python=platform.python_version(),
                cores=host.cores,
                memory=host.memory,
                gpus=len(host.gpus),
            )
        ]

    def close(self) -> None:
        """Each pool ends its own workers."""
