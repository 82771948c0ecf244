"""The registry of parallel backends: names mapped to ``Executor`` builders.

The names mirror pytask-parallel's public API (``ParallelBackend``, ``WorkerType``,
``ParallelBackendRegistry``, ``registry`` and its ``registry.registry`` mapping) so a
project moves over by changing one import. Unlike pytask-parallel, the registry is an
instance with its own table, it also accepts plain string names, and its enum members
are strings: ``ParallelBackend.LOKY == "loky"``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from concurrent.futures import Executor
from concurrent.futures import Future
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import suppress
from enum import Enum
from types import MappingProxyType
from typing import Any

from attrs import define
from attrs import field
from attrs import frozen

from taskcloud.errors import BackendBuildError
from taskcloud.errors import BackendNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.providers import forking_workers
from taskcloud.providers import until_done

__all__ = [
    "Backend",
    "ParallelBackend",
    "ParallelBackendRegistry",
    "WorkerType",
    "registry",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class _StringEnum(str, Enum):
    """An enum whose members are their string values, in comparisons and in text."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ParallelBackend(_StringEnum):
    """The built-in backend names, as in pytask-parallel; each equals its value."""

    NONE = "none"
    CUSTOM = "custom"
    DASK = "dask"
    LOKY = "loky"
    PROCESSES = "processes"
    THREADS = "threads"


class WorkerType(_StringEnum):
    """Whether a backend runs tasks in threads of this process or in other processes."""

    THREADS = "threads"
    PROCESSES = "processes"


def backend_name(kind: ParallelBackend | str) -> str:
    """Return the registry key for an enum member or a plain string name."""
    if isinstance(kind, ParallelBackend):
        return kind.value
    if not isinstance(kind, str) or not _NAME.match(kind):
        raise InvalidOptionError(
            "parallel_backend",
            kind,
            "a ParallelBackend member or a name of letters, digits, '_', '-' or '.'",
        )
    return kind.lower()


def backend_kind(kind: ParallelBackend | str) -> ParallelBackend | str:
    """The ``ParallelBackend`` member named ``kind``, else its plain registry name.

    pytask-parallel keeps members in ``config["parallel_backend"]`` and as the keys of
    ``registry.registry``; a member equals and hashes as its name, so both spellings
    find it.
    """
    name = backend_name(kind)
    try:
        return ParallelBackend(name)
    except ValueError:
        return name


@frozen
class Backend:
    """One registered backend: how to build its executor and where it runs tasks."""

    name: str
    builder: Callable[..., Executor]
    worker_type: WorkerType
    remote: bool

    def build(self, n_workers: int) -> Executor:
        """Build the executor, turning every failure into a :class:`BackendBuildError`."""
        try:
            executor = self.builder(n_workers=n_workers)
        except Exception as exc:
            reason = f"Its builder raised {type(exc).__name__}: {exc}"
            raise BackendBuildError(self.name, reason) from exc
        if not isinstance(executor, Executor):
            reason = (
                f"Its builder returned {executor!r}, which is not a concurrent.futures.Executor."
            )
            raise BackendBuildError(self.name, reason)
        return executor


@define
class ParallelBackendRegistry:
    """Maps backend names to executor builders.

    Each instance owns its table; ``reset`` restores the built-in backends, and
    ``restore`` a table that ``checkpoint`` saved.
    """

    _backends: dict[ParallelBackend | str, Backend] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.reset()

    @property
    def registry(self) -> Mapping[ParallelBackend | str, Backend]:
        """The registered backends, read-only, as pytask-parallel's ``registry.registry``.

        Built-in names are ``ParallelBackend`` members, others plain strings; a member
        and its string value find the same entry. Each value has pytask-parallel's
        ``builder``, ``worker_type`` and ``remote``.
        """
        return MappingProxyType(self._backends)

    def register_parallel_backend(
        self,
        kind: ParallelBackend | str,
        builder: Callable[..., Executor],
        *,
        worker_type: WorkerType | str = WorkerType.PROCESSES,
        remote: bool = False,
    ) -> None:
        """Register ``builder(n_workers=...)`` under ``kind``, replacing any earlier one."""
        key = backend_kind(kind)
        if key == ParallelBackend.NONE:
            raise InvalidOptionError("kind", kind, "any backend name except 'none'")
        if not callable(builder):
            raise InvalidOptionError(
                "builder", builder, "a callable that takes n_workers= and returns an Executor"
            )
        try:
            worker_type = WorkerType(worker_type)
        except ValueError:
            raise InvalidOptionError(
                "worker_type", worker_type, "'threads' or 'processes'"
            ) from None
        self._backends[key] = Backend(str(key), builder, worker_type, bool(remote))

    register = register_parallel_backend

    def get(self, kind: ParallelBackend | str) -> Backend:
        """Return the backend registered under ``kind``."""
        name = backend_name(kind)
        try:
            return self._backends[name]
        except KeyError:
            raise BackendNotFoundError(name, self.names()) from None

    def names(self) -> list[str]:
        """Return the registered names, built-in ones first."""
        builtin = [kind.value for kind in ParallelBackend if kind in self._backends]
        return builtin + sorted({str(key) for key in self._backends} - set(builtin))

    def __contains__(self, kind: object) -> bool:
        try:
            return backend_name(kind) in self._backends  # type: ignore[arg-type]
        except InvalidOptionError:
            return False

    def get_parallel_backend(self, kind: ParallelBackend | str, n_workers: int) -> Executor:
        """Build the executor of ``kind`` (pytask-parallel's name for it)."""
        return self.get(kind).build(n_workers)

    def checkpoint(self) -> dict[ParallelBackend | str, Backend]:
        """A copy of the table, for :meth:`restore`."""
        return dict(self._backends)

    def restore(self, saved: Mapping[ParallelBackend | str, Backend]) -> None:
        """Make the table what it was when ``saved`` was taken."""
        self._backends.clear()
        self._backends.update(saved)

    def reset(self) -> None:
        """Forget every registration and register the built-in backends."""
        self._backends.clear()
        for kind, builder, worker_type in _BUILTIN:
            self.register_parallel_backend(kind, builder, worker_type=worker_type)


