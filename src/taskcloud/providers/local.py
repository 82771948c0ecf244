"""The local provider: worker processes of one shape on this host.

A pool is a dask ``SpecCluster`` whose scheduler runs in this process and whose
workers are ``Nanny``-supervised processes listening on 127.0.0.1. The nanny enforces
the memory limit and replaces a worker that dies; an :class:`Adaptive` subclass scales
the pool from its queue, within what :class:`~taskcloud.capacity.HostCapacity` grants.
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
from typing import Any

import dask
from distributed import Nanny
from distributed import Scheduler
from distributed import SpecCluster
from distributed.core import Status
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.spec import ProcessInterface
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import import_term

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.providers import main_module_hidden
from taskcloud.providers.owned import PRELOAD

__all__ = [
    "CapacityAdaptive",
    "EnvironmentWorker",
    "LocalPoolCluster",
    "PoolAdaptive",
    "PoolNanny",
    "PoolWatch",
    "SchedulerProcess",
    "adapt",
    "quiet_logs",
    "scheduler_spec",
    "start",
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

#: The event a :class:`PoolNanny` logs when its worker process exits.
WORKER_EXIT = "taskcloud-worker-exit"


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

    def on_start(self, key: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when the task ``key`` starts on a worker."""
        self._on_start[key] = callback

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.stats.started += 1
        self.stats.peak = max(self.stats.peak, len(scheduler.workers))
        state = scheduler.workers.get(worker)
        if state is not None and state.nanny:
            self._latest_of_nanny[state.nanny] = worker

    def log_event(self, topic: str, msg: Any) -> None:
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


#: A nanny in these states starts its worker anew when the worker dies.
_NANNY_UP = (Status.init, Status.starting, Status.running)


class PoolNanny(Nanny):
    """A pool's nanny: its worker starts without ``__main__``, and it reports exits.

    * The worker process starts inside
      :func:`~taskcloud.providers.main_module_hidden`, whenever the nanny starts
      or replaces it, so a script without a main guard is not run again in it.
    * When the worker process exits, the nanny logs a :data:`WORKER_EXIT` event
      with its exit code, so that :class:`PoolWatch` need not wait to learn
      whether the nanny killed it for memory.
    * A worker that dies while it starts (a call that kills its process can run
      before the nanny hears from it) is replaced once, as the nanny replaces a
      worker that dies later, rather than failing the nanny's start.
    """

    async def instantiate(self) -> Status:
        with main_module_hidden():
            status = await super().instantiate()
        if status == Status.stopped and self.status in _NANNY_UP:
            with main_module_hidden():
                status = await super().instantiate()
        return status

    async def _on_worker_exit(self, exitcode: int) -> None:
        if self.status in _NANNY_UP:
            event = {"nanny": self.address, "worker": self.worker_address, "exitcode": exitcode}
            self.log_event(WORKER_EXIT, event)
        await super()._on_worker_exit(exitcode)


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
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
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
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class LocalPoolCluster(SpecCluster):
    """Workers of one shape; GPU workers each get their own ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, *args: Any, capacity: HostCapacity, shape: Shape, **kwargs: Any) -> None:
        self._capacity = capacity
        self._shape = shape
        self._failed_starts = 0
        self._numbers = itertools.count()
        super().__init__(*args, **kwargs)

    def _named_spec(self) -> dict[str, Any]:
        # Workers started from the command line report their name as a string; the
        # spec must use the same, or adaptive scaling never finds them to retire.
        # (dask's own naming hook, ``_new_worker_name``, is private.)
        name = str(next(self._numbers))
        while name in self.worker_spec:
            name = str(next(self._numbers))
        return {name: self.new_spec}

    def _correct_state(self) -> asyncio.Future[None]:
        # dask logs a worker that failed to start as an error from tornado's event
        # loop, in the user's terminal; the pool's adaptive scaling tries again.
        return asyncio.ensure_future(self._correct_state_quietly())

    async def _correct_state_quietly(self) -> None:
        try:
            await super()._correct_state()
        except Exception as exc:
            self._failed_starts += 1
            # One failure is a worker that died as it started; a run of them is news.
            level = logging.ERROR if self._failed_starts == FAILED_STARTS else logging.DEBUG
            logger.log(
                level,
                "%s: %d worker starts in a row failed, the last with %s: %s",
                self.name,
                self._failed_starts,
                type(exc).__name__,
                exc,
            )
        else:
            self._failed_starts = 0

    def new_worker_spec(self) -> dict[str, Any]:
        spec = self._named_spec()
        if self._shape.gpu:
            for name, worker in spec.items():
                gpus = self._capacity.assign_gpus(self, name, self._shape.gpu, self.worker_spec)
                worker = copy.deepcopy(worker)
                worker["options"].setdefault("env", {})["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                spec[name] = worker
        return spec


class CapacityAdaptive(Adaptive):
    """Adaptive scaling that asks the host's capacity before it grows."""

    def __init__(self, *args: Any, capacity: HostCapacity, shape: Shape, **kwargs: Any) -> None:
        self._capacity = capacity
        self._shape = shape
        super().__init__(*args, **kwargs)

    async def safe_target(self) -> int:
        wanted = await super().safe_target()
        return self._capacity.grant(self.cluster, self._shape, wanted, len(self.plan))


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
) -> dict[str, Any]:
    """Workers of ``shape`` on 127.0.0.1, each tagged with its resources.

    With ``python`` (a software environment's interpreter) they run in that Python.
    """
    if python is not None:
        settings = {
            "python": python,
            "nthreads": threads_per_worker,
            "memory_limit": shape.memory,
            "resources": {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu},
            "env": {},
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
        settings.update(env={}, silence_logs=quiet_logs())
    if security is not None:
        settings["security"] = security
    settings.update(options or {})
    if issubclass(cls, Nanny):
        # The owner of these workers handles Ctrl-C and kills them (kill_workers).
        preload = settings.get("preload") or []
        settings["preload"] = [*([preload] if isinstance(preload, str) else preload), PRELOAD]
    return {"cls": cls, "options": settings}


def quiet_logs() -> int | bool:
    """The level distributed's logs need to reach the terminal while a pool runs.

    Only what breaks the run, unless dask's ``logging`` configuration names levels
    (``DASK_LOGGING__DISTRIBUTED=info``, say): then those hold, untouched.
    """
    return False if dask.config.get("logging", None) else logging.CRITICAL


def start(
    shape: Shape,
    threads_per_worker: int,
    capacity: HostCapacity,
    name: str,
    minimum: int,
    maximum: int,
    keepalive: float,
    python: str | None = None,
) -> LocalPoolCluster:
    """Start an empty pool on this host and let it adapt between its bounds."""
    # A worker that dies fails its call at once; the pool decides about retries.
    settings = {"distributed.scheduler.allowed-failures": 0}
    with dask.config.set(settings), main_module_hidden():
        cluster = LocalPoolCluster(
            workers={},
            scheduler=scheduler_spec(),
            worker=worker_spec(
                shape, threads_per_worker, worker_class=f"{__name__}.PoolNanny", python=python
            ),
            asynchronous=False,
            name=name,
            silence_logs=quiet_logs(),
            capacity=capacity,
            shape=shape,
        )
    adapt(cluster, capacity, shape, minimum, maximum, keepalive, adaptive=PoolAdaptive)
    return cluster


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
