"""The cluster base: the one dask cluster behind every provider of the workers form.

A provider of that form (:class:`~taskcloud.providers.protocol.Provider`) says what
one worker is (:meth:`~taskcloud.providers.protocol.Provider.worker`); everything else
a pool or a named cluster needs of its workers is written here, once:

* TLS: the scheduler and every worker speak it, with credentials of the cluster's own
  (made as it starts, removed once it closed) or a named cluster's;
* naming, placement (which host, from the capacity) and GPU ids: a worker of a GPU
  shape starts only with whole sets of ids, and one of a shape without GPUs sees none;
* quiet starts: a failed worker start is retried quietly, a run of them logged once;
* replacing one worker at once, killing them all, adaptive scaling within the
  capacity (:class:`CapacityAdaptive`), and a close that leaves nothing behind;
* what pools ask of the scheduler, over the wire wherever it runs (in this process, or
  in a process of its own): through the events and requests of
  :class:`~taskcloud.providers.events.SchedulerEvents`, registered as the cluster
  starts, and dask's own ``scheduler_info``; so does what a named cluster's daemon
  asks (when the scheduler went idle, the clients' requests it relays to the daemon).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable
from inspect import isawaitable
from typing import Any

import dask
from distributed import Nanny
from distributed import Scheduler
from distributed import SpecCluster
from distributed import Worker
from distributed.core import Status
from distributed.deploy.adaptive import Adaptive
from distributed.utils import import_term

from taskcloud import credentials
from taskcloud.capacity import Shape
from taskcloud.errors import WorkerStartError
from taskcloud.processes import kill
from taskcloud.providers import events
from taskcloud.providers import main_module_hidden
from taskcloud.providers.events import PoolWatch
from taskcloud.providers.protocol import THIS_HOST
from taskcloud.providers.protocol import ClusterRequest
from taskcloud.providers.protocol import PoolRequest
from taskcloud.providers.protocol import WorkerRequest
from taskcloud.providers.protocol import Workers
from taskcloud.providers.scheduler import SchedulerProcess
from taskcloud.units import format_bytes

__all__ = [
    "CapacityAdaptive",
    "PoolAdaptive",
    "PoolWatch",
    "ProviderCluster",
    "SchedulerOverTheWire",
    "adapt",
    "http_config",
    "quiet_logs",
    "scheduler_spec",
    "start_cluster",
    "start_pool",
]

logger = logging.getLogger("taskcloud")

#: How often a pool reconsiders its size.
ADAPT_INTERVAL = 0.2

#: A pool grows while its queue holds more than this much work per worker: a new
#: local worker starts in about a second, so a second of queued work pays for one.
TARGET_DURATION = 1.0

#: After this many failed worker starts in a row, a pool logs an error.
FAILED_STARTS = 3

#: How many workers that left a cluster it still names (for describe_worker).
GONE_KEPT = 1000

#: What the HTTP server of a scheduler or worker without a dashboard serves. dask
#: starts one in any case; its other pages (logs, call stacks) are any local user's.
HEALTH_ONLY = ["distributed.http.health"]


class SchedulerOverTheWire:
    """What a cluster answers of :class:`~taskcloud.providers.protocol.Workers` for
    pools and for a named cluster's daemon, wherever its scheduler runs: from dask's
    ``scheduler_info`` (kept current over the wire) and through
    :class:`~taskcloud.providers.events.SchedulerEvents`."""

    scheduler_info: dict[str, Any]
    scheduler_comm: Any
    sync: Any

    @property
    def n_workers(self) -> int:
        return len(self.scheduler_info.get("workers", {}))

    def watch(self, client: Any, stats: Any) -> PoolWatch:
        """Watch the workers through ``client``, from the scheduler's events."""
        return PoolWatch.attach(client, stats)

    def worker_name(self, address: str) -> Any:
        """The name of the worker at ``address``, None when it is gone."""
        info = self.scheduler_info.get("workers", {}).get(address)
        return None if info is None else info.get("name")

    def stop_adapting(self) -> None:
        """Stop adaptive scaling, before the cluster closes."""
        adaptive = getattr(self, "_adaptive", None)  # SpecCluster's own, None at first
        if adaptive is not None:
            adaptive.stop(reason="pool-closed")

    # -- what a named cluster's daemon asks ---------------------------------------------

    @property
    def dashboard_port(self) -> int | None:
        """The port of the scheduler's dashboard, None without one."""
        port = self.scheduler_info.get("services", {}).get("dashboard")
        return None if port is None else int(port)

    async def idle_since(self) -> float | None:
        """Since when (``time.time()``) nothing ran or waited; None while busy."""
        return await self.scheduler_comm.taskcloud_idle()

    async def serve(self, handlers: dict[str, Callable[..., Any]]) -> asyncio.Future[None]:
        """Answer clients' requests of these names with these coroutines, relayed by the
        scheduler, until it closes: then the future this returns is done."""
        return await events.serve(self.scheduler_comm, handlers)