def build_loky_executor(n_workers: int) -> Executor:
    """Return loky's reusable process pool (workers do not re-import ``__main__``)."""
    from loky import get_reusable_executor

    _idle_resource_trackers()
    return get_reusable_executor(max_workers=n_workers, timeout=300)


def _idle_resource_trackers() -> None:
    """Start the two resource trackers loky's workers need, at the lowest CPU priority.

    A loky pool's first workers boot beside these trackers, each an interpreter of its
    own, and on a machine with two cores the four take turns. The trackers only wait
    until something needs cleaning up, so they can leave the cores to the workers:
    on the benchmark's 2-core machine the first task starts about 70 ms sooner.
    """
    import multiprocessing.resource_tracker as standard

    from loky.backend import resource_tracker as loky

    for module in (standard, loky):
        module.ensure_running()
        pid = getattr(getattr(module, "_resource_tracker", None), "_pid", None)
        if pid and hasattr(os, "setpriority"):
            with suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, 19)


def build_process_executor(n_workers: int) -> Executor:
    """Return the standard library's process pool."""
    return ProcessPoolExecutor(max_workers=n_workers)


def build_thread_executor(n_workers: int) -> Executor:
    """Return a thread pool; tasks share this process."""
    return ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="taskcloud")


def build_dask_executor(n_workers: int) -> Executor:
    """Return an executor on the current dask client, or on a new loopback cluster."""
    from distributed import Client

    try:
        client = Client.current()
    except ValueError:
        return DaskExecutor.start(n_workers)
    if not _usable(client):
        # A default client whose cluster is gone (a named cluster killed, say).
        return DaskExecutor.start(n_workers)
    return DaskExecutor(client)


def _usable(client: Any) -> bool:
    """Whether ``client`` is connected, and its taskcloud cluster (if any) still runs."""
    if client.status != "running":
        return False
    check = getattr(getattr(client, "cluster", None), "check_running", None)
    if not callable(check):
        return True
    try:
        check()
    except LookupError:
        return False
    return True


