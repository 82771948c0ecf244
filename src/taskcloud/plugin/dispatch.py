"""Runs a pytask session's tasks on a parallel backend.

:class:`ParallelExecution` is registered only when parallel execution is on. It
replaces pytask's serial ``pytask_execute_build``: ready tasks are set up in this
process, shipped to the backend's executor and, as each future finishes (the loop
waits on the first one to complete, it never polls), their outcomes are turned into
pytask's reports.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import sys
import threading
import types
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import CancelledError
from concurrent.futures import Executor
from concurrent.futures import Future
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait
from contextlib import contextmanager
from contextlib import suppress
from typing import Any

import cloudpickle
from attrs import define
from attrs import field
from pytask import ExecutionError
from pytask import ExecutionReport
from pytask import PTask
from pytask import Session
from pytask import TaskOutcome
from pytask import WarningReport
from pytask import console
from pytask import get_marks
from pytask import hookimpl
from pytask import parse_warning_filter
from rich.text import Text

from taskcloud.backends import Backend
from taskcloud.backends import WorkerType
from taskcloud.backends import registry
from taskcloud.errors import TaskcloudError
from taskcloud.frames import visible
from taskcloud.functions import Function
from taskcloud.functions import decorated
from taskcloud.pickling import dumps
from taskcloud.pickling import ship
from taskcloud.plugin import worker
from taskcloud.plugin.batches import BUDGET
from taskcloud.plugin.batches import Batches
from taskcloud.plugin.call import CallOutcome
from taskcloud.plugin.call import RenderOptions
from taskcloud.plugin.call import TaskCall
from taskcloud.plugin.nodes import Arguments
from taskcloud.plugin.nodes import load_arguments
from taskcloud.plugin.nodes import store_files
from taskcloud.plugin.nodes import store_return
from taskcloud.plugin.summary import where_table
from taskcloud.pools import pools
from taskcloud.providers import start_forkserver

__all__ = ["ParallelExecution"]

#: Calls kept on the backend per worker: one running and one queued behind it, so a
#: worker never idles while this process reports on the call it just finished.
_QUEUE_DEPTH = 2

#: Ask pytask's scheduler for every ready task at once.
_ALL = 2**31
_ORDER = itertools.count()


@define
class _Running:
    """A task whose call is on the backend or on a pool."""

    task: PTask
    arguments: Arguments
    where: str
    local: bool
    #: The call as it travels: pickled, except to a thread of this process.
    payload: Any = None


@define
class ParallelExecution:
    """Executes one session's tasks on the backend ``backend`` with ``n_workers``."""

    backend: str
    n_workers: int
    _executor: Executor | None = field(default=None, init=False)
    _built_from: Backend | None = field(default=None, init=False)
    _warming: threading.Thread | None = field(default=None, init=False)
    where: Counter[str] = field(factory=Counter, init=False)

    @hookimpl(trylast=True)
    def pytask_log_session_header(self) -> None:
        console.print(f"Running tasks on {self.n_workers} workers of the {self.backend!r} backend.")

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
            self._warm(backend)
            return
        # The fork server imports dask in its own process while this one does the same
        # for the scheduler; the cluster's workers then fork from it. This thread
        # imports dask before the cluster starts in another: imports racing between
        # threads can see half-initialised modules.
        start_forkserver()
        import distributed  # noqa: F401

        self._warming = threading.Thread(
            target=self._warm, args=(backend,), name="taskcloud-warm", daemon=True
        )
        self._warming.start()

    def _warm(self, backend: Backend) -> None:
        try:
            executor = backend.build(self.n_workers)
            if backend.worker_type is WorkerType.PROCESSES:
                worker.warm(executor, self.n_workers)
        except Exception:
            return
        else:
            self._executor, self._built_from = executor, backend

    def _take_executor(self, backend: Backend) -> Executor:
        if self._warming is not None:
            self._warming.join()
            self._warming = None
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
        with _threads_capture(session, backend):
            _Loop(session, backend, executor, self.n_workers, self.where).run(self)
        return True

    def kill(self) -> None:
        """Stop every worker now: queued calls are cancelled, running ones killed."""
        executor, self._executor, self._built_from = self._executor, None, None
        if executor is not None:
            _kill(executor)
        pools.close_all(kill=True)

    def _shutdown(self) -> None:
        executor, self._executor, self._built_from = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=True)

    @hookimpl
    def pytask_unconfigure(self) -> None:
        """Stop the workers once pytask has reported."""
        if self._warming is not None:
            self._warming.join()
        self._shutdown()
        pools.close_all()

    @hookimpl(tryfirst=True)
    def pytask_log_session_footer(self) -> None:
        """Say where the tasks ran, and what each pool did."""
        if self.where:
            console.print(where_table(self.where, pools.active()))