def start_pool(provider: Any, request: PoolRequest) -> Workers:
    """Start an empty pool on ``provider`` that adapts between the request's bounds:
    on the cluster base for the workers form, by the provider for the clusters form.

    The scheduler runs in this process, or in a process of its own
    (:class:`~taskcloud.providers.scheduler.SchedulerProcess`) when the request says
    ``scheduler_process``.
    """
    if provider.form == "clusters":
        return provider.start_pool(request)
    # A worker that dies fails its call at once; the pool decides about retries.
    settings = {"distributed.scheduler.allowed-failures": 0, **http_config(request.dashboard)}
    with dask.config.set(settings), main_module_hidden():
        cluster = ProviderCluster(
            provider,
            shape=request.shape,
            threads=request.threads_per_worker,
            capacity=provider.capacity(),
            name=request.name,
            label=request.label,
            scheduler=scheduler_spec(
                dashboard=request.dashboard,
                options=provider.scheduler_options,
                cls=SchedulerProcess if request.scheduler_process else Scheduler,
            ),
            python=request.python,
            environ=dict(request.environ),
        )
    try:
        cluster.sync(events.install, cluster.scheduler_comm)
        cluster.scale_between(request.minimum, request.maximum, request.keepalive, PoolAdaptive)
    except BaseException:
        cluster.close()
        raise
    return cluster


async def start_cluster(provider: Any, request: ClusterRequest) -> Workers:
    """Start a named cluster's scheduler on ``provider``, in this event loop, without
    workers; its daemon scales it. The scheduler runs in this process, or in a process
    of its own when the request says ``scheduler_process``."""
    if provider.form == "clusters":
        return await provider.start_cluster(request)
    with main_module_hidden():
        cluster = ProviderCluster(
            provider,
            shape=request.shape,
            threads=request.threads_per_worker,
            capacity=provider.capacity(),
            name=request.name,
            scheduler=scheduler_spec(
                dashboard=request.dashboard,
                options={**provider.scheduler_options, **request.scheduler_options},
                cls=SchedulerProcess if request.scheduler_process else Scheduler,
            ),
            security=request.security,
            worker_class=request.worker_class,
            worker_options=request.worker_options,
            start_errors=True,
            asynchronous=True,
            silence_logs=logging.ERROR,
        )
    await cluster
    await events.install(cluster.scheduler_comm)
    return cluster


