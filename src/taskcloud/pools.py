"""Pools of workers, one per :class:`~taskcloud.specs.PoolSpec`, and calls on them.

A :class:`Pool` turns a call into a ``concurrent.futures.Future`` and watches it: a
call whose worker died runs again up to ``retries`` times, a call that outgrew the
memory limit or its timeout fails with an error that says so. A map's results come
back in batches, each in one request to the workers. :class:`PoolManager` hands out
one pool per spec and closes them all on exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import pickle
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from attrs import define
from attrs import field

from taskcloud.capacity import Shape
from taskcloud.errors import MemoryLimitError
from taskcloud.errors import TaskTimeoutError
from taskcloud.errors import WorkerLostError
from taskcloud.frames import hide_internals
from taskcloud.pickling import dumps_arguments
from taskcloud.pickling import dumps_function
from taskcloud.providers import DONE
from taskcloud.providers import TIMED
from taskcloud.providers import kinds
from taskcloud.providers import scheduler_process
from taskcloud.providers import until_done
from taskcloud.providers.protocol import PoolRequest
from taskcloud.providers.protocol import Provider
from taskcloud.specs import PoolSpec
from taskcloud.units import format_bytes

__all__ = ["Pool", "PoolManager", "PoolStats", "pools"]

_POOL_IDS = itertools.count(1)


class _LabelNumbers:
    """The numbers in open pools' labels: each new pool takes the lowest free one, so
    that the pools of a run are pool 1, pool 2, ... however many ran before it in
    this process. Their dask clusters keep names that are never reused."""

    def __init__(self) -> None:
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            number = next(n for n in itertools.count(1) if n not in self._taken)
            self._taken.add(number)
            return number

    def give_back(self, number: int) -> None:
        with self._lock:
            self._taken.discard(number)


_LABEL_NUMBERS = _LabelNumbers()

#: How long a map's finished result waits for others before the pool fetches them,
#: all in one request: a request costs the scheduler and the workers about as much
#: as fetching a dozen small results.
GATHER_WINDOW = 0.1


@define
class PoolStats:
    """What a pool did: workers it started, its largest size, calls it ran."""

    started: int = 0
    peak: int = 0
    calls: int = 0


class _Future(Future[Any]):
    """A call's future: a failure raises with the user's frames, not the pool's."""

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except Exception as failure:
            hide_internals(failure)
            raise failure