@define
class _Loop:
    """The dispatch loop of one build."""

    session: Session
    backend: Backend
    executor: Executor
    n_workers: int
    where: Counter[str]
    #: What each future on the backend or a pool carries: one task, or a batch.
    running: dict[Future[Any], list[_Running]] = field(factory=dict)
    waiting: list[tuple[int, int, PTask]] = field(factory=list)
    local_running: int = 0
    batches: Batches = field(factory=Batches)

    def __attrs_post_init__(self) -> None:
        # Threads need no trip to a worker. With -x or --max-failures, a batch
        # already sent would run on after the failure that stops the session.
        stops = self.session.config.get("max_failures", float("inf")) < float("inf")
        self.batches.enabled = self.backend.worker_type is not WorkerType.THREADS and not stops

    def run(self, owner: ParallelExecution) -> None:
        try:
            while self.running or self._can_start() or self._may_start_waiting():
                if self._start_ready():
                    continue
                if not self.running:
                    break
                done, _ = wait(self.running, return_when=FIRST_COMPLETED)
                reports = [
                    report
                    for future in done
                    for report in self._finish(self.running.pop(future), future)
                ]
                self._report_all(reports)
        except KeyboardInterrupt:
            cancelled = {future: future.cancel() for future in self.running}
            owner.kill()
            self._interrupt(cancelled)

    def _can_start(self) -> bool:
        scheduler = self.session.scheduler
        return scheduler is not None and scheduler.is_active() and not self.session.should_stop

    def _may_start_waiting(self) -> bool:
        return bool(self.waiting) and not self.session.should_stop

    def _free(self) -> int:
        return self.n_workers * _QUEUE_DEPTH - self.local_running

    def _start_ready(self) -> bool:
        """Start what may start; True if some task finished without a worker.

        Tasks for a pool start as soon as they are ready, so that the pool sees its
        whole queue and scales; other tasks wait for a free local worker.
        """
        finished = False
        if self._can_start():
            scheduler = self.session.scheduler
            ready = scheduler.get_ready(_ALL)  # type: ignore[union-attr]
            priorities = getattr(scheduler, "priorities", {})
            # get_ready lists the highest priority last; start that first.
            for signature in reversed(ready):
                task = self.session.dag.nodes[signature]
                function = _pool_function(task)  # type: ignore[arg-type]
                if function is not None:
                    finished |= self._start_on_pool(task, function)  # type: ignore[arg-type]
                else:
                    entry = (-priorities.get(signature, 0), next(_ORDER), task)
                    heapq.heappush(self.waiting, entry)  # type: ignore[misc]
        while self._may_start_waiting() and self._free() > 0:
            finished |= self._start_batch(self.batches.size(len(self.waiting), self._free()))
        return finished

    def _start_batch(self, size: int) -> bool:
        """Send up to ``size`` waiting tasks in one submission; only tiny ones share."""
        finished = False
        batch: list[_Running] = []
        while len(batch) < size and self._may_start_waiting():
            task = self.waiting[0][2]
            tiny = self.batches.tiny(task.function)
            if batch and not tiny:
                break
            heapq.heappop(self.waiting)
            prepared = self._prepare(task, where=f"{self.backend.name} backend")
            if prepared is None:
                finished = True
            else:
                batch.append(prepared)
            if not tiny:
                break
        if batch:
            self._submit_batch(batch)
        return finished

    def _prepare(self, task: PTask, where: str) -> _Running | None:
        """Set ``task`` up and return it with its call, pickled unless it stays in
        this process; None once the task finished here instead.

        A task that is no plain function, or generates tasks, runs in this process;
        a failing setup or a call that cannot be pickled is reported like any failure.
        """
        session = self.session
        session.hook.pytask_execute_task_log_start(session=session, task=task)
        try:
            session.hook.pytask_execute_task_setup(session=session, task=task)
            if not isinstance(task.function, types.FunctionType) or _generates(task):
                session.hook.pytask_execute_task(session=session, task=task)
                session.hook.pytask_execute_task_teardown(session=session, task=task)
            else:
                running, call = self._call(task, where)
                threads = self.backend.worker_type is WorkerType.THREADS
                running.payload = call if running.local and threads else dumps(call)
                return running
        except KeyboardInterrupt:
            raise
        except Exception:
            report = ExecutionReport.from_task_and_exception(task, sys.exc_info())
        else:
            report = ExecutionReport.from_task(task)
        self._report(report)
        return None

    def _call(self, task: PTask, where: str) -> tuple[_Running, TaskCall]:
        function = _pool_function(task)
        arguments = load_arguments(task, remote=self.backend.remote and function is None)
        call = TaskCall(
            name=task.name,
            function=ship(task.function, getattr(task, "path", None)),
            kwargs=arguments.kwargs,
            capture=self.session.config.get("capture") != "no",
            filters=_filters(self.session, task),
            render=RenderOptions(
                width=console.width,
                color_system=console.color_system,
                show_locals=bool(self.session.config.get("show_locals")),
            ),
            wants_return="return" in task.produces,
            has_files=arguments.has_files,
        )
        return _Running(task, arguments, where, local=function is None), call

    def _start_on_pool(self, task: PTask, function: Function[Any]) -> bool:
        pool, spec = function.pool, function.spec
        running = self._prepare(task, where=pool.label)
        if running is None:
            return True
        try:
            future = pool.submit(
                task.name,
                worker.run_serialized,
                (running.payload,),
                environ=spec.environ,
                retries=spec.retries,
                timeout=spec.timeout,
            )
        except KeyboardInterrupt:
            raise
        except Exception:
            self._report(ExecutionReport.from_task_and_exception(task, sys.exc_info()))
            return True
        self.running[future] = [running]
        return False

    def _submit_batch(self, batch: list[_Running]) -> None:
        """Submit the calls of ``batch`` as one item of the backend's executor; if the
        executor refuses it, every task of the batch fails with its error."""
        payloads = [running.payload for running in batch]
        future: Future[Any]
        try:
            if self.backend.worker_type is WorkerType.THREADS:
                future = self.executor.submit(worker.run_call, *payloads)
            elif len(payloads) == 1:
                future = self.executor.submit(worker.run_serialized, *payloads)
            else:
                future = self.executor.submit(worker.run_batch, pickle.dumps(payloads), BUDGET)
        except KeyboardInterrupt:
            raise
        except Exception:
            failure = sys.exc_info()
            for running in batch:
                self._report(ExecutionReport.from_task_and_exception(running.task, failure))
            return
        self.running[future] = batch
        self.local_running += 1

    def _finish(self, runnings: list[_Running], future: Future[Any]) -> list[ExecutionReport]:
        """Turn a finished future into the reports of the tasks it carried.

        A batch that ran out of its time budget gives back the calls it did not
        start; they go out again at once, in the slot the batch held.
        """
        self.local_running -= runnings[0].local
        outcomes = _outcomes(future, len(runnings))
        pairs = zip(runnings, outcomes, strict=False)
        reports = [self._finish_one(running, outcome) for running, outcome in pairs]
        if len(outcomes) < len(runnings):
            self._submit_batch(runnings[len(outcomes) :])
        return reports

    def _finish_one(self, running: _Running, outcome: CallOutcome) -> ExecutionReport:
        task, session = running.task, self.session
        self.where[running.where] += 1
        self.batches.record(task.function, outcome.start, outcome.end)
        if outcome.stdout:
            task.report_sections.append(("call", "stdout", outcome.stdout))
        if outcome.stderr:
            task.report_sections.append(("call", "stderr", outcome.stderr))
        session.warnings.extend(
            WarningReport(message=text, fs_location=(path, line), id_=task.name)
            for text, path, line in outcome.warnings
        )
        if outcome.exc_info is not None:
            return ExecutionReport.from_task_and_exception(task, outcome.exc_info)
        return self._teardown(running, outcome)

    def _report_all(self, reports: list[ExecutionReport]) -> None:
        """Report finished calls; when all succeeded, start their dependents first.

        For a success pytask's report hooks only record the task's state, which
        its dependents do not read, and that bookkeeping is most of what this
        process does per task. Starting the dependents before it lets a worker run
        the next link of a chain meanwhile. A failure is reported first, as in a
        serial run, since it marks dependents to skip and may stop the session.
        """
        released = all(
            report.outcome == TaskOutcome.SUCCESS and report.exc_info is None for report in reports
        )
        if released:
            self.session.scheduler.done(*(report.task.signature for report in reports))  # type: ignore[union-attr]
            self._start_ready()
        for report in reports:
            self._report(report, done=released)

    def _teardown(self, running: _Running, outcome: CallOutcome) -> ExecutionReport:
        task, session = running.task, self.session
        try:
            store_return(task, outcome.value)
            store_files(running.arguments, outcome.files)
            task.attributes["duration"] = (outcome.start, outcome.end)
            session.hook.pytask_execute_task_teardown(session=session, task=task)
        except KeyboardInterrupt:
            raise
        except Exception:
            return ExecutionReport.from_task_and_exception(task, sys.exc_info())
        return ExecutionReport.from_task(task)

    def _report(self, report: ExecutionReport, *, done: bool = False) -> None:
        session, task = self.session, report.task
        session.hook.pytask_execute_task_process_report(session=session, report=report)
        session.hook.pytask_execute_task_log_end(session=session, task=task, report=report)
        session.execution_reports.append(report)
        if not done:
            session.scheduler.done(task.signature)  # type: ignore[union-attr]

    def _interrupt(self, cancelled: dict[Future[Any], bool]) -> None:
        """Report the tasks Ctrl-C stopped or cancelled, and stop the session."""
        self.session.should_stop = True
        for future, runnings in list(self.running.items()):
            for running in runnings:
                exc = KeyboardInterrupt(
                    "Ctrl-C cancelled this task before it started."
                    if cancelled[future]
                    else "Ctrl-C stopped the run before this task finished."
                )
                report = ExecutionReport.from_task_and_exception(
                    running.task, (KeyboardInterrupt, exc, None)
                )
                self._report(report)
        self.running.clear()