class ProviderCluster(SchedulerOverTheWire, SpecCluster):
    """Workers of one shape from ``provider``, a pool's or a named cluster's.

    ``capacity`` is what the workers grow within (None: a fixed number of workers
    that see what this process sees, the dask backend's). The scheduler runs in this
    process, or in a process of its own when ``scheduler`` says so (see
    :func:`scheduler_spec`).
    """

    def __init__(
        self,
        provider: Any,
        *,
        shape: Shape,
        threads: int,
        capacity: Any,
        name: str,
        scheduler: dict[str, Any],
        label: str = "",
        security: Any = None,
        python: str | None = None,
        environ: dict[str, str] | None = None,
        worker_class: str = "",
        worker_options: dict[str, Any] | None = None,
        n_workers: int = 0,
        start_errors: bool = False,
        asynchronous: bool = False,
        silence_logs: int | bool | None = None,
    ) -> None:
        self.provider = provider
        self._capacity = capacity
        self._shape = shape
        self._threads = threads
        self._python = python
        self._environ = dict(environ or {})
        self._worker_class = worker_class
        self._worker_options = dict(worker_options or {})
        #: What the cluster is called in messages; a pool sets its own label.
        self.label = label or name
        #: Whether a worker that fails to start fails the cluster's start too (a named
        #: cluster's first workers), rather than being retried quietly (a pool's).
        self._start_errors = start_errors
        self._failed_starts = 0
        self._failure_callbacks: list[Callable[[BaseException], None]] = []
        #: The tasks that follow each worker, by the worker's id.
        self._followed: dict[int, asyncio.Future[None]] = {}
        self._numbers = itertools.count()
        #: The host each worker (by name) was placed on.
        self._host_of: dict[Any, str] = {}
        #: What each worker (by name) says of itself (its ``describe()``: its batch job).
        self._about: dict[Any, str] = {}
        #: The names of the workers that connected, and the names of those that left.
        self._connected: set[Any] = set()
        self._gone: dict[str, Any] = {}
        self._own_process = _own_process(worker_class)
        self.credentials = None
        if security is None:
            security, self.credentials = credentials.ephemeral(
                name, under=provider.shared_directory
            )
        self.security = security
        scheduler = {
            **scheduler,
            "options": {**scheduler.get("options", {}), "security": security, "protocol": "tls"},
        }
        # dask reads a template's threads and memory (``scale(memory=...)``); each
        # worker's own spec comes from the provider.
        template = {"cls": Nanny, "options": {"nthreads": threads, "memory_limit": shape.memory}}
        try:
            super().__init__(
                scheduler=scheduler,
                worker=template,
                security=security,
                name=name,
                asynchronous=asynchronous,
                silence_logs=quiet_logs() if silence_logs is None else silence_logs,
            )
            if n_workers:  # a synchronous cluster's first workers (the dask backend's)
                self.scale(n_workers)
                self.sync(self._correct_state)
        except BaseException:
            if self.credentials is not None:
                credentials.discard(self.credentials)
            raise

    @property
    def capacity(self) -> Any:
        """The capacity this cluster grows within."""
        assert self._capacity is not None, "a cluster of fixed workers has no capacity"
        return self._capacity

    # -- one worker ---------------------------------------------------------------------

    def new_worker_spec(self) -> dict[Any, Any]:
        """The next worker, from the provider: on the host the capacity chose, with its
        GPU ids in ``CUDA_VISIBLE_DEVICES`` (none for a shape without GPUs). Workers of
        a cluster without a capacity (the dask backend's) and workers in this process
        see what this process sees."""
        # A worker reports its name to the scheduler as an int: a nanny's as given, and
        # one started from the command line converts its ``--name``. The spec uses the
        # same, or adaptive scaling never finds it to retire.
        name = next(self._numbers)
        while name in self.worker_spec:
            name = next(self._numbers)
        environ = dict(self._environ)
        host = THIS_HOST
        if self._capacity is not None:
            placed = self.host_counts()
            host = self._capacity.place(self, self._shape, placed)
            if self._own_process:
                environ["CUDA_VISIBLE_DEVICES"] = self._gpu_ids(str(name), host)
        request = WorkerRequest(
            name=name,
            host=host,
            shape=self._shape,
            threads=self._threads,
            security=self.security,
            environ=environ,
            python=self._python,
            worker_class=self._worker_class,
            worker_options=dict(self._worker_options),
        )
        spec = self.provider.worker(request)
        self._host_of[name] = host
        return {name: spec}

    def _gpu_ids(self, name: str, host: str) -> str:
        if not self._shape.gpu:
            # No GPU asked for: none seen, so that a cpu-only call cannot fill the
            # memory of a GPU another worker was given. An explicit value stays.
            return self._environ.get("CUDA_VISIBLE_DEVICES", "")
        gpus = self._capacity.assign_gpus(self, name, self._shape.gpu, host)
        if len(gpus) < self._shape.gpu:
            # scale() reserves the ids first; never start a worker short of them.
            raise RuntimeError(
                f"{self.label}: {len(gpus)} free GPU ids for a new worker of "
                f"gpu={self._shape.gpu}; it does not start"
            )
        return ",".join(gpus)

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> Any:
        """Hold ``n`` workers; of a GPU shape, only as many new ones as there are whole
        sets of free GPU ids for (a grant and the ids agree, but another holder may
        have taken ids since), so that no worker starts short of its GPUs."""
        if not (self._shape.gpu and self._capacity is not None and self._own_process):
            return super().scale(n, memory, cores)
        new = max(0, n - len(self.worker_spec))
        with self._capacity.gpus_for(self, new, self._shape.gpu) as fit:
            if memory is None and cores is None:
                n = min(n, len(self.worker_spec) + fit)
            return super().scale(n, memory, cores)

    # -- quiet starts -------------------------------------------------------------------

    def _correct_state(self) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._correct_state_quietly())

    async def _correct_state_quietly(self) -> None:
        try:
            await super()._correct_state()
        except Exception as exc:
            if self._start_errors:
                raise
            self._failed_starts += 1
            if self._failed_starts < FAILED_STARTS or self.n_workers:
                logger.debug("%s: a worker start failed: %r", self.label, exc)
                return
            error = WorkerStartError(
                self.label, self._failed_starts, f"{type(exc).__name__}: {exc}"
            )
            if self._failed_starts == FAILED_STARTS:
                logger.error("%s", error)
            # The callbacks cancel dask futures, which blocks: they run in a thread.
            loop = asyncio.get_running_loop()
            for callback in list(self._failure_callbacks):
                loop.run_in_executor(None, callback, error)
        else:
            self._failed_starts = 0
        finally:
            self._follow_workers()

    def _follow_workers(self) -> None:
        """Follow each started worker: one that ends by itself (its process gone for
        good, its host's connection dropped) is forgotten, and scaling replaces it."""
        for name, worker in list(self.workers.items()):
            describe = getattr(worker, "describe", None)
            if callable(describe) and worker.status.name == "running":
                self._about[name] = describe()
            if id(worker) not in self._followed:
                self._followed[id(worker)] = asyncio.ensure_future(
                    self._forget_when_finished(name, worker)
                )

    async def _forget_when_finished(self, name: Any, worker: Any) -> None:
        try:
            await worker.finished()
        finally:
            self._followed.pop(id(worker), None)
        if self.workers.get(name) is worker and self.status.name == "running":
            logger.debug("%s: worker %s ended by itself", self.label, name)
            self.workers.pop(name, None)
            self.worker_spec.pop(name, None)
            if name not in self._connected:
                self._about.pop(name, None)
                error = getattr(worker, "error", None)
                if error is not None:
                    self._start_failed(error)
            await self._correct_state()

    def _start_failed(self, error: BaseException) -> None:
        """A worker ended before it connected and said why: the pool's waiting calls
        fail with ``error`` at once, unless a worker is there to run them."""
        if self.n_workers:
            logger.warning("%s: %s", self.label, error)
            return
        # The callbacks cancel dask futures, which blocks: they run in a thread.
        loop = asyncio.get_running_loop()
        for callback in list(self._failure_callbacks):
            loop.run_in_executor(None, callback, error)

    def _update_worker_status(self, op: str, msg: Any) -> None:
        # Which workers connected, and the names of those gone, for describe_worker and
        # for a worker that ends by itself (a start that failed, or not).
        if op == "add":
            self._connected.update(info.get("name") for info in msg.get("workers", {}).values())
        elif op == "remove":
            info = self.scheduler_info.get("workers", {}).get(msg)
            if info is not None:
                self._gone[msg] = info.get("name")
                while len(self._gone) > GONE_KEPT:
                    name = self._gone.pop(next(iter(self._gone)))
                    self._about.pop(name, None)
                    self._connected.discard(name)
        super()._update_worker_status(op, msg)

    # -- what pools ask (protocol.Workers) ----------------------------------------------

    @property
    def where(self) -> str:
        """Where the workers run, as the provider says it from their hosts (all the
        capacity's before any started) and the started worker interfaces."""
        hosts = sorted({self._host_of[n] for n in self.worker_spec if n in self._host_of})
        if not hosts and self._capacity is not None:
            hosts = [host.name for host in self._capacity.hosts]
        return str(self.provider.where(hosts, list(self.workers.values())))

    def host_counts(self) -> collections.Counter[str]:
        """How many workers this cluster has (or starts) on each host."""
        return collections.Counter(self._host_of.get(name, "") for name in self.worker_spec)

    def describe_worker(self, address: str) -> str:
        name = self.worker_name(address)
        if name is None:
            name = self._gone.get(address)
        if name in self._about:
            return f"{address}, {self._about[name]}"
        host = None if name is None else self._host_of.get(name)
        return address if host in (None, THIS_HOST) else f"{address} on {host}"

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(error)`` when :data:`FAILED_STARTS` worker starts in a row
        failed while no worker runs: the pool's waiting calls fail with it."""
        self._failure_callbacks.append(callback)

    def replace_worker(self, address: str) -> None:
        """Let the worker at ``address`` go at once and kill it; another takes its
        place. What else it ran or held runs again elsewhere."""
        self.sync(self._replace, address)

    async def _replace(self, address: str) -> None:
        # The scheduler lets it go first, so that its other calls run again elsewhere
        # without counting as failures; then its process is killed.
        name = await self.scheduler_comm.taskcloud_replace(address=address)
        worker = None if name is None else self.workers.get(name)
        if worker is not None:
            kill_worker(worker)

    def kill(self) -> None:
        """Kill every worker at once, busy or not; none starts again."""
        self.sync(self._kill)

    async def _kill(self) -> None:
        for worker in list(self.workers.values()):
            kill_worker(worker, for_good=True)

    def scale_between(
        self, minimum: int, maximum: int, keepalive: float, adaptive: type[Adaptive] | None = None
    ) -> Adaptive:
        """Scale from the queue between ``minimum`` and ``maximum`` workers, within the
        capacity; an idle worker goes after ``keepalive`` seconds."""
        return adapt(self, self.capacity, self._shape, minimum, maximum, keepalive, adaptive)

    async def serve(self, handlers: dict[str, Callable[..., Any]]) -> asyncio.Future[None]:
        """As :meth:`SchedulerOverTheWire.serve`; once the scheduler closed by itself,
        the future is done when it has finished (its process, if it has one, exited)."""
        relayed = await super().serve(handlers)

        async def until_finished() -> None:
            await relayed
            await self.scheduler.finished()

        return asyncio.ensure_future(until_finished())

    def close(self, timeout: float | None = None) -> Any:
        self.stop_adapting()
        if self._capacity is not None:
            self._capacity.release(self)
        if self.scheduler.status == Status.closed:
            # It closed by itself: there is no one to retire workers or to stop.
            self.shutdown_scheduler = False
        closed = super().close(timeout)
        if self.credentials is not None and not isawaitable(closed):
            # Closed by now; else the exit of this process removes them.
            credentials.discard(self.credentials)
        return closed


