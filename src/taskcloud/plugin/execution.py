"""The parallel execution of one pytask session, and when its workers start.

:class:`ParallelExecution` is registered only when parallel execution is on. It owns
the backend's executor from start to end: it is the one place that decides when the
workers start (as soon as the configuration is known, or the pool the early start
made), hands them to the dispatch loop of the build, and stops them: killed on Ctrl-C
or once ``-x``/``--max-failures`` is reached, shut down after pytask has reported.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from attrs import define
from attrs import field
from pytask import ExecutionError
from pytask import Session
from pytask import TaskExecutionStatus
from pytask import console
from pytask import hookimpl
from rich.text import Text

from taskcloud import worker
from taskcloud.backends import Backend
from taskcloud.backends import DaskExecutor
from taskcloud.backends import WorkerType
from taskcloud.backends import registry
from taskcloud.errors import TaskcloudError
from taskcloud.plugin.capture import threads_capture
from taskcloud.plugin.dispatch import Dispatch
from taskcloud.plugin.interrupt import kill_executor
from taskcloud.plugin.summary import where_table
from taskcloud.pools import pools
from taskcloud.providers import start_forkserver

__all__ = ["ParallelExecution"]


@define
class ParallelExecution:
    """Executes one session's tasks on the backend ``backend`` with ``n_workers``."""

    backend: str
    n_workers: int
    _executor: Executor | None = field(default=None, init=False)
    _built_from: Backend | None = field(default=None, init=False)
    _starting: threading.Thread | None = field(default=None, init=False)
    where: Counter[str] = field(factory=Counter, init=False)

    @hookimpl(trylast=True)
    def pytask_log_session_header(self) -> None:
        console.print(f"Running tasks on {self._workers()} of the {self.backend!r} backend.")

    def _workers(self) -> str:
        return "1 worker" if self.n_workers == 1 else f"{self.n_workers} workers"

    def start(self, ready: Executor | None = None) -> None:
        """Start the workers now, so they boot while pytask collects the tasks; or
        take ``ready``, a pool of this backend's that already started.

        Only built-in backends start early: a user's builder may rely on what the
        task modules set up. Process pools start here and boot in the background; a
        dask cluster, whose start blocks, starts in a thread.
        """
        if self.backend not in registry:
            return
        backend = registry.get(self.backend)
        if backend.builder.__module__ != "taskcloud.backends":
            return
        if ready is not None:
            self._executor, self._built_from = ready, backend
            return
        if backend.name != "dask":
            self._build(backend)
            return
        # The fork server imports dask in its own process while this one does the same
        # for the scheduler; the cluster's workers then fork from it. This thread
        # imports dask before the cluster starts in another: imports racing between
        # threads can see half-initialised modules.
        start_forkserver()
        import distributed  # noqa: F401

        self._starting = threading.Thread(
            target=self._build, args=(backend,), name="taskcloud-start", daemon=True
        )
        self._starting.start()

    def _build(self, backend: Backend) -> None:
        """Build the executor of ``backend`` ahead of the build; a failure is left for
        the build to raise."""
        try:
            executor = backend.build(self.n_workers)
            # dask's workers fork from a server that has imported what they run; a
            # warm-up result nobody waits for only makes older schedulers log errors.
            if backend.worker_type is WorkerType.PROCESSES and backend.name != "dask":
                worker.warm(executor, self.n_workers)
        except Exception:
            return
        self._executor, self._built_from = executor, backend

    def _take_executor(self, backend: Backend) -> Executor:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        if self._built_from is backend and self._executor is not None:
            return self._executor
        self._shutdown()
        self._executor, self._built_from = backend.build(self.n_workers), backend
        return self._executor

    @hookimpl(tryfirst=True)
    def pytask_execute_build(self, session: Session) -> bool:
        """Run all tasks; returning True tells pytask the build is done."""
        try:
            backend = registry.get(self.backend)
            executor = self._take_executor(backend)
        except TaskcloudError as exc:
            console.print(Text(str(exc), style="red"))
            raise ExecutionError(str(exc)) from None
        live = session.config["pm"].get_plugin("live_execution")
        if live is not None:
            # Queued tasks show as pending; the dispatch loop marks those that run.
            live.initial_status = TaskExecutionStatus.PENDING
        dispatch = Dispatch(
            session, backend, executor, self.n_workers, self.where, depth=_depth(executor)
        )
        threaded = backend.worker_type is WorkerType.THREADS
        try:
            with _warnings_on_console():
                if threaded:
                    with threads_capture(session):
                        dispatch.run()
                else:
                    dispatch.run()
        except KeyboardInterrupt:
            cancelled = dispatch.cancel()
            self.kill()
            dispatch.interrupted(cancelled)
            return True
        if dispatch.running:  # stopped by -x or --max-failures
            dispatch.cancel()
            self.kill()
            dispatch.stopped()
        return True

    def kill(self) -> None:
        """Stop every worker now: queued calls are cancelled, running ones killed."""
        executor, self._executor, self._built_from = self._executor, None, None
        if executor is not None:
            kill_executor(executor)
        pools.close_all(kill=True)

    def _shutdown(self) -> None:
        executor, self._executor, self._built_from = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=True)

    @hookimpl
    def pytask_unconfigure(self) -> None:
        """Stop the workers once pytask has reported."""
        if self._starting is not None:
            self._starting.join()
        self._shutdown()
        pools.close_all()

    @hookimpl(tryfirst=True)
    def pytask_log_session_footer(self) -> None:
        """Say where the tasks ran, and what each pool did."""
        if self.where:
            workers = {f"{self.backend} backend": self.n_workers}
            console.print(where_table(self.where, pools.active(), workers))


class _ConsoleHandler(logging.Handler):
    """Prints a record through pytask's console, above its live table."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(Text(self.format(record), style="yellow"))


@contextmanager
def _warnings_on_console() -> Iterator[None]:
    """During the build, taskcloud's warnings (a pool that waits for capacity, say)
    show in the run's display instead of on stderr beneath it."""
    logger = logging.getLogger("taskcloud")
    handler = _ConsoleHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _depth(executor: Any) -> int:
    """Calls kept on the backend per worker.

    On a pool of ``n_workers`` processes, one runs and one waits behind it, so a
    worker never idles while this process reports. A dask client that taskcloud did
    not start may have more workers than that: one call per worker keeps at most
    ``n_workers`` tasks running at once there too.
    """
    if isinstance(executor, DaskExecutor) and not executor.owns_cluster:
        return 1
    return 2
