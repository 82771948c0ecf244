"""The local provider: worker processes of one shape on this host.

A pool is a dask ``SpecCluster`` whose scheduler runs in this process and whose
workers are ``Nanny``-supervised processes listening on 127.0.0.1. The nanny enforces
the memory limit and replaces a worker that dies; an :class:`Adaptive` subclass scales
the pool from its queue, within what :class:`~taskcloud.capacity.HostCapacity` grants.

Every such cluster is a :class:`SecuredCluster`: its scheduler, nannies and workers
speak TLS with credentials made for it alone, so no other user of the host can
connect. Without a dashboard, their HTTP servers answer ``/health`` alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from inspect import isawaitable
from typing import Any

import dask
from distributed import Nanny
from distributed import Scheduler
from distributed import SpecCluster
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.spec import ProcessInterface
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import import_term

from taskcloud import credentials
from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.errors import InvalidOptionError
from taskcloud.processes import end
from taskcloud.processes import kill
from taskcloud.providers import CALL_STARTED
from taskcloud.providers import main_module_hidden
from taskcloud.providers.nanny import WORKER_EXIT
from taskcloud.providers.nanny import PoolNanny
from taskcloud.providers.owned import PRELOAD
from taskcloud.providers.protocol import ClusterRequest
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import PoolRequest
from taskcloud.specs import format_bytes

__all__ = [
    "CapacityAdaptive",
    "EnvironmentWorker",
    "InProcessScheduler",
    "LocalPoolCluster",
    "LocalProvider",
    "PoolAdaptive",
    "PoolNanny",
    "PoolWatch",
    "QuietStarts",
    "SchedulerProcess",
    "SecuredCluster",
    "adapt",
    "build",
    "http_config",
    "quiet_logs",
    "replace_worker",
    "scheduler_spec",
    "start",
    "worker_running",
    "worker_spec",
]

logger = logging.getLogger("taskcloud")

#: How often a pool reconsiders its size.
ADAPT_INTERVAL = 0.2

#: A pool grows while its queue holds more than this much work per worker: a new
#: local worker starts in about a second, so a second of queued work pays for one.
TARGET_DURATION = 1.0

#: After this many failed worker starts in a row, a pool logs an error.
FAILED_STARTS = 3

#: What the HTTP server of a scheduler or worker without a dashboard serves. dask
#: starts one in any case; its other pages (logs, call stacks) are any local user's.
HEALTH_ONLY = ["distributed.http.health"]


class PoolWatch(SchedulerPlugin):
    """Counts a pool's workers, notes memory kills and when calls start running.

    It runs in the scheduler's event loop; the pool reads it from other threads.
    """

    name = "taskcloud-watch"

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.memory_kills: dict[str, int] = {}
        self.exit_codes: dict[str, int] = {}
        self._latest_of_nanny: dict[str, str] = {}
        self.changed = threading.Condition()
        self._on_start: dict[str, Callable[[str], None]] = {}
        self._on_executing: dict[str, Callable[[str, float], None]] = {}

    def on_start(self, key: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when the task ``key`` goes to a worker."""
        self._on_start[key] = callback

    def on_executing(self, key: str, callback: Callable[[str, float], None]) -> None:
        """Call ``callback(key, since)`` when a worker's thread starts the timed ``key``."""
        self._on_executing[key] = callback

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.stats.started += 1
        self.stats.peak = max(self.stats.peak, len(scheduler.workers))
        state = scheduler.workers.get(worker)
        if state is not None and state.nanny:
            self._latest_of_nanny[state.nanny] = worker

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == CALL_STARTED and isinstance(msg, dict):
            callback = self._on_executing.pop(str(msg.get("key")), None)
            if callback is not None:
                callback(str(msg["key"]), float(msg["since"]))
            return
        if topic not in ("worker-restart-memory", WORKER_EXIT) or not isinstance(msg, dict):
            return
        with self.changed:
            if topic == WORKER_EXIT:
                # A worker that died while it started is known here, not to its nanny.
                worker = msg.get("worker") or self._latest_of_nanny.get(msg.get("nanny", ""), "")
                self.exit_codes[worker] = int(msg.get("exitcode", 0))
            else:
                self.memory_kills[msg.get("worker", "")] = int(msg.get("rss", 0))
            self.changed.notify_all()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            callback = self._on_start.pop(str(key), None)
            if callback is not None:
                callback(str(key))
        elif finish in ("memory", "erred", "released", "forgotten"):
            self._on_start.pop(str(key), None)
            if finish != "released":  # released: it may go to another worker
                self._on_executing.pop(str(key), None)

    def memory_kill(self, worker: str, wait: float) -> int | None:
        """The RSS the nanny saw when it killed ``worker`` for memory, if it did.

        The nanny's events and the worker's death reach the scheduler separately, so
        this waits for the nanny to say how the worker ended: at most ``wait``
        seconds, and only until the exit of a worker it did not terminate.
        """
        deadline = time.monotonic() + wait
        with self.changed:
            while worker not in self.memory_kills and not self._exited_unterminated(worker):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return self.memory_kills.get(worker)

    def _exited_unterminated(self, worker: str) -> bool:
        # A nanny ends a worker over its memory limit with SIGTERM, after its event.
        code = self.exit_codes.get(worker)
        return code is not None and code != -signal.SIGTERM