def kill_worker(worker: Any, for_good: bool = False) -> None:
    """End a cluster's worker process at once: a nanny's (dask's own included) by its
    pid, after telling the nanny not to start another when ``for_good``; any other
    worker class through its ``kill_worker``."""
    if isinstance(worker, Nanny):
        if for_good:
            worker.close_gracefully(reason="taskcloud-killed")
        kill(worker.pid)
    else:
        worker.kill_worker(for_good=for_good)


def _own_process(worker_class: str) -> bool:
    """Whether workers of ``worker_class`` run in a process of their own ("" or a
    nanny, the default), with its environment, rather than in this process."""
    if not worker_class:
        return True
    cls = import_term(worker_class)
    return not (isinstance(cls, type) and issubclass(cls, Worker) and not issubclass(cls, Nanny))


class CapacityAdaptive(Adaptive):
    """Adaptive scaling that asks the capacity before it grows.

    * A cluster that may not grow says so once, in a warning.
    * While another pool or cluster on the hosts waits for room, idle workers leave
      at once rather than after their keepalive; those that still hold a result
      leave as soon as it has been fetched.
    """

    def __init__(self, *args: Any, capacity: Any, shape: Shape, **kwargs: Any) -> None:
        self._capacity = capacity
        self._shape = shape
        self._said_waiting = False
        super().__init__(*args, **kwargs)

    async def safe_target(self) -> int:
        wanted = await super().safe_target()
        granted = self._capacity.grant(self.cluster, self._shape, wanted, len(self.plan))
        if granted < wanted and not self._said_waiting:
            self._said_waiting = True
            logger.warning(
                "%s waits for capacity: %d more workers (cpu=%d, memory=%s, gpu=%d each) "
                "do not fit beside the other pools and clusters on this host",
                getattr(self.cluster, "label", None) or self.cluster.name,
                wanted - granted,
                self._shape.cpu,
                format_bytes(self._shape.memory),
                self._shape.gpu,
            )
        return int(granted)

    async def recommendations(self, target: int) -> dict[str, Any]:
        if target < len(self.plan) and self._capacity.others_waiting(self.cluster):
            idle = await self._free_to_leave(target)
            if idle:
                self.close_counts.clear()
                return {"status": "down", "workers": idle}
        return dict(await super().recommendations(target))

    async def _free_to_leave(self, target: int) -> list[Any]:
        """The names of idle workers that may leave now: those that hold no data.

        A worker that holds a finished call's result until its caller has fetched it
        cannot retire: the scheduler calls its retirement off and sets it running
        again, while dask's scaling closes it anyway. The result is lost (the call
        runs again), and the worker, told that it runs while it closes, closes twice
        and logs an error from its process into the terminal. Such a worker leaves a
        moment later, once the caller has released the result.
        """
        idle = await self.workers_to_close(target=target)
        activity = await self.scheduler.taskcloud_activity()
        holding = set(activity["holding"])
        return [name for name in idle if name not in holding]


