"""The one small protocol every provider answers: what pools, clusters and the daemon use.

A provider (``local``, ``ssh``, later ``slurm`` and ``gateway``) is built from its
options by :mod:`taskcloud.providers.registry` and answers four questions:

* **capacity**: what a worker shape may be, and how many fit (:class:`Capacity`);
* **start a pool**: workers of one shape, adaptive between ``[minimum, maximum]``
  with a keepalive (:meth:`Provider.start_pool`);
* **start a named cluster's workers**: the same workers, driven by the cluster's
  daemon instead of by adaptive scaling (:meth:`Provider.start_cluster`);
* **close**, leaving nothing behind on any host (:meth:`Provider.close`).

What a provider starts is a :class:`Workers`: a dask cluster object (a
``SpecCluster`` subclass, say) whose scheduler a client reaches at its
``scheduler_address`` with its ``security``. Pools never touch its scheduler
directly; they ask the :class:`Workers` instead, so that a provider whose scheduler
runs elsewhere fits behind the same seam.

A provider's methods may be called from any thread: a remote provider keeps its
connections on an event loop of its own. ``start_cluster`` runs in the daemon's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from attrs import field
from attrs import frozen

from taskcloud.capacity import Shape

__all__ = [
    "Capacity",
    "ClusterRequest",
    "HostReport",
    "PoolRequest",
    "Provider",
    "Watch",
    "Workers",
]


class Capacity(Protocol):
    """What a provider's workers may be, and how they share out its hosts."""

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


@runtime_checkable
class Workers(Protocol):
    """Workers a provider started, for a pool or a named cluster."""

    #: What the workers are called in messages (``pool 1: cpu=2 ...``).
    label: str

    @property
    def scheduler_address(self) -> str:
        """Where a client reaches the scheduler (``tls://127.0.0.1:...``)."""

    @property
    def where(self) -> str:
        """Where the workers run, for summaries: ``this host``, ``lab: 127.0.0.1, ...``."""

    @property
    def n_workers(self) -> int:
        """How many workers are connected now."""

    def watch(self, stats: Any) -> Watch:
        """Start watching the workers' tasks; ``stats`` counts workers as they come."""

    @property
    def capacity(self) -> Capacity:
        """The capacity the workers grow within."""

    def running_on(self, key: str) -> str | None:
        """The address of the worker that runs the task ``key``, if one does."""

    def replace_worker(self, address: str) -> None:
        """Let the worker at ``address`` go at once and kill it; another takes its
        place. What else it ran runs again elsewhere."""

    def scale_between(self, minimum: int, maximum: int, keepalive: float) -> Any:
        """Scale from the queue between ``minimum`` and ``maximum`` workers, within the
        capacity; an idle worker goes after ``keepalive`` seconds."""

    def kill(self) -> None:
        """Kill every worker at once, busy or not; nothing they hold is wanted."""

    def close(self) -> Any:
        """Stop the workers and the scheduler; nothing is left on any host."""

    # Two optional methods, looked up by pools where a provider has them:
    # ``describe_worker(address) -> str`` names a worker in errors (a Slurm job, say),
    # and ``on_failure(fail_waiting)`` hands the provider the pool's way to fail its
    # waiting calls (a job that can never start, say).

    # -- what a named cluster's daemon asks of the workers it started ----------------------

    @property
    def dashboard_port(self) -> int | None:
        """The port of the scheduler's dashboard, None without one."""

    @property
    def idle_since(self) -> float | None:
        """Since when (``time.time()``) nothing ran or waited; None while busy."""

    @property
    def scheduler_closed(self) -> bool:
        """Whether the scheduler has closed (or is closing)."""

    def serve(self, handlers: dict[str, Callable[..., Any]]) -> None:
        """Answer clients' requests of these names (``taskcloud_scale``, ...) with these
        coroutines."""

    def on_workers_changed(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(n_workers)`` whenever a worker comes or goes."""


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
    env: dict[str, str] = field(factory=dict)
    dashboard: bool = False


@frozen(kw_only=True)
class ClusterRequest:
    """What a named cluster's daemon asks of a provider: workers it scales itself."""

    shape: Shape
    threads_per_worker: int
    name: str
    #: The cluster's own credentials (its scheduler and workers speak TLS with them).
    security: Any
    worker_class: str = "distributed.Nanny"
    worker_options: dict[str, Any] = field(factory=dict)
    scheduler_options: dict[str, Any] = field(factory=dict)
    python: str | None = None
    dashboard: bool = False


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
    """A kind of place workers run, built from a profile's options."""

    #: The kind, as registered: ``local``, ``ssh``.
    kind: str
    #: The profile's name, or the kind when no profile was used.
    name: str

    def capacity(self) -> Capacity:
        """The provider's capacity, read once and cached for its life."""

    def start_pool(self, request: PoolRequest) -> Workers:
        """Start an empty pool that adapts between the request's bounds."""

    async def start_cluster(self, request: ClusterRequest) -> Workers:
        """Start a named cluster's scheduler, in this process's event loop, without
        workers; the daemon scales it (``scale``, ``adapt``) and closes it."""

    def check(self) -> list[HostReport]:
        """Connect to every host and report what it offers."""

    def close(self) -> None:
        """Close what the provider holds (connections); nothing is left on any host."""