@define(eq=False)
class _Call:
    """One call on a pool, resubmitted when its worker dies, until it has an outcome."""

    pool: Pool
    name: str
    function_blob: bytes
    arguments_blob: bytes
    retries: int
    timeout: float | None
    on_start: Callable[[], None] | None = None
    #: What the worker runs on ``arguments_blob`` alone, when the call arrives pickled
    #: whole (a pytask task's call); else :func:`taskcloud.worker.invoke`.
    runs: Callable[[bytes], bytes] | None = None
    future: Future[Any] = field(factory=_Future)
    attempts: int = 0
    _dask: Any = None
    _timer: asyncio.TimerHandle | None = None
    _expired: bool = False

    def start(self) -> None:
        """Submit the call on its own; :meth:`_follow` hands on its outcome."""
        from taskcloud.worker import invoke

        key = self.new_key()
        target: Callable[..., bytes]
        args: tuple[bytes, ...]
        if self.runs is None:
            target, args = invoke, (self.function_blob, self.arguments_blob)
        else:
            target, args = self.runs, (self.arguments_blob,)
        self.attach(self.pool.client.submit(target, *args, key=key, pure=False))
        self.pool.client.loop.add_callback(self._follow, self._dask)

    async def _follow(self, dask_future: Any) -> None:
        # Wait in the event loop; fetching the outcome blocks, so it runs in a thread.
        await until_done(dask_future)
        await asyncio.get_running_loop().run_in_executor(None, self.ended, dask_future)

    def new_key(self) -> str:
        """A fresh dask key for the next attempt; arms the timeout for it."""
        key = f"{self.name}-{os.urandom(6).hex()}"
        if self.timeout is not None:
            # Its worker says when it starts: the timeout counts from there.
            key += TIMED
            self.pool.watch.on_executing(key, self._executing)
        self.pool.watch.on_start(key, self._started)
        return key

    def attach(self, dask_future: Any) -> None:
        """Follow ``dask_future`` as this call's current attempt."""
        self.attempts += 1
        self._dask = dask_future

    def _started(self, key: str) -> None:
        # From here on ``cancel()`` cannot take the call back, as with a process pool.
        # A retry of a call that is running already stays so; asking again would log
        # "Future in unexpected state" from concurrent.futures.
        if not self.future.running():
            try:
                if not self.future.set_running_or_notify_cancel():
                    return
            except RuntimeError:  # it ended in the meantime
                return
            if self.on_start is not None:
                self.on_start()

    def _executing(self, key: str, since: float) -> None:
        # Called in the client's event loop when the worker started the attempt ``key``
        # at ``since`` (its clock).
        if self.future.done() or self._dask is None or self._dask.key != key:
            return
        self._cancel_timer()
        left = (self.timeout or 0) - (time.time() - since)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(left, 0.0), self._expire_soon, key)

    def _expire_soon(self, key: str) -> None:
        # Taking the call back asks the workers and waits: not in the event loop.
        self._timer = None
        asyncio.get_running_loop().run_in_executor(None, self._expire, key)

    def _expire(self, key: str) -> None:
        dask_future = self._dask
        if self.future.done() or dask_future is None or dask_future.key != key:
            return
        self._expired = True  # its worker's end is no reason to run it again
        self.pool.stop_running(dask_future)
        self._set_exception(TaskTimeoutError(self.name, self.timeout or 0))

    def cancel(self) -> None:
        if self._dask is not None:
            self._dask.cancel()

    def resolve_with(self, dask_future: Any, value: bytes) -> None:
        """Hold the result ``value``, gathered together with others'."""
        if not self.future.done():
            self._cancel_timer()
            try:
                self.future.set_result(pickle.loads(value))
            except BaseException as exc:  # an unpicklable result class, say
                self.future.set_exception(exc)
        self._drop(dask_future)

    def ended(self, dask_future: Any) -> None:
        """Hand on the outcome of the attempt ``dask_future``: its result, its error, or
        (when its worker died) another attempt."""
        if self.future.done() or self._expired:
            self._drop(dask_future)
            return
        if dask_future.status == "finished":
            self._finish(dask_future)
        elif dask_future.status == "error":
            self._fail(dask_future)
        self._drop(dask_future)

    def _drop(self, dask_future: Any) -> None:
        # The result lives here now: release it at once, rather than when the
        # garbage collector gets to the future, so that the worker holding it may
        # leave as soon as it is idle.
        if self._dask is dask_future:
            self._dask = None
        self.pool.watch.forget(dask_future.key)
        with contextlib.suppress(Exception):
            dask_future.release()

    def _finish(self, dask_future: Any) -> None:
        try:
            value = pickle.loads(dask_future.result())
        except BaseException as exc:
            if self._expired:
                return  # it timed out as it finished: the timeout, not the cancel, says so
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
            # A provider may say more than the address: the Slurm job it ran in, say.
            described = self.pool.cluster.describe_worker(worker)
            self._set_exception(WorkerLostError(self.name, self.attempts, described))

    def fail(self, exc: BaseException) -> None:
        """End the call with ``exc``, its current attempt cancelled."""
        self._set_exception(exc)
        self.cancel()

    def _set_exception(self, exc: BaseException) -> None:
        self._cancel_timer()
        if not self.future.done():
            self.future.set_exception(exc)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            # A timer handle belongs to its loop's thread.
            self.pool.client.loop.add_callback(timer.cancel)