def _pool_function(task: PTask) -> Function[Any] | None:
    """The ``@taskcloud.function`` behind a task, if it has one."""
    return decorated(task.function)


def _generates(task: PTask) -> bool:
    """Whether the task is a task generator, which must run in pytask's process."""
    return bool(task.attributes.get("is_generator"))


def _filters(session: Session, task: PTask) -> tuple[Any, ...]:
    args = list(session.config.get("filterwarnings") or ())
    args += [arg for mark in get_marks(task, "filterwarnings") for arg in mark.args]
    return tuple(parse_warning_filter(arg, escape=False) for arg in args)


def _outcomes(future: Future[Any], n_calls: int) -> list[CallOutcome]:
    """Read a finished future of ``n_calls`` calls; a failure of the backend itself
    (a worker lost, the submission cancelled) fails each of them."""
    try:
        result = future.result()
    except (Exception, CancelledError) as exc:
        return [CallOutcome(exc_info=(type(exc), exc, visible(exc.__traceback__)))] * n_calls
    if n_calls > 1:
        return [cloudpickle.loads(blob) for blob in pickle.loads(result)]
    if isinstance(result, bytes):
        return [cloudpickle.loads(result)]
    return [result]


@contextmanager
def _threads_capture(session: Session, backend: Backend) -> Iterator[None]:
    """Let worker threads capture per task while pytask's global capture rests.

    pytask's capture manager swaps ``sys.stdout`` for the whole process around each
    setup and teardown in this thread; with tasks running in other threads of this
    process that would mix their output. For the build, the capture manager gets a
    capture that does nothing, and each thread captures its own task's output.
    """
    if backend.worker_type is not WorkerType.THREADS:
        yield
        return
    manager = session.config["pm"].get_plugin("capturemanager")
    saved = getattr(manager, "_capturing", None)
    if saved is not None:
        from _pytask.capture import CaptureMethod
        from _pytask.capture import _get_multicapture

        idle = _get_multicapture(CaptureMethod.NO)
        idle.start_capturing()
        manager._capturing = idle
    interceptor = worker.interceptor()
    interceptor.install()
    try:
        yield
    finally:
        interceptor.uninstall()
        if saved is not None:
            manager._capturing = saved


def _kill(executor: Executor) -> None:
    """Cancel queued work and end worker processes without waiting for them."""
    kill = getattr(executor, "kill", None)
    if callable(kill):
        kill()
        return
    if isinstance(executor, ProcessPoolExecutor):
        for process in list(getattr(executor, "_processes", {}).values()):
            with suppress(Exception):
                process.kill()
    for kwargs in ({"kill_workers": True}, {"cancel_futures": True}, {}):
        with suppress(TypeError):
            executor.shutdown(wait=False, **kwargs)
            return