class PoolAdaptive(CapacityAdaptive):
    """A pool's scaling: when nothing runs or waits, every worker may go.

    dask keeps workers while they hold data, and a pool's results leave its workers
    as soon as they are fetched; but the release of the last ones can lag the
    scheduler's decision by a few seconds, which would keep a worker beyond its
    keepalive. An idle pool therefore aims for its minimum.
    """

    async def target(self) -> int:
        wanted = int(await super().target())
        activity = await self.scheduler.taskcloud_activity()
        return wanted if activity["busy"] else min(wanted, self.minimum)


def adapt(
    cluster: Any,
    capacity: Any,
    shape: Shape,
    minimum: int,
    maximum: int,
    keepalive: float,
    adaptive: type[Adaptive] | None = None,
) -> Adaptive:
    """Scale ``cluster`` from its queue, within ``capacity``; an idle worker goes after
    ``keepalive`` seconds. Returns the :class:`Adaptive` that does it."""
    return cluster.adapt(
        Adaptive=adaptive or CapacityAdaptive,
        minimum=minimum,
        maximum=maximum,
        interval=ADAPT_INTERVAL,
        target_duration=TARGET_DURATION,
        wait_count=max(1, round(keepalive / ADAPT_INTERVAL)),
        capacity=capacity,
        shape=shape,
    )


def scheduler_spec(
    *,
    dashboard: bool = False,
    options: dict[str, Any] | None = None,
    cls: Any = Scheduler,
) -> dict[str, Any]:
    """A scheduler on 127.0.0.1 (the cluster adds TLS); ``cls`` may run it elsewhere."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        # Without a dashboard the scheduler still serves /health; keep it on loopback.
        "dashboard": dashboard,
        "dashboard_address": "127.0.0.1:0",
    }
    settings.update({k: v for k, v in (options or {}).items() if k != "security"})
    return {"cls": cls, "options": settings}


def http_config(dashboard: bool) -> dict[str, Any]:
    """The dask config under which a scheduler starts with or without its pages.

    Without a dashboard its HTTP server serves :data:`HEALTH_ONLY`; with one, dask's
    pages as configured, which every local user can read.
    """
    return {} if dashboard else {"distributed.scheduler.http.routes": list(HEALTH_ONLY)}


def quiet_logs() -> int | bool:
    """The level distributed's logs need to reach the terminal while a pool runs.

    Only what breaks the run, unless dask's ``logging`` configuration names levels
    (``DASK_LOGGING__DISTRIBUTED=info``, say): then those hold, untouched.
    """
    return False if dask.config.get("logging", None) else logging.CRITICAL