class _MapResults:
    """Hands on the results of one map's calls as their dask futures finish, in batches.

    The client's event loop follows each dask future, as ``client.gather`` does; this
    object's thread fetches the finished results, many in one request, and hands them
    to their calls. A batch waits up to :data:`GATHER_WINDOW` after its first result,
    unless every call has finished or one has failed.
    """

    def __init__(self, pool: Pool, calls: list[_Call]) -> None:
        self.pool = pool
        self.calls = {call._dask: call for call in calls}
        self._changed = threading.Condition()
        self._finished: list[Any] = []  # dask futures done, not yet taken
        self._first_at = 0.0
        self._following = len(calls)
        self._urgent = False
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.pool.client.loop.add_callback(self._follow_all, list(self.calls))
        threading.Thread(target=self._run, daemon=True).start()

    def _follow_all(self, dask_futures: list[Any]) -> None:
        for dask_future in dask_futures:
            task = asyncio.ensure_future(self._follow(dask_future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _follow(self, dask_future: Any) -> None:
        await until_done(dask_future)
        with self._changed:
            self._finished.append(dask_future)
            self._following -= 1
            if dask_future.status != "finished":
                self._urgent = True
            if len(self._finished) == 1:
                self._first_at = time.monotonic()
                self._changed.notify()
            elif self._urgent or not self._following:
                self._changed.notify()

    def _run(self) -> None:
        while self.calls:
            with self._changed:
                self._changed.wait_for(lambda: self._finished)
                wait = self._first_at + GATHER_WINDOW - time.monotonic()
                if wait > 0:
                    self._changed.wait_for(lambda: self._urgent or not self._following, wait)
                batch, self._finished, self._urgent = self._finished, [], False
            self._hand_on(batch)

    def _hand_on(self, batch: list[Any]) -> None:
        calls = self.calls
        ready = [f for f in batch if f.status == "finished" and not calls[f].future.done()]
        try:
            # Straight from the workers: the scheduler need not pass the data on.
            values = self.pool.client.gather(ready, direct=True) if ready else []
        except Exception:  # a worker left between finishing and gathering
            ready, values = [], []
        for dask_future, value in zip(ready, values, strict=True):
            calls.pop(dask_future).resolve_with(dask_future, value)
        for dask_future in batch:
            call = calls.get(dask_future)
            if call is None:
                continue
            if dask_future.status in DONE or call.future.done():
                # Errors retry or fail on their own from here on.
                del calls[dask_future]
                call.ended(dask_future)
            else:  # its data was lost before it could be fetched; it runs again
                with self._changed:
                    self._following += 1
                self.pool.client.loop.add_callback(self._follow_all, [dask_future])


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
    #: The number in the label, free again once the pool closes.
    number: int = field(default=0, kw_only=True)
    #: The calls not yet collected, for :meth:`fail_waiting`.
    _calls: weakref.WeakSet[_Call] = field(factory=weakref.WeakSet, init=False)

    @classmethod
    def start(cls, spec: PoolSpec, provider: Provider) -> Pool:
        """Start a pool for ``spec`` on ``provider``; a shape it can never hold is an error."""
        python = None
        if spec.software is not None:
            from taskcloud.environments import environment_python

            python = str(environment_python(spec.software))
        capacity = provider.capacity()
        shape = Shape.of(capacity, cpu=spec.cpu, memory=spec.memory, gpu=spec.gpu)
        capacity.check(shape)
        fit = capacity.fit(shape)
        low, high = spec.n_workers or (0, fit)
        high = min(high, max(fit, low))
        described = spec.describe()
        if spec.memory is None:
            described += f" (memory={format_bytes(shape.memory)})"
        if provider.name != "local":
            described += f" on {provider.name}"
        number = _LABEL_NUMBERS.take()
        try:
            return cls._start(spec, provider, shape, (low, high), number, described, python)
        except BaseException:
            _LABEL_NUMBERS.give_back(number)
            raise

    @classmethod
    def _start(
        cls,
        spec: PoolSpec,
        provider: Provider,
        shape: Shape,
        scaling: tuple[int, int],
        number: int,
        described: str,
        python: str | None,
    ) -> Pool:
        from distributed import Client

        from taskcloud.providers.cluster import start_pool
        from taskcloud.providers.starts import CallStarts

        low, high = scaling
        label = f"pool {number}: {described}"
        request = PoolRequest(
            shape=shape,
            threads_per_worker=spec.threads_per_worker,
            name=f"taskcloud-{next(_POOL_IDS)}",
            label=label,
            minimum=low,
            maximum=high,
            keepalive=spec.keepalive,
            python=python,
            environ=dict(spec.environ),
            dashboard=spec.dashboard,
            scheduler_process=scheduler_process(),
        )
        stats = PoolStats()
        workers = start_pool(provider, request)
        try:
            client = Client(workers, set_as_default=False)
            client.register_plugin(CallStarts())
            watch = workers.watch(client, stats)
        except BaseException:
            workers.close()
            raise
        pool = cls(spec, shape, workers, client, watch, stats, label, number=number)
        # Workers that cannot arrive (starts that keep failing, a batch job that pends
        # past its limit or dies before its worker connects) fail the waiting calls.
        workers.on_failure(pool.fail_waiting)
        return pool

    def submit(
        self,
        name: str,
        function: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        retries: int = 1,
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Future[Any]:
        """Run ``function(*args, **kwargs)`` on a worker; the future holds its result.

        ``on_start`` is called, from another thread, when the call starts on a worker.
        """
        call = self._call(
            name,
            dumps_function(name, function),
            function,
            args,
            kwargs or {},
            retries,
            timeout,
        )
        call.on_start = on_start
        call.start()
        return call.future

    def submit_pickled(
        self,
        name: str,
        runs: Callable[[bytes], bytes],
        payload: bytes,
        *,
        retries: int = 1,
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Future[Any]:
        """Have a worker run ``runs(payload)``, a call pickled whole by the caller.

        ``runs`` is importable on the workers and returns its result pickled; the
        payload travels as it is, not pickled a second time. The future holds what
        ``runs`` returned, unpickled.
        """
        call = _Call(self, name, b"", payload, retries, timeout, on_start=on_start, runs=runs)
        self._calls.add(call)
        call.future.add_done_callback(lambda f: call.cancel() if f.cancelled() else None)
        self.stats.calls += 1
        call.start()
        return call.future

    def map(
        self,
        name: str,
        function: Callable[..., Any],
        arguments: list[tuple[Any, ...]],
        *,
        retries: int = 1,
        timeout: float | None = None,
    ) -> list[Future[Any]]:
        """Run ``function(*args)`` for each tuple in ``arguments``, submitted together.

        One graph update carries every call, with the pickled function once, and
        results come back in batches, as ``client.map`` and ``client.gather`` do.
        """
        from taskcloud.worker import invoke

        function_blob = dumps_function(name, function)
        calls = [
            self._call(name, function_blob, function, args, {}, retries, timeout)
            for args in arguments
        ]
        if not calls:
            return []
        dask_futures = self.client.map(
            invoke,
            [function_blob] * len(calls),
            [call.arguments_blob for call in calls],
            key=[call.new_key() for call in calls],
            pure=False,
        )
        for call, dask_future in zip(calls, dask_futures, strict=True):
            call.attach(dask_future)
        _MapResults(self, calls).start()
        return [call.future for call in calls]

    def _call(
        self,
        name: str,
        function_blob: bytes,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retries: int,
        timeout: float | None,
    ) -> _Call:
        arguments_blob = dumps_arguments(name, function, args, kwargs)
        call = _Call(self, name, function_blob, arguments_blob, retries, timeout)
        self._calls.add(call)
        call.future.add_done_callback(lambda f: call.cancel() if f.cancelled() else None)
        self.stats.calls += 1
        return call

    def fail_waiting(self, exc: BaseException) -> None:
        """Fail every call of the pool that has no outcome yet with ``exc``."""
        for call in list(self._calls):
            if not call.future.done():
                call.fail(exc)

    def stop_running(self, dask_future: Any) -> None:
        """Take a running call back: cancel it and replace the worker that runs it.

        A thread cannot be stopped, so the worker process goes: the scheduler lets
        it go first (other calls on it run again elsewhere, without using a retry),
        then it is killed and its nanny starts a new one. This takes milliseconds,
        where asking the worker to close waits seconds for the busy thread.
        """
        worker = self.watch.running_on(dask_future.key)
        dask_future.cancel()
        if worker is not None:
            self.cluster.replace_worker(worker)

    @property
    def dashboard_link(self) -> str:
        """The address of the pool's dashboard; empty when it has none."""
        if not self.spec.dashboard:  # its scheduler's HTTP server serves /health alone
            return ""
        try:
            return str(self.cluster.dashboard_link or "")
        except Exception:  # the cluster closed, or a scheduler without services
            return ""

    @property
    def waiting_for_capacity(self) -> bool:
        """Whether the pool wants more workers than the host has room for now."""
        return bool(self.cluster.capacity.waiting(self.cluster))

    @property
    def waited_for_capacity(self) -> float:
        """Seconds the pool has waited for room on the host, all waits together."""
        return float(self.cluster.capacity.waited(self.cluster))

    @property
    def n_workers(self) -> int:
        return int(self.cluster.n_workers)

    @property
    def where(self) -> str:
        """Where the pool's workers run, for the summary."""
        return str(self.cluster.where)

    @property
    def alive(self) -> bool:
        """Whether the pool can take calls: a pool of its own always can, while open."""
        return True

    def close(self, *, kill: bool = False) -> None:
        """Stop the pool's workers and scheduler; with ``kill``, kill busy workers at once."""
        from distributed.utils import silence_logging_cmgr

        with silence_logging_cmgr(logging.ERROR):
            if kill:
                self.cluster.kill()
            try:
                self.client.close()
            finally:
                try:
                    self.cluster.close()
                finally:
                    _LABEL_NUMBERS.give_back(self.number)


@define
class PoolManager:
    """One pool per spec and provider, all closed on exit.

    ``providers`` stand in for the registry's under their names (a test's local
    provider with a capacity of its own, say).
    """

    providers: dict[str, Provider] = field(factory=dict)
    _pools: dict[Any, Pool] = field(factory=dict, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)
    _exit_hook: bool = field(default=False, init=False)

    def provider(self, name: str | None) -> tuple[Any, Provider]:
        """The provider ``name`` means here (None: the default), and a key for it."""
        resolved = kinds.resolve(name)
        given = self.providers.get(resolved.name)
        if given is not None and not resolved.options:
            return (resolved.name,), given
        return resolved.key, kinds.get(resolved)

    def get(self, spec: PoolSpec) -> Pool:
        """The pool for ``spec``, started on first use."""
        with self._lock:
            key, provider = self.provider(spec.provider)
            pool = self._pools.get((spec, key))
            if pool is None:
                pool = Pool.start(spec, provider)
                self._pools[(spec, key)] = pool
                self._close_at_exit()
            return pool

    def _close_at_exit(self) -> None:
        if not self._exit_hook:
            atexit.register(self._close_exiting)
            self._exit_hook = True

    def _close_exiting(self) -> None:
        """Close every pool as the interpreter exits. A nanny still replacing a
        worker killed a moment ago (a timeout's) logs its cancelled restart as an
        error, and the scheduler its event for a client already gone as critical;
        nothing of the run is left to say, so distributed's logs go silent first,
        unless dask's logging configuration names levels."""
        from taskcloud.providers.cluster import quiet_logs

        if quiet_logs():
            logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)
        self.close_all()

    def get_or_start(self, key: Any, start: Callable[[], Pool]) -> Pool:
        """The pool kept under ``key`` (not a spec: a named cluster's, say), or
        ``start()``'s; a pool whose ``alive`` is False is replaced."""
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None and not pool.alive:
                del self._pools[key]
                with contextlib.suppress(Exception):
                    pool.close()
                pool = None
            if pool is None:
                pool = self._pools[key] = start()
                self._close_at_exit()
            return pool

    def active(self) -> list[Pool]:
        """The pools started so far, oldest first."""
        return list(self._pools.values())

    def close_all(self, *, kill: bool = False) -> None:
        """Stop every pool; with ``kill``, without waiting for busy workers."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close(kill=kill)


#: The pools of this process.
pools = PoolManager()
