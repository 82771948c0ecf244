"""The provider seam: what pools, named clusters and the daemon ask of a provider.

A provider takes one of two forms (its ``form`` attribute says which):

* **workers** (:class:`Provider`): the provider says what its hosts hold
  (:meth:`~Provider.capacity`, a :class:`taskcloud.capacity.Capacity` over
  :class:`taskcloud.capacity.Host` records) and how to start one worker of a shape on
  one of them (:meth:`~Provider.worker`: a distributed ``ProcessInterface`` spec, as
  dask-jobqueue's ``Job`` and distributed's ``SSHCluster`` use). taskcloud runs the
  scheduler and everything else, once, in :mod:`taskcloud.providers.cluster`. The
  local, SSH and Slurm providers take this form.
* **clusters** (:class:`ClusterProvider`): the provider's service hands out whole
  clusters that scale themselves (:meth:`~ClusterProvider.start_pool`,
  :meth:`~ClusterProvider.start_cluster` return :class:`Workers`). No built-in
  provider takes this form.

Both answer :meth:`~Provider.check` and :meth:`~Provider.close`. ``docs/providers.md``
says how to write one. Pools, named clusters and the daemon use only what is declared
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import Literal
from typing import Protocol

from attrs import field
from attrs import frozen

from taskcloud.capacity import THIS_HOST
from taskcloud.capacity import Shape

__all__ = [
    "THIS_HOST",
    "Capacity",
    "ClusterProvider",
    "ClusterRequest",
    "HostReport",
    "PoolRequest",
    "Provider",
    "Watch",
    "WorkerRequest",
    "Workers",
    "on_hosts",
]


class Capacity(Protocol):
    """What a provider's workers may be, and how they share out its hosts.

    :class:`taskcloud.capacity.Capacity` answers all of it for any list of hosts.
    """

    def describe(self) -> str:
        """The whole capacity in words: ``127.0.0.1 (2 cores, 23 GiB), ...``."""

    def default_memory(self, cpu: int) -> int:
        """The memory of a worker with ``cpu`` cores whose memory is not given."""

    def check(self, shape: Shape) -> None:
        """Raise :class:`~taskcloud.errors.ResourceUnavailableError` when no host can
        ever hold one worker of ``shape``, naming what each host has."""

    def fit(self, shape: Shape) -> int:
        """How many workers of ``shape`` the empty hosts hold, all together."""

    def grant(self, holder: object, shape: Shape, want: int, current: int) -> int:
        """How many of the ``want`` workers ``holder`` may have now."""

    def waiting(self, holder: object) -> bool:
        """Whether ``holder`` wants more workers than there is room for now."""

    def waited(self, holder: object) -> float:
        """Seconds ``holder`` has waited for room, all waits together."""

    def others_waiting(self, holder: object) -> bool:
        """Whether any other holder (in any process) waits for room now."""

    def release(self, holder: object) -> None:
        """Forget what ``holder`` held."""


class Watch(Protocol):
    """What a pool's calls learn about their tasks and workers."""

    def on_start(self, key: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when the task ``key`` goes to a worker."""

    def on_executing(self, key: str, callback: Callable[[str, float], None]) -> None:
        """Call ``callback(key, since)`` when a worker's thread starts the timed ``key``."""

    def memory_kill(self, worker: str, wait: float) -> int | None:
        """The RSS at which ``worker`` was killed for memory, if it was."""

    def running_on(self, key: str) -> str | None:
        """The address of the worker that runs the task ``key``, if one does."""

    def forget(self, key: str) -> None:
        """The task ``key`` ended; nothing more about it is wanted."""


class Workers(Protocol):
    """The workers a provider started, for a pool or a named cluster: a dask
    ``Cluster`` (a client connects to it) that also answers these."""

    #: What the workers are called in messages (``pool 1: cpu=2 ...``).
    label: str

    @property
    def scheduler_address(self) -> str:
        """Where a client reaches the scheduler (``tls://127.0.0.1:...``)."""

    @property
    def dashboard_link(self) -> str:
        """The dashboard's address, as dask's clusters give it."""

    @property
    def where(self) -> str:
        """Where the workers run, for summaries: ``this host``, ``lab: 127.0.0.1, ...``."""

    @property
    def n_workers(self) -> int:
        """How many workers are connected now."""

    @property
    def capacity(self) -> Capacity:
        """The capacity the workers grow within."""

    def watch(self, client: Any, stats: Any) -> Watch:
        """Start watching the workers' tasks through ``client`` (the pool's, connected
        to the scheduler, which may run anywhere); ``stats`` counts workers as they come.
        :class:`taskcloud.providers.events.PoolWatch` does it from events."""

    def describe_worker(self, address: str) -> str:
        """The worker at ``address`` as errors name it (its host, its batch job)."""

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(error)`` when no worker can come (a job refused, say): the
        pool fails its waiting calls with ``error``."""

    def replace_worker(self, address: str) -> None:
        """Let the worker at ``address`` go at once and kill it; another takes its
        place. What else it ran runs again elsewhere."""

    def scale(self, n: int) -> Any:
        """Hold ``n`` workers (a named cluster's fixed size)."""

    def scale_between(self, minimum: int, maximum: int, keepalive: float) -> Any:
        """Scale from the queue between ``minimum`` and ``maximum`` workers, within the
        capacity; an idle worker goes after ``keepalive`` seconds."""

    def kill(self) -> None:
        """Kill every worker at once, busy or not; nothing they hold is wanted."""

    def close(self) -> Any:
        """Stop the workers and the scheduler; nothing is left on any host."""

    # -- what a named cluster's daemon asks, over the wire wherever the scheduler runs --

    @property
    def dashboard_port(self) -> int | None:
        """The port of the scheduler's dashboard, None without one (from dask's
        ``scheduler_info``)."""

    async def idle_since(self) -> float | None:
        """Since when (``time.time()``) nothing ran or waited, None while busy: asked of
        the scheduler. Raises :class:`OSError` when the scheduler is gone."""

    async def serve(self, handlers: dict[str, Callable[..., Any]]) -> asyncio.Future[None]:
        """Answer clients' requests of these names (``taskcloud_scale``, ...), made of the
        scheduler, with these coroutines, which run in the daemon: an error one raises
        reaches the caller. The scheduler relays them from when this returns until it
        closes (or is gone); then the future this returns is done.
        :func:`taskcloud.providers.events.serve` does it."""


@frozen(kw_only=True)
class WorkerRequest:
    """One worker that a cluster asks a provider of the workers form to start."""

    #: The worker's name; the worker must report it to the scheduler as given.
    name: int
    #: The host the capacity placed it on: the ``name`` of one of its hosts.
    host: str
    shape: Shape
    #: Threads in the worker.
    threads: int
    #: The cluster's TLS credentials (a distributed ``Security``): the worker listens
    #: and connects with ``tls_ca_file``, ``tls_worker_cert`` and ``tls_worker_key``.
    security: Any
    #: Set in the worker's process as it starts, and nowhere else (never on a command
    #: line): the pool's ``environ``, and ``CUDA_VISIBLE_DEVICES``.
    environ: dict[str, str] = field(factory=dict)
    #: The interpreter the worker runs with: a software environment's, or None for the
    #: provider's own.
    python: str | None = None
    #: A named cluster's ``worker_class`` (dotted path), "" for the provider's default.
    worker_class: str = ""
    #: A named cluster's ``worker_options``, passed to the worker class.
    worker_options: dict[str, Any] = field(factory=dict)


@frozen(kw_only=True)
class PoolRequest:
    """What a pool asks of a provider: workers of one shape, scaled from the queue."""

    shape: Shape
    threads_per_worker: int
    #: The dask name of the cluster, ``taskcloud-3``, say.
    name: str
    #: What it is called in messages and summaries.
    label: str
    minimum: int
    maximum: int
    keepalive: float
    #: The interpreter workers run with: a software environment's, or None for the
    #: provider's own (this interpreter, or the ``python`` option of the provider).
    python: str | None = None
    #: Set in each worker's process as it starts, and nowhere else.
    environ: dict[str, str] = field(factory=dict)
    dashboard: bool = False
    #: Run the scheduler in a process of its own rather than in the pool's owner
    #: (dask config ``taskcloud.scheduler-process``); a provider of the clusters form,
    #: whose service runs the scheduler, ignores it.
    scheduler_process: bool = False


@frozen(kw_only=True)
class ClusterRequest:
    """What a named cluster's daemon asks of a provider: workers it scales itself."""

    shape: Shape
    threads_per_worker: int
    name: str
    #: The cluster's own credentials (its scheduler and workers speak TLS with them).
    security: Any
    #: The workers' class (dotted path); "" for the provider's own.
    worker_class: str = ""
    worker_options: dict[str, Any] = field(factory=dict)
    scheduler_options: dict[str, Any] = field(factory=dict)
    dashboard: bool = False
    #: Run the scheduler in a process of its own rather than in the daemon's (dask
    #: config ``taskcloud.scheduler-process``); a provider of the clusters form, whose
    #: service runs the scheduler, ignores it.
    scheduler_process: bool = False


@frozen(kw_only=True)
class HostReport:
    """What ``taskcloud provider check`` says about one host (or queue)."""

    host: str
    reachable: bool
    reason: str = ""
    python: str = ""
    distributed: str = ""
    taskcloud: str = ""
    #: Whether distributed and taskcloud there match this process's versions.
    versions_match: bool = False
    cores: int = 0
    memory: int = 0
    gpus: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "reachable": self.reachable,
            "reason": self.reason,
            "python": self.python,
            "distributed": self.distributed,
            "taskcloud": self.taskcloud,
            "versions_match": self.versions_match,
            "cores": self.cores,
            "memory": self.memory,
            "gpus": self.gpus,
        }


class Provider(Protocol):
    """The workers form: a kind of place where single workers start."""

    #: Which form this provider takes.
    form: Literal["workers"]
    #: The kind, as registered: ``local``, ``ssh``.
    kind: str
    #: The profile's name, or the kind when no profile was used.
    name: str
    #: Where the scheduler listens, as dask ``Scheduler`` options: ``{}`` for
    #: 127.0.0.1 (the workers run on this host, or reach it through tunnels of the
    #: provider's own), else ``{"host": ...}`` or ``{"interface": ...}`` that the
    #: workers' hosts reach.
    scheduler_options: dict[str, Any]
    #: A directory the workers' hosts read at the same path (a shared filesystem), in
    #: which each cluster's TLS files are made (0700, removed as it closes); None for
    #: this host's temporary directory.
    shared_directory: Path | None

    def capacity(self) -> Capacity:
        """What the hosts hold (read once, cached for the provider's life): a
        :class:`taskcloud.capacity.Capacity` over their :class:`~taskcloud.capacity.Host`
        records."""

    def worker(self, request: WorkerRequest) -> dict[str, Any]:
        """One worker of ``request.shape`` on ``request.host``: ``{"cls": ..., "options":
        {...}}``, where ``cls`` is a ``distributed.deploy.spec.ProcessInterface``
        subclass (or a distributed ``Nanny``), called as
        ``cls(scheduler_address, name=request.name, **options)``.
        Its ``start`` returns once the worker process runs (or raises why it did not);
        its ``close`` ends it; its ``kill_worker(for_good=False)`` ends the worker
        process at once (``for_good``: nothing may start it again). It may also have
        ``error`` (why it ended by itself before its worker connected: the pool's calls
        fail with it) and ``describe()`` (``Slurm job 12``, for errors)."""

    def where(self, hosts: list[str], workers: list[Any]) -> str:
        """Where the workers run, for summaries and listings: ``hosts`` are the hosts
        they were placed on (all the capacity's before any was), ``workers`` the started
        worker interfaces. :func:`on_hosts` says it for most providers."""

    def check(self) -> list[HostReport]:
        """Connect to every host and report what it offers."""

    def close(self) -> None:
        """Close what the provider holds (connections); nothing is left on any host."""


class ClusterProvider(Protocol):
    """The clusters form: a service that hands out whole clusters, which scale
    themselves."""

    #: Which form this provider takes.
    form: Literal["clusters"]
    kind: str
    name: str

    def capacity(self) -> Capacity:
        """The largest shapes the service allows, and how many fit."""

    def start_pool(self, request: PoolRequest) -> Workers:
        """Start an empty pool that adapts between the request's bounds."""

    async def start_cluster(self, request: ClusterRequest) -> Workers:
        """Start a named cluster, in this process's event loop, without workers; the
        daemon scales it (``scale``, ``scale_between``) and closes it."""

    def check(self) -> list[HostReport]:
        """Connect to the service and report what it offers."""

    def close(self) -> None:
        """Close what the provider holds; nothing of it is left running."""


def on_hosts(provider: str, hosts: list[str]) -> str:
    """Where workers on ``hosts`` of ``provider`` run, in words: ``this host``, or
    ``lab: 127.0.0.1, 127.0.0.2``."""
    if not hosts or list(hosts) == [THIS_HOST]:
        return THIS_HOST
    return f"{provider}: {', '.join(hosts)}"