class DaskExecutor(Executor):
    """Calls on a dask client, as ``concurrent.futures`` futures.

    A call handed to dask cannot be taken back by ``Future.cancel()``: its future is
    running from the start, as it is once a process pool has sent a call to a worker.
    Ctrl-C is :meth:`kill`. With a ``cluster``, the executor started that cluster
    and closes it, and its client, on shutdown.

    A small ``bytes`` result (pytask's calls return their pickled outcome) comes back
    as a dask event that the worker sends just before it reports the task done: it
    rides on the streams that carry that report anyway, where fetching it would cost
    a request from here to the scheduler and one from there to the worker.
    """

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self._client = client
        self._cluster = cluster
        self._calls: dict[Future[Any], Any] = {}
        self._by_key: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._killed = False
        self._topic = f"taskcloud-results-{uuid.uuid4().hex}"
        self._order = itertools.count()
        client.subscribe_topic(self._topic, self._on_result)

    @classmethod
    def start(cls, n_workers: int) -> DaskExecutor:
        """Start a scheduler and ``n_workers`` one-thread workers, each its own process.

        The scheduler runs apart from pytask's process, so that routing each task's
        messages does not take turns with pytask's bookkeeping for the interpreter
        lock; scheduler and workers fork from the fork server. They speak TLS with
        credentials of this cluster's own, and serve no dashboard.
        """
        import dask
        from distributed import Client
        from distributed import system

        from taskcloud.capacity import Shape
        from taskcloud.providers import local
        from taskcloud.providers.cluster import http_config

        # As LocalCluster does: one thread each, the memory dask sees shared out evenly.
        shape = Shape(cpu=1, memory=system.MEMORY_LIMIT // n_workers)
        # No dashboard shows the workers' profiles; sampling them costs each worker a
        # thread's wake-up every 10 ms.
        settings = {"distributed.worker.profile.enabled": False, **http_config(False)}
        with dask.config.set(settings), forking_workers():
            cluster = local.build(
                shape,
                n_workers,
                name="taskcloud-dask-backend",
                worker_options={"silence_logs": logging.WARNING},
            )
        # Results too large for an event come through the scheduler: one request
        # from this process instead of two (where is it, then fetch it from there).
        return cls(Client(cluster, set_as_default=False), cluster)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        key = f"{getattr(fn, '__name__', 'call')}-{uuid.uuid4().hex}"
        with self._lock:
            self._by_key[key] = future
        # dask runs what it was given in its own order; earlier submissions first, as
        # in a process pool, keeps pytask's try_first and try_last.
        priority = -next(self._order)
        call = self._client.submit(
            _publish, self._topic, fn, *args, key=key, pure=False, priority=priority, **kwargs
        )
        with self._lock:
            self._calls[future] = call
        future.add_done_callback(self._forget)
        self._client.loop.add_callback(self._pass_on, key, call, future)
        return future

    def _on_result(self, event: tuple[float, Any]) -> None:
        """A small result, sent by the worker as an event ahead of its task's end."""
        key, payload = event[1]
        with self._lock:
            future = self._by_key.pop(key, None)
        if future is not None and not future.done():
            future.set_result(payload)

    async def _pass_on(self, key: str, call: Any, future: Future[Any]) -> None:
        """Pass on the outcome of ``call``, unless its result came as an event."""
        try:
            await until_done(call)
            if not future.done():
                result = await call
                if not future.done():
                    future.set_result(result)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
        finally:
            with self._lock:
                self._by_key.pop(key, None)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._calls.pop(future, None)

    @property
    def owns_cluster(self) -> bool:
        """Whether this executor started its cluster (and so knows its workers)."""
        return self._cluster is not None

    @property
    def topic(self) -> str:
        """The dask event topic on which small results arrive."""
        return self._topic

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        with self._lock:
            calls = dict(self._calls)
        if cancel_futures and calls:
            self._client.cancel(list(calls.values()))
        elif wait and calls:
            futures_wait(calls)
        if self._cluster is not None:
            # A worker's heartbeat that meets the closing scheduler logs a traceback.
            # Killed workers send none, and the scheduler may not know yet that they
            # are gone: asking them would wait 30 s for each to answer.
            if not self._killed:
                with suppress(Exception):
                    self._client.run(_stop_heartbeat)
            self._client.close()
            self._cluster.close()
        elif self._client.status == "running":
            self._client.unsubscribe_topic(self._topic)

    def kill(self) -> None:
        """Cancel every call; end the worker processes of a cluster this executor started."""
        if self._cluster is not None:
            self._cluster.kill()
            self._killed = True
        self.shutdown(wait=False, cancel_futures=True)


def _stop_heartbeat(dask_worker: Any) -> None:
    """Run on each worker of a cluster about to close: no more heartbeats."""
    dask_worker.periodic_callbacks["heartbeat"].stop()


#: Results up to this size travel from the worker in an event, on the streams that
#: already carry the task's end, instead of in a fetch of their own; the scheduler
#: keeps the last thousand events of a topic.
EVENT_RESULT_LIMIT = 32 * 2**10


def _publish(topic: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on a dask worker; a small ``bytes`` result goes out as an event."""
    result = fn(*args, **kwargs)
    if isinstance(result, bytes) and len(result) <= EVENT_RESULT_LIMIT:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(topic, (worker.get_current_task(), result))
        return None
    return result


_BUILTIN: tuple[tuple[ParallelBackend, Callable[..., Executor], WorkerType], ...] = (
    (ParallelBackend.LOKY, build_loky_executor, WorkerType.PROCESSES),
    (ParallelBackend.PROCESSES, build_process_executor, WorkerType.PROCESSES),
    (ParallelBackend.THREADS, build_thread_executor, WorkerType.THREADS),
    (ParallelBackend.DASK, build_dask_executor, WorkerType.PROCESSES),
)


def default_n_workers() -> int:
    """The value of ``-n auto``: the cores of this machine less one, at least one."""
    return max((os.cpu_count() or 1) - 1, 1)


def parse_parallel_options(n_workers: Any, parallel_backend: Any) -> tuple[int, str]:
    """The number of workers and the backend name that ``-n`` and
    ``--parallel-backend`` ask for.

    A backend that is given, ``none`` included, is kept. Without one, ``-n`` above one
    or ``-n auto`` (even where that is one worker) means loky, else ``none``.
    """
    count = workers_for_n(1 if n_workers is None else n_workers)
    if parallel_backend is not None and parallel_backend != "":
        return count, backend_name(parallel_backend)
    if count > 1 or is_auto(n_workers):
        return count, ParallelBackend.LOKY.value
    return count, ParallelBackend.NONE.value


def is_auto(value: Any) -> bool:
    """Whether ``-n`` asks for ``auto``."""
    return isinstance(value, str) and value.strip() == "auto"


def workers_for_n(value: Any) -> int:
    """Turn ``-n`` into a number of workers: an integer >= 1, or 'auto'."""
    if is_auto(value):
        return default_n_workers()
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InvalidOptionError("n_workers", value, "an integer >= 1 or 'auto'")


registry = ParallelBackendRegistry()
