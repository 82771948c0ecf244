"""The SSH provider: workers on other hosts, reached over SSH (asyncssh).

The scheduler runs in this process on 127.0.0.1, with TLS and credentials of the
pool's own (as a local pool's does); nothing here listens beyond loopback. Each host
gets one SSH connection per pool, opened as the pool's scaling is set, with a reverse
tunnel from the host's 127.0.0.1 to the scheduler. On that connection runs one agent,
:mod:`taskcloud.hostside`, which imports distributed once and forks each worker's
nanny; the workers' specs (TLS credentials as PEM text among them) arrive on its
standard input, never its command line, and everything it started ends when its
input does. So a pool's close, a dropped connection and a SIGKILLed owner all leave
nothing on the hosts.

Options (a profile's keys, or ``provider_options``):

``hosts``
    a list of ``"[user@]host[:port]"``, or tables
    ``{host = ..., user = ..., port = ..., max_workers = ...}``;
``user``, ``port`` (22), ``identity`` (a private key file), ``known_hosts``
    (``~/.ssh/known_hosts``), ``connect_timeout`` (10 s), ``max_workers`` (per host);
``python``
    the interpreter on the hosts (this one's by default: the hosts share the
    filesystem).

Host keys are checked strictly against ``known_hosts``; private keys never leave
this machine (no agent forwarding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import shlex
import threading
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from typing import TypeVar

from attrs import field
from attrs import frozen

from taskcloud.capacity import _DEFAULT
from taskcloud.capacity import Capacity
from taskcloud.capacity import Host as Hardware
from taskcloud.capacity import Shape
from taskcloud.errors import HostUnreachableError
from taskcloud.errors import InvalidOptionError
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import WorkerRequest
from taskcloud.providers.protocol import on_hosts
from taskcloud.providers.ssh.connections import Links
from taskcloud.providers.ssh.connections import connect
from taskcloud.providers.ssh.options import Host
from taskcloud.providers.ssh.options import SSHOptions
from taskcloud.providers.ssh.options import parse_options
from taskcloud.providers.ssh.workers import SSHWorker

__all__ = [
    "Host",
    "HostInfo",
    "SSHCapacity",
    "SSHOptions",
    "SSHProvider",
    "SSHWorker",
]

logger = logging.getLogger("taskcloud")

_T = TypeVar("_T")

#: What reads a host's cores, memory and GPUs, without Python.
_HARDWARE = "nproc; grep MemTotal /proc/meminfo; nvidia-smi -L 2>/dev/null || true"


# -------------------------------------------------------------------------- capacity


def _gpu_ids(gpus: int | Iterable[str]) -> tuple[str, ...]:
    return tuple(str(i) for i in range(gpus)) if isinstance(gpus, int) else tuple(gpus)


@frozen
class HostInfo:
    """What one host has, read once; ``reason`` says why a host could not be read."""

    host: Host
    cores: int = 0
    memory: int = 0
    #: The host's GPU ids (a count stands for ids ``"0"``, ``"1"``, ...).
    gpus: tuple[str, ...] = field(default=(), converter=_gpu_ids)
    reason: str = ""

    @property
    def hardware(self) -> Hardware:
        """The host as a capacity counts it, by its address."""
        return Hardware(str(self.host), self.cores, self.memory, self.gpus)


def parse_hardware(text: str) -> tuple[int, int, tuple[str, ...]]:
    """Cores, bytes of memory and GPU ids (``nvidia-smi -L``'s indices) from the
    output of :data:`_HARDWARE`."""
    lines = text.splitlines()
    cores = int(lines[0].strip())
    memory = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemTotal:"))
    gpus = tuple(m.group(1) for line in lines if (m := re.match(r"GPU (\d+):", line)))
    return cores, memory, gpus


class SSHCapacity(Capacity):
    """The reachable hosts' capacity, shared with every taskcloud process through the
    hosts' ledger; beside it, the hosts that could not be read and why."""

    def __init__(self, provider: str, hosts: list[HostInfo], ledger: Any = _DEFAULT) -> None:
        self.infos = list(hosts)
        reachable = self.reachable
        if not reachable:
            raise HostUnreachableError(self.unreachable, provider)
        super().__init__(
            provider,
            [info.hardware for info in reachable],
            ledger=ledger,
            max_workers={str(info.host): info.host.max_workers for info in reachable},
        )

    @property
    def reachable(self) -> list[HostInfo]:
        return [info for info in self.infos if not info.reason]

    @property
    def unreachable(self) -> dict[str, str]:
        return {str(info.host): info.reason for info in self.infos if info.reason}

    def room(self, host: HostInfo | str, shape: Shape) -> int:
        """How many more workers of ``shape`` fit on ``host`` beside every holder's."""
        return super().room(str(host.host) if isinstance(host, HostInfo) else host, shape)


# -------------------------------------------------------------------------- provider


def _in_thread(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine on an event loop of its own, whatever loop the caller runs."""

    async def run() -> _T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, run()).result()


#: The worker classes the hosts' agents start.
_NANNIES = ("", "distributed.Nanny", "taskcloud.providers.nanny.PoolNanny")


class SSHProvider:
    """Workers on hosts reached over SSH (see the module's docstring)."""

    form = "workers"
    kind = "ssh"

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = parse_options(dict(options))
        #: The scheduler listens on 127.0.0.1: the workers reach it through the SSH
        #: connections' tunnels. Each host gets the TLS files over them too.
        self.scheduler_options: dict[str, Any] = {}
        self.shared_directory = None
        self._capacity: SSHCapacity | None = None
        self._links: dict[int, Links] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SSHProvider({self.name!r}, hosts={[str(h) for h in self.options.hosts]})"

    async def _hardware(self, host: Host) -> HostInfo:
        try:
            connection = await connect(host, self.options)
        except HostUnreachableError as exc:
            return HostInfo(host, reason=exc.reasons[host.address])
        async with connection:
            result = await connection.run(_HARDWARE, check=False)
        try:
            cores, memory, gpus = parse_hardware(str(result.stdout))
        except (ValueError, IndexError, StopIteration):
            return HostInfo(host, reason=f"could not read its hardware: {result.stderr!s:.200}")
        return HostInfo(host, cores, memory, gpus)

    def where(self, hosts: list[str], workers: list[Any]) -> str:
        return on_hosts(self.name, hosts)

    def capacity(self) -> SSHCapacity:
        """The hosts' capacity, read once; unreachable hosts are left out, with a warning."""
        with self._lock:
            if self._capacity is None:
                self._capacity = self._read_capacity()
            return self._capacity

    def _read_capacity(self) -> SSHCapacity:
        async def read() -> list[HostInfo]:
            return list(await asyncio.gather(*(self._hardware(h) for h in self.options.hosts)))

        capacity = SSHCapacity(self.name, _in_thread(read))
        for host, reason in capacity.unreachable.items():
            logger.warning("%s: host %s is left out: %s", self.name, host, reason)
        return capacity

    def links(self, scheduler_port: int) -> tuple[Links, bool]:
        """The connections of the cluster whose scheduler listens on ``scheduler_port``
        here (one per host, each with its tunnel to that port), and whether they are
        new."""
        with self._lock:
            links = self._links.get(scheduler_port)
            if links is None or links.closed:
                links = self._links[scheduler_port] = Links(self.options, scheduler_port)
                return links, True
            return links, False

    def worker(self, request: WorkerRequest) -> dict[str, Any]:
        """A nanny and its worker on ``request.host``, a child of the host's agent."""
        if request.worker_class not in _NANNIES:
            raise InvalidOptionError(
                "worker_class",
                request.worker_class,
                "'distributed.Nanny' on the ssh provider: its hosts' agents start nannies",
            )
        hosts = {str(info.host): info.host for info in self.capacity().reachable}
        shape = request.shape
        options = {
            "host": hosts[request.host],
            "provider": self,
            "python": request.python or self.options.python,
            "nthreads": request.threads,
            "memory_limit": shape.memory,
            "resources": {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu},
            "env": dict(request.environ),
            "security": request.security,
            "options": dict(request.worker_options),
        }
        return {"cls": SSHWorker, "options": options}

    async def _report(self, host: Host) -> HostReport:
        from importlib.metadata import version

        try:
            connection = await connect(host, self.options)
        except HostUnreachableError as exc:
            return HostReport(host=str(host), reachable=False, reason=exc.reasons[host.address])
        async with connection:
            command = f"{shlex.quote(self.options.python)} -m taskcloud.hostside report"
            result = await connection.run(command, check=False)
        try:
            found = json.loads(str(result.stdout).strip().splitlines()[-1])
        except (ValueError, IndexError):
            reason = f"{self.options.python} -m taskcloud.hostside failed: {result.stderr!s:.300}"
            return HostReport(host=str(host), reachable=True, reason=reason.strip())
        ours = (version("distributed"), version("taskcloud"))
        match = (found["distributed"], found["taskcloud"]) == ours
        return HostReport(host=str(host), reachable=True, versions_match=match, **found)

    def check(self) -> list[HostReport]:
        """Connect to every host and report what it offers."""

        async def reports() -> list[HostReport]:
            return list(await asyncio.gather(*(self._report(h) for h in self.options.hosts)))

        return _in_thread(reports)

    def close(self) -> None:
        """Close every connection this provider opened; their workers end with them."""
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for each in links:
            each.close_all()