async def worker_running(scheduler: Any, key: str) -> str | None:
    """The address of the worker that runs the task ``key``, if one does."""
    state = scheduler.tasks.get(key)
    where = getattr(state, "processing_on", None)
    return getattr(where, "address", None)


async def replace_worker(scheduler: Any, address: str) -> None:
    """Let the worker at ``address`` go at once and kill its process; its nanny
    starts a new one. What else it ran or held runs again elsewhere."""
    state = scheduler.workers.get(address)
    if state is None:
        return
    pid = state.pid
    await scheduler.remove_worker(
        address, stimulus_id=f"taskcloud-replace-{time.time()}", expected=True, close=False
    )
    kill(pid)


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

    async def close(self) -> None:
        if self.process is not None:
            await end(self.process, grace=10)
        await super().close()


class SchedulerProcess(ProcessInterface):
    """A scheduler in a process of its own, started the way nannies start workers.

    A scheduler in the caller's process shares its interpreter lock: every message
    between scheduler, workers and client runs between the caller's own Python. In
    its own process it runs beside it. The process is a dask ``AsyncProcess``, so it
    forks from the fork server inside :func:`~taskcloud.providers.forking_workers`
    and exits should this process die; it takes this process's dask config as it
    is when the scheduler starts, as a nanny does for its worker.
    """

    def __init__(self, *, timeout: float = 60.0, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.timeout = timeout
        self.process: Any = None

    async def start(self) -> None:
        from distributed.process import AsyncProcess
        from distributed.utils import get_mp_context
        from tornado.ioloop import IOLoop

        receiver, sender = get_mp_context().Pipe(duplex=False)
        self.process = AsyncProcess(
            loop=IOLoop.current(),
            target=_serve_scheduler,
            name="taskcloud scheduler",
            args=(sender, self.options, copy.deepcopy(dask.config.config)),
        )
        await self.process.start()
        sender.close()
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(None, _receive, receiver, self.timeout)
        finally:
            receiver.close()
        if "address" not in reply:
            await self.close()
            raise RuntimeError(f"the scheduler process did not start: {reply.get('error')}")
        self.address = reply["address"]
        await super().start()

    async def close(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            await process.join(10)
            if process.is_alive():
                await process.terminate()
                await process.join(5)
        await super().close()


def _serve_scheduler(sender: Any, options: dict[str, Any], config: dict[str, Any]) -> None:
    """Run a scheduler until it is told to stop; its address goes to ``sender``."""
    # Ctrl-C in a terminal reaches the whole process group. The owner handles it and
    # closes the cluster through this scheduler, which must still be there to do so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dask.config.set(config)
    logging.getLogger("distributed").setLevel(logging.WARNING)

    async def serve() -> None:
        async with Scheduler(**options) as scheduler:
            sender.send({"address": scheduler.address})
            sender.close()
            await scheduler.finished()

    try:
        asyncio.run(serve())
    except BaseException as exc:
        # The starting process raises this as its own error.
        with contextlib.suppress(OSError):
            sender.send({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None


def _receive(receiver: Any, timeout: float) -> dict[str, Any]:
    try:
        if receiver.poll(timeout):
            return dict(receiver.recv())
    except EOFError:
        return {"error": "it exited before it answered"}
    return {"error": f"no answer in {timeout:g} s"}


async def kill_workers(cluster: SpecCluster) -> None:
    """SIGKILL a cluster's worker processes at once; their nannies do not restart them.

    Closing a nanny asks its worker to stop and waits four seconds for a busy one;
    after Ctrl-C nothing the workers hold is wanted.
    """
    for nanny in list(cluster.workers.values()):
        pid = getattr(nanny, "pid", None)
        if hasattr(nanny, "close_gracefully"):
            nanny.close_gracefully(reason="taskcloud-killed")
        kill(pid)


class SecuredCluster(SpecCluster):
    """A ``SpecCluster`` whose scheduler and workers speak TLS with credentials of its own.

    The credentials are :func:`~taskcloud.credentials.ephemeral`: made as the cluster
    starts, put into its scheduler's and workers' specs, and removed once it has closed.
    Only this process and the processes it starts can read them.
    """

    def __init__(
        self, *, scheduler: dict[str, Any], worker: dict[str, Any], name: str, **kwargs: Any
    ) -> None:
        # A named cluster brings its own credentials; a pool gets credentials of its own.
        security = kwargs.pop("security", None)
        self.credentials = None
        if security is None:
            security, self.credentials = credentials.ephemeral(name)
        given = kwargs.pop("workers", None) or {}
        workers = {key: _secured(spec, security) for key, spec in given.items()}
        try:
            super().__init__(
                scheduler=_secured(scheduler, security, protocol="tls"),
                worker=_secured(worker, security),
                workers=workers,
                security=security,
                name=name,
                **kwargs,
            )
        except BaseException:
            if self.credentials is not None:
                credentials.discard(self.credentials)
            raise

    def close(self, timeout: float | None = None) -> Any:
        closed = super().close(timeout)
        if self.credentials is not None and not isawaitable(closed):
            # Closed by now; else the exit of this process removes them.
            credentials.discard(self.credentials)
        return closed


def _secured(spec: dict[str, Any], security: Any, **options: Any) -> dict[str, Any]:
    return {**spec, "options": {**spec.get("options", {}), "security": security, **options}}


class InProcessScheduler:
    """What a provider's workers answer when their scheduler runs in this process.

    The local and SSH providers' clusters mix this in: the ``Workers`` methods of the
    protocol that read the scheduler (pools') and those a named cluster's daemon asks.
    Nothing outside the providers reads a scheduler in-process.
    """

    scheduler: Any

    @property
    def n_workers(self) -> int:
        return len(self.scheduler.workers)

    def watch(self, stats: Any) -> PoolWatch:
        """Watch the workers from the scheduler in this process."""
        watch = PoolWatch(stats)
        self.scheduler.add_plugin(watch, name=watch.name)
        return watch

    def running_on(self, key: str) -> str | None:
        return self.sync(worker_running, self.scheduler, key)  # type: ignore[attr-defined]

    def stop_adapting(self) -> None:
        """Stop adaptive scaling, before the cluster closes."""
        adaptive = getattr(self, "_adaptive", None)
        if adaptive is not None:
            adaptive.stop(reason="pool-closed")

    # -- what a named cluster's daemon asks -----------------------------------------------

    @property
    def scheduler_address(self) -> str:
        return str(self.scheduler.address)

    @property
    def dashboard_port(self) -> int | None:
        """The port of the scheduler's dashboard, None without one."""
        dashboard = self.scheduler.services.get("dashboard")
        return None if dashboard is None else int(dashboard.port)

    @property
    def idle_since(self) -> float | None:
        """Since when (``time.time()``) nothing ran or waited; None while busy."""
        return self.scheduler.idle_since

    @property
    def scheduler_closed(self) -> bool:
        return self.scheduler.status.name in ("closing", "closed")

    def serve(self, handlers: dict[str, Callable[..., Any]]) -> None:
        """Answer clients' requests of these names with these coroutines."""
        self.scheduler.handlers.update(handlers)

    def on_workers_changed(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(n_workers)`` whenever a worker comes or goes."""
        self.scheduler.add_plugin(_WorkersChanged(callback))


class _WorkersChanged(SchedulerPlugin):
    name = "taskcloud-workers-changed"

    def __init__(self, callback: Callable[[int], None]) -> None:
        self.callback = callback

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.callback(len(scheduler.workers))

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.callback(len(scheduler.workers))


class QuietStarts:
    """A cluster whose failed worker starts its adaptive scaling retries quietly.

    dask logs a worker that failed to start as an error from tornado's event loop, in
    the user's terminal; one failure is a worker that died as it started, a run of
    :data:`FAILED_STARTS` is news and logged once. With ``_start_errors`` (a named
    cluster's first workers) the failure fails the start instead.
    """

    name: str
    label: str
    _start_errors = False
    _failed_starts = 0

    def _correct_state(self) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._correct_state_quietly())

    async def _correct_state_quietly(self) -> None:
        try:
            await super()._correct_state()  # type: ignore[misc]
        except Exception as exc:
            if self._start_errors:
                raise
            self._failed_starts += 1
            level = logging.ERROR if self._failed_starts == FAILED_STARTS else logging.DEBUG
            logger.log(
                level,
                "%s: %d worker starts in a row failed, the last with %s: %s",
                self.label or self.name,
                self._failed_starts,
                type(exc).__name__,
                exc,
            )
        else:
            self._failed_starts = 0


class LocalPoolCluster(QuietStarts, InProcessScheduler, SecuredCluster):
    """Workers of one shape, a pool's or a named cluster's; GPU workers each get their
    own ``CUDA_VISIBLE_DEVICES``."""

    def __init__(
        self,
        *,
        capacity: HostCapacity | None,
        shape: Shape,
        start_errors: bool = False,
        **kwargs: Any,
    ) -> None:
        self._capacity = capacity
        self._shape = shape
        self._failed_starts = 0
        #: Whether a worker that fails to start fails the cluster's start too (a named
        #: cluster's first workers), rather than being retried quietly (a pool's).
        self._start_errors = start_errors
        self._numbers = itertools.count()
        #: What the cluster is called in messages; a pool sets its own label.
        self.label = str(kwargs.get("name") or "")
        super().__init__(**kwargs)

    @property
    def capacity(self) -> HostCapacity:
        """The host's capacity this cluster grows within."""
        assert self._capacity is not None, "a cluster of fixed workers has no capacity"
        return self._capacity

    # -- what a provider's workers answer (protocol.Workers) ------------------------------

    @property
    def where(self) -> str:
        return "this host"

    def replace_worker(self, address: str) -> None:
        self.sync(replace_worker, self.scheduler, address)

    def kill(self) -> None:
        self.sync(kill_workers, self)

    def scale_between(
        self, minimum: int, maximum: int, keepalive: float, adaptive: Any = None
    ) -> Adaptive:
        """Scale from the queue between ``minimum`` and ``maximum`` workers, within the
        capacity; an idle worker goes after ``keepalive`` seconds."""
        return adapt(
            self,
            self.capacity,
            self._shape,
            minimum,
            maximum,
            keepalive,
            adaptive=adaptive or CapacityAdaptive,
        )

    def close(self, timeout: float | None = None) -> Any:
        self.stop_adapting()
        if self._capacity is not None:
            self._capacity.release(self)
        return super().close(timeout)

    def _named_spec(self) -> dict[int, Any]:
        # A worker reports its name to the scheduler as an int: a nanny's as given, and
        # one started from the command line (a software environment's) converts its
        # ``--name``. The spec must use the same, or adaptive scaling never finds it to
        # retire. (dask's own naming hook, ``_new_worker_name``, is private.)
        name = next(self._numbers)
        while name in self.worker_spec:
            name = next(self._numbers)
        return {name: self.new_spec}

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> Any:
        """Hold ``n`` workers; of a GPU shape, only as many new ones as there are whole
        sets of free GPU ids for (a grant and the ids agree, but another holder may
        have taken ids since), so that no worker starts short of its GPUs."""
        if not self._gives_gpu_ids():
            return super().scale(n, memory, cores)
        new = max(0, n - len(self.worker_spec))
        with self.capacity.gpus_for(self, new, self._shape.gpu) as fit:
            if memory is None and cores is None:
                n = min(n, len(self.worker_spec) + fit)
            return super().scale(n, memory, cores)

    def _gives_gpu_ids(self) -> bool:
        own = _own_process(self.new_spec["cls"])
        return bool(self._shape.gpu and self._capacity is not None and own)

    def new_worker_spec(self) -> dict[int, Any]:
        """The next worker. Its own process sees only its GPU ids in
        ``CUDA_VISIBLE_DEVICES``: none for a shape without GPUs. Workers of a cluster
        without a capacity (the dask backend's) and workers in this process see what
        this process sees."""
        spec = self._named_spec()
        if self._capacity is None:
            return spec
        for name, worker in spec.items():
            if not _own_process(worker["cls"]):
                continue  # a worker in this process sees what this process sees
            worker = copy.deepcopy(worker)
            env = worker["options"].setdefault("env", {})
            if self._shape.gpu:
                gpus = self._capacity.assign_gpus(self, str(name), self._shape.gpu)
                if len(gpus) < self._shape.gpu:
                    # scale() reserves the ids first; never start a worker short of them.
                    raise RuntimeError(
                        f"{self.label or self.name}: {len(gpus)} free GPU ids for a new "
                        f"worker of gpu={self._shape.gpu}; it does not start"
                    )
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            else:
                # No GPU asked for: none seen, so that a cpu-only call cannot fill the
                # memory of a GPU another worker was given. An explicit value stays.
                env.setdefault("CUDA_VISIBLE_DEVICES", "")
            spec[name] = worker
        return spec


def _own_process(cls: Any) -> bool:
    """Whether workers of ``cls`` run in a process of their own, with its environment."""
    cls = import_term(cls) if isinstance(cls, str) else cls
    return isinstance(cls, type) and issubclass(cls, Nanny | EnvironmentWorker)


class CapacityAdaptive(Adaptive):
    """Adaptive scaling that asks the host's capacity before it grows.

    * A cluster that may not grow says so once, in a warning.
    * While another pool or cluster on the host waits for room, idle workers leave
      at once rather than after their keepalive; those that still hold a result
      leave as soon as it has been fetched.
    """

    def __init__(self, *args: Any, capacity: HostCapacity, shape: Shape, **kwargs: Any) -> None:
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
        return granted

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
        scheduler = self.cluster.scheduler  # type: ignore[attr-defined]  # in-process
        holding = {state.name for state in scheduler.workers.values() if state.has_what}
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
        scheduler = self.cluster.scheduler  # type: ignore[attr-defined]  # in-process
        busy = (
            scheduler.queued
            or scheduler.unrunnable
            or any(worker.processing for worker in scheduler.workers.values())
        )
        return wanted if busy else min(wanted, self.minimum)


def scheduler_spec(
    *,
    dashboard: bool = False,
    security: Any = None,
    options: dict[str, Any] | None = None,
    own_process: bool = False,
) -> dict[str, Any]:
    """A scheduler on 127.0.0.1; TLS when ``security`` is given.

    With ``own_process`` it runs in a :class:`SchedulerProcess` rather than in the
    cluster's process.
    """
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        # Without a dashboard the scheduler still serves /health; keep it on loopback.
        "dashboard": dashboard,
        "dashboard_address": "127.0.0.1:0",
    }
    if security is not None:
        settings.update(security=security, protocol="tls")
    settings.update(options or {})
    return {"cls": SchedulerProcess if own_process else Scheduler, "options": settings}


def worker_spec(
    shape: Shape,
    threads_per_worker: int,
    *,
    worker_class: str = "distributed.Nanny",
    security: Any = None,
    options: dict[str, Any] | None = None,
    python: str | None = None,
    env: dict[str, str] | None = None,
    http_routes: list[str] | None = None,
) -> dict[str, Any]:
    """Workers of ``shape`` on 127.0.0.1, each tagged with its resources.

    With ``python`` (a software environment's interpreter) they run in that Python.
    ``env`` is set in each worker's process as it starts (the nanny passes it on, not
    the command line), and nowhere else. With ``http_routes``, their HTTP servers serve
    those dask modules alone.
    """
    if python is not None:
        settings = {
            "python": python,
            "nthreads": threads_per_worker,
            "memory_limit": shape.memory,
            "resources": {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu},
            "env": {
                **(env or {}),
                **({} if http_routes is None else {_ROUTES_VARIABLE: repr(http_routes)}),
            },
            "security": security,
            **(options or {}),
        }
        return {"cls": EnvironmentWorker, "options": settings}
    cls = import_term(worker_class)
    settings = {
        "nthreads": threads_per_worker,
        "memory_limit": shape.memory,
        "resources": {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu},
        "host": "127.0.0.1",
        "dashboard": False,
        "dashboard_address": "127.0.0.1:0",
    }
    if issubclass(cls, Nanny):
        # A failing call is the caller's exception, not a worker's log line.
        settings.update(env=dict(env or {}), silence_logs=quiet_logs())
        if http_routes is not None:
            # The nanny hands the worker process this process's config, and these keys.
            settings["config"] = {_ROUTES_KEY: list(http_routes)}
    if security is not None:
        settings["security"] = security
    settings.update(options or {})
    if issubclass(cls, Nanny):
        # The owner of these workers handles Ctrl-C and kills them (kill_workers).
        preload = settings.get("preload") or []
        settings["preload"] = [*([preload] if isinstance(preload, str) else preload), PRELOAD]
    return {"cls": cls, "options": settings}


_ROUTES_KEY = "distributed.worker.http.routes"
_ROUTES_VARIABLE = "DASK_DISTRIBUTED__WORKER__HTTP__ROUTES"


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


def build(
    shape: Shape,
    threads_per_worker: int,
    *,
    name: str,
    capacity: HostCapacity | None,
    n_workers: int = 0,
    security: Any = None,
    asynchronous: bool = False,
    dashboard: bool = False,
    scheduler_process: bool = False,
    scheduler_options: dict[str, Any] | None = None,
    worker_class: str = f"{__name__}.PoolNanny",
    worker_options: dict[str, Any] | None = None,
    python: str | None = None,
    env: dict[str, str] | None = None,
    http_routes: list[str] | None = HEALTH_ONLY,
    silence_logs: int | bool | None = None,
    start_errors: bool = False,
) -> LocalPoolCluster:
    """Build a cluster of workers of ``shape`` on this host: the one way taskcloud does.

    Pools, named clusters and the dask backend all start here. The scheduler and
    workers speak TLS, with ``security`` or credentials of the cluster's own (see
    :class:`SecuredCluster`); ``n_workers`` start at once, and the scheduler serves a
    dashboard only with ``dashboard``. Synchronous clusters start as this returns.
    """
    worker = worker_spec(
        shape,
        threads_per_worker,
        worker_class=worker_class,
        options=worker_options,
        python=python,
        env=env,
        http_routes=http_routes,
    )
    with main_module_hidden():
        return LocalPoolCluster(
            workers=dict.fromkeys(range(n_workers), worker),
            scheduler=scheduler_spec(
                dashboard=dashboard,
                options=scheduler_options,
                own_process=scheduler_process,
            ),
            worker=worker,
            security=security,
            asynchronous=asynchronous,
            name=name,
            silence_logs=quiet_logs() if silence_logs is None else silence_logs,
            capacity=capacity,
            shape=shape,
            start_errors=start_errors,
        )


def start(request: PoolRequest, capacity: HostCapacity) -> LocalPoolCluster:
    """Start an empty pool on this host that adapts between the request's bounds."""
    # A worker that dies fails its call at once; the pool decides about retries.
    settings = {"distributed.scheduler.allowed-failures": 0, **http_config(request.dashboard)}
    with dask.config.set(settings):
        cluster = build(
            request.shape,
            request.threads_per_worker,
            name=request.name,
            capacity=capacity,
            dashboard=request.dashboard,
            python=request.python,
            env=dict(request.env),
        )
    cluster.label = request.label
    cluster.scale_between(request.minimum, request.maximum, request.keepalive, PoolAdaptive)
    return cluster


class LocalProvider:
    """The ``local`` provider: workers are processes on this host. It has no options."""

    kind = "local"

    def __init__(
        self, name: str = "local", options: dict[str, Any] | None = None, *, capacity: Any = None
    ) -> None:
        if options:
            raise InvalidOptionError(
                "provider_options", options, "{} for the local provider: it has no options"
            )
        self.name = name
        self._capacity = capacity

    def capacity(self) -> HostCapacity:
        """The capacity given, else the host's as it is now (GPUs included)."""
        return self._capacity if self._capacity is not None else HostCapacity()

    def start_pool(self, request: PoolRequest) -> LocalPoolCluster:
        return start(request, self.capacity())

    async def start_cluster(self, request: ClusterRequest) -> LocalPoolCluster:
        cluster = build(
            request.shape,
            request.threads_per_worker,
            name=request.name,
            capacity=self.capacity(),
            security=request.security,
            asynchronous=True,
            dashboard=request.dashboard,
            scheduler_options=request.scheduler_options,
            worker_class=request.worker_class,
            worker_options=request.worker_options,
            python=request.python,
            http_routes=None,
            silence_logs=logging.ERROR,
            start_errors=True,
        )
        await cluster
        return cluster

    def check(self) -> list[HostReport]:
        import platform

        import distributed

        import taskcloud

        capacity = self.capacity()
        return [
            HostReport(
                host="this host",
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


def adapt(
    cluster: SpecCluster,
    capacity: HostCapacity,
    shape: Shape,
    minimum: int,
    maximum: int,
    keepalive: float,
    adaptive: type[CapacityAdaptive] = CapacityAdaptive,
) -> Adaptive:
    """Scale ``cluster`` from its queue, within the host's capacity; an idle worker
    goes after ``keepalive`` seconds. Returns the :class:`Adaptive` that does it."""
    return cluster.adapt(
        Adaptive=adaptive,
        minimum=minimum,
        maximum=maximum,
        interval=ADAPT_INTERVAL,
        target_duration=TARGET_DURATION,
        wait_count=max(1, round(keepalive / ADAPT_INTERVAL)),
        capacity=capacity,
        shape=shape,
    )
