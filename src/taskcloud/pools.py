"""Pools of workers, one per :class:`~taskcloud.specs.PoolSpec`, and calls on them.

A :class:`Pool` turns a call into a ``concurrent.futures.Future`` and watches it: a
call whose worker died runs again up to ``retries`` times, a call that outgrew the
memory limit or its timeout fails with an error that says so. :class:`PoolManager`
hands out one pool per spec and closes them all on exit.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import pickle
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from attrs import define
from attrs import field

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import MemoryLimitError
from taskcloud.errors import TaskTimeoutError
from taskcloud.errors import WorkerLostError
from taskcloud.pickling import dumps_call
from taskcloud.specs import PoolSpec
from taskcloud.specs import format_bytes

__all__ = ["Pool", "PoolManager", "PoolStats", "pools"]

_POOL_IDS = itertools.count(1)


@define
class PoolStats:
    """What a pool did: workers it started, its largest size, calls it ran."""

    started: int = 0
    peak: int = 0
    calls: int = 0


@define(eq=False)
class _Call:
    """One call on a pool, resubmitted when its worker dies, until it settles."""

    pool: Pool
    name: str
    blob: bytes
    environ: tuple[tuple[str, str], ...]
    retries: int
    timeout: float | None
    future: Future[Any] = field(factory=Future)
    attempts: int = 0
    _dask: Any = None
    _timer: threading.Timer | None = None

    def start(self) -> None:
        from taskcloud import runner

        self.attempts += 1
        key = f"{self.name}-{uuid.uuid4().hex[:12]}"
        if self.timeout is not None:
            self.pool.watch.on_start(key, self._started)
        self._dask = self.pool.client.submit(
            runner.invoke, self.blob, self.environ, key=key, pure=False
        )
        self._dask.add_done_callback(self._settle)

    def _started(self, key: str) -> None:
        self._timer = threading.Timer(self.timeout, self._expire)  # type: ignore[arg-type]
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        if self.future.done():
            return
        worker = self._worker_of(self._dask)
        self._dask.cancel()
        if worker:
            self.pool.restart_worker(worker)
        self._set_exception(TaskTimeoutError(self.name, self.timeout or 0))

    def _worker_of(self, dask_future: Any) -> str | None:
        state = self.pool.cluster.scheduler.tasks.get(dask_future.key)
        where = getattr(state, "processing_on", None)
        return getattr(where, "address", None)

    def cancel(self) -> None:
        if self._dask is not None:
            self._dask.cancel()

    def _settle(self, dask_future: Any) -> None:
        if self.future.done():
            dask_future.release()
            return
        if dask_future.status == "finished":
            self._finish(dask_future)
        elif dask_future.status == "error":
            self._fail(dask_future)
        # The result lives here now; a worker holding none can leave when idle.
        dask_future.release()

    def _finish(self, dask_future: Any) -> None:
        try:
            value = pickle.loads(dask_future.result())
        except BaseException as exc:
            self._set_exception(exc)
        else:
            self._cancel_timer()
            if not self.future.done():
                self.future.set_result(value)

    def _fail(self, dask_future: Any) -> None:
        from distributed.scheduler import KilledWorker

        exc = dask_future.exception()
        if not isinstance(exc, KilledWorker):
            self._set_exception(exc.with_traceback(dask_future.traceback()))
            return
        worker = exc.last_worker.address
        rss = self.pool.watch.memory_kill(worker, wait=2.0)
        if rss is not None:
            limit = format_bytes(self.pool.shape.memory)
            self._set_exception(MemoryLimitError(self.name, limit, format_bytes(rss), worker))
        elif self.attempts <= self.retries:
            self._cancel_timer()
            self.start()
        else:
            self._set_exception(WorkerLostError(self.name, self.attempts, worker))

    def _set_exception(self, exc: BaseException) -> None:
        self._cancel_timer()
        if not self.future.done():
            self.future.set_exception(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@define(eq=False)
class Pool:
    """Adaptively scaled workers of one shape, and the client that feeds them."""

    spec: PoolSpec
    shape: Shape
    cluster: Any
    client: Any
    watch: Any
    stats: PoolStats
    label: str

    @classmethod
    def start(cls, spec: PoolSpec, capacity: HostCapacity) -> Pool:
        """Start a pool for ``spec``; a shape the host can never hold is an error."""
        if spec.software is not None:
            raise InvalidOptionError(
                "software",
                spec.software,
                "None: named software environments are not available yet; workers use "
                "the current environment",
            )
        memory = spec.memory or capacity.default_memory(spec.cpu)
        shape = Shape(cpu=spec.cpu, memory=memory, gpu=spec.gpu)
        capacity.check(shape)
        low, high = spec.n_workers or (0, capacity.fit(shape))
        high = min(high, max(capacity.fit(shape), low))
        number = next(_POOL_IDS)
        described = spec.describe()
        if spec.memory is None:
            described += f" (memory={format_bytes(memory)})"
        label = f"pool {number}: {described}"
        from distributed import Client

        from taskcloud.providers import local

        stats = PoolStats()
        watch = local.PoolWatch(stats)
        cluster = local.start(
            shape,
            spec.threads_per_worker,
            capacity,
            f"taskcloud-{number}",
            low,
            high,
            spec.keepalive,
        )
        cluster.scheduler.add_plugin(watch, name=watch.name)
        client = Client(cluster, set_as_default=False)
        return cls(spec, shape, cluster, client, watch, stats, label)

    def submit(
        self,
        name: str,
        function: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        environ: tuple[tuple[str, str], ...] = (),
        retries: int = 1,
        timeout: float | None = None,
    ) -> Future[Any]:
        """Run ``function(*args, **kwargs)`` on a worker; the future holds its result."""
        blob = dumps_call(name, function, args, kwargs or {})
        call = _Call(self, name, blob, environ, retries, timeout)
        call.future.add_done_callback(lambda f: call.cancel() if f.cancelled() else None)
        self.stats.calls += 1
        call.start()
        return call.future

    def restart_worker(self, address: str) -> None:
        """Replace the worker process at ``address`` (its nanny starts a new one)."""
        self.client.restart_workers([address], raise_for_error=False)

    @property
    def n_workers(self) -> int:
        return len(self.cluster.scheduler.workers)

    def close(self) -> None:
        """Stop the pool's workers and scheduler."""
        from distributed.utils import silence_logging_cmgr

        with silence_logging_cmgr(logging.ERROR):
            try:
                self.client.close()
            finally:
                self.cluster.close()


@define
class PoolManager:
    """One pool per spec, all within the host's capacity, all closed on exit."""

    capacity: HostCapacity = field(factory=HostCapacity)
    _pools: dict[PoolSpec, Pool] = field(factory=dict, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)
    _exit_hook: bool = field(default=False, init=False)

    def get(self, spec: PoolSpec) -> Pool:
        """The pool for ``spec``, started on first use."""
        with self._lock:
            pool = self._pools.get(spec)
            if pool is None:
                pool = Pool.start(spec, self.capacity)
                self._pools[spec] = pool
                if not self._exit_hook:
                    atexit.register(self.close_all)
                    self._exit_hook = True
            return pool

    def active(self) -> list[Pool]:
        """The pools started so far, oldest first."""
        return list(self._pools.values())

    def close_all(self) -> None:
        """Stop every pool."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            self.capacity.release(pool.cluster)
            pool.close()


#: The pools of this process.
pools = PoolManager()
