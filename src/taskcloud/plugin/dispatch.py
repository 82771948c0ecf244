"""The dispatch loop of one parallel build.

Ready tasks are set up in pytask's process, shipped to the backend's executor or to
their pool and, as each call finishes, their outcomes are turned into pytask's
reports. The loop sleeps on one queue of events (a call started on a pool's worker, a
call finished); it never polls.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import queue
import sys
import types
from collections import Counter
from collections import deque
from concurrent.futures import CancelledError
from concurrent.futures import Executor
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import cloudpickle
from attrs import define
from attrs import field
from pytask import ExecutionReport
from pytask import PTask
from pytask import Session
from pytask import TaskExecutionStatus
from pytask import TaskOutcome
from pytask import WarningReport
from pytask import console
from pytask import get_marks
from pytask import parse_warning_filter

from taskcloud import worker
from taskcloud.backends import Backend
from taskcloud.backends import WorkerType
from taskcloud.call import CallOutcome
from taskcloud.call import RenderOptions
from taskcloud.call import TaskCall
from taskcloud.errors import TaskcloudError
from taskcloud.frames import visible
from taskcloud.functions import Function
from taskcloud.functions import StaysInProcess
from taskcloud.pickling import dumps
from taskcloud.pickling import ship
from taskcloud.plugin.batches import Batches
from taskcloud.plugin.nodes import Arguments
from taskcloud.plugin.nodes import load_arguments
from taskcloud.plugin.nodes import store_carried
from taskcloud.plugin.nodes import store_files
from taskcloud.plugin.nodes import store_return
from taskcloud.plugin.routing import pool_function
from taskcloud.plugin.routing import submit_to_pool

__all__ = ["Dispatch"]

#: Ask pytask's scheduler for every ready task at once.
_ALL = 2**31
_ORDER = itertools.count()


@define(eq=False)
class _Running:
    """A task whose call is on the backend or on a pool."""

    task: PTask
    arguments: Arguments
    where: str
    local: bool
    #: The call as it travels: pickled, except to a thread of this process.
    payload: Any = None
    #: Whether it runs on a thread of this process whatever the backend: a call that
    #: uses a decorated function, whose pool is this process's, cannot travel.
    in_thread: bool = False


@define
class Dispatch:
    """Runs one build's tasks: on ``executor``, or on their pools.

    Up to ``depth`` calls per worker are on the backend at once, so that a worker
    never idles while this process reports on the call it just finished; the live
    display shows ``n_workers`` of them as running, the others as pending.
    """

    session: Session
    backend: Backend
    executor: Executor
    n_workers: int
    where: Counter[str]
    depth: int = 2
    #: What each future on the backend or a pool carries: one task, or a batch.
    running: dict[Future[Any], list[_Running]] = field(factory=dict)
    waiting: list[tuple[int, int, PTask]] = field(factory=list)
    events: queue.SimpleQueue[tuple[str, Any]] = field(factory=queue.SimpleQueue)
    #: Submissions to the backend, and those of them the display shows as pending.
    local_running: int = 0
    unshown: deque[Future[Any]] = field(factory=deque)
    next_shown: list[_Running] = field(factory=list)
    batches: Batches = field(factory=Batches)
    #: Threads for calls that cannot leave this process (see ``_Running.in_thread``).
    threads: ThreadPoolExecutor | None = None
    #: pytask's ``--capture``, read once per build rather than once per task.
    capture: str = field(init=False, default="fd")

    def __attrs_post_init__(self) -> None:
        self.capture = _capture_method(self.session)
        # Threads need no trip to a worker. With -x or --max-failures, a batch
        # already sent would run on after the failure that stops the session.
        self.batches.enabled = (
            self.backend.worker_type is not WorkerType.THREADS and not _stops_early(self.session)
        )

    def run(self) -> None:
        """Run every task; stops at once on Ctrl-C or when pytask says to stop.

        Either way the caller kills what still runs: :meth:`stopped` says which tasks
        those were.
        """
        try:
            while True:
                finished_here = self._start_ready()
                if self.session.should_stop or not (self.running or finished_here):
                    return
                if finished_here:
                    continue
                self._handle(self.events.get())
        finally:
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)

    def _handle(self, event: tuple[str, Any]) -> None:
        """Act on ``event`` and on every other event already queued."""
        done: list[Future[Any]] = []
        while True:
            kind, subject = event
            if kind == "start":
                self._show(subject.task)
            elif subject in self.running:
                done.append(subject)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
        reports = [report for future in done for report in self._finish(future)]
        self._report_all(reports)
        # Only now, with the finished tasks off the display, do the next show.
        while self.next_shown:
            self._show(self.next_shown.pop().task)

    def _can_start(self) -> bool:
        scheduler = self.session.scheduler
        return scheduler is not None and scheduler.is_active() and not self.session.should_stop

    def _may_start_waiting(self) -> bool:
        return bool(self.waiting) and not self.session.should_stop

    def _free(self) -> int:
        return self.n_workers * self.depth - self.local_running

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
                function = pool_function(task)  # type: ignore[arg-type]
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
            elif prepared.in_thread:
                finished |= self._submit_batch([prepared])
            else:
                batch.append(prepared)
            if not tiny:
                break
        if batch:
            finished |= self._submit_batch(batch)
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
                self._show(task)
                session.hook.pytask_execute_task(session=session, task=task)
                session.hook.pytask_execute_task_teardown(session=session, task=task)
            else:
                running, call = self._call(task, where)
                threads = self.backend.worker_type is WorkerType.THREADS
                try:
                    running.payload = call if running.local and threads else dumps(call)
                except StaysInProcess:
                    if not running.local:
                        raise
                    running.payload, running.in_thread = call, True
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
        function = pool_function(task)
        arguments = load_arguments(task, remote=self.backend.remote and function is None)
        call = TaskCall(
            name=task.name,
            function=ship(task.function, getattr(task, "path", None)),
            kwargs=arguments.kwargs,
            capture=self.capture != "no",
            live=self.capture in ("no", "tee-sys"),
            filters=_filters(self.session, task),
            render=RenderOptions(
                width=console.width,
                color_system=console.color_system,
                show_locals=bool(self.session.config.get("show_locals")),
            ),
            wants_return="return" in task.produces,
            has_files=arguments.has_files,
            carried=tuple(arguments.nodes),
        )
        return _Running(task, arguments, where, local=function is None), call

    def _start_on_pool(self, task: PTask, function: Function[Any]) -> bool:
        """Send ``task`` to its pool; True if it failed here instead."""
        try:
            where = function.pool.label
        except TaskcloudError as exc:
            # A shape no worker can have, say: this task fails, in one line.
            self._fail_here(task, exc)
            return True
        running = self._prepare(task, where=where)
        if running is None:
            return True
        events = self.events
        try:
            future = submit_to_pool(
                function, task.name, running.payload, lambda: events.put(("start", running))
            )
        except KeyboardInterrupt:
            raise
        except TaskcloudError as exc:
            self._fail_here(task, exc, logged=True)
            return True
        except Exception:
            self._report(ExecutionReport.from_task_and_exception(task, sys.exc_info()))
            return True
        self._follow(future, [running])
        return False

    def _fail_here(self, task: PTask, exc: BaseException, *, logged: bool = False) -> None:
        """Report ``task`` failed with ``exc``, whose traceback is only taskcloud's."""
        if not logged:
            self.session.hook.pytask_execute_task_log_start(session=self.session, task=task)
        self._report(ExecutionReport.from_task_and_exception(task, (type(exc), exc, None)))

    def _submit_batch(self, batch: list[_Running]) -> bool:
        """Submit the calls of ``batch`` as one item of the backend's executor; if the
        executor refuses it, every task of the batch fails with its error (True)."""
        payloads = [running.payload for running in batch]
        future: Future[Any]
        try:
            if batch[0].in_thread:
                future = self._threads().submit(worker.run_call, *payloads)
            elif self.backend.worker_type is WorkerType.THREADS:
                future = self.executor.submit(worker.run_call, *payloads)
            elif len(payloads) == 1:
                future = self.executor.submit(worker.run_serialized, *payloads)
            else:
                future = self.executor.submit(
                    worker.run_batch, pickle.dumps(payloads), self.batches.budget
                )
        except KeyboardInterrupt:
            raise
        except Exception:
            failure = sys.exc_info()
            for running in batch:
                self._report(ExecutionReport.from_task_and_exception(running.task, failure))
            return True
        self.local_running += 1
        if self.local_running - len(self.unshown) <= self.n_workers:
            for running in batch:
                self._show(running.task)
        else:
            self.unshown.append(future)
        self._follow(future, batch)
        return False

    def _threads(self) -> ThreadPoolExecutor:
        """Threads of this process for calls that cannot travel, one per worker."""
        if self.threads is None:
            self.threads = ThreadPoolExecutor(self.n_workers, thread_name_prefix="taskcloud")
        return self.threads

    def _follow(self, future: Future[Any], runnings: list[_Running]) -> None:
        self.running[future] = runnings
        future.add_done_callback(lambda done: self.events.put(("done", done)))

    def _show(self, task: PTask) -> None:
        """Show ``task`` as running in pytask's live display."""
        _set_status(self.session, task, TaskExecutionStatus.RUNNING)

    def _finish(self, future: Future[Any]) -> list[ExecutionReport]:
        """Turn a finished future into the reports of the tasks it carried.

        A batch that ran out of its time budget gives back the calls it did not
        start; they go out again at once, in the slot the batch held.
        """
        runnings = self.running.pop(future)
        if runnings[0].local:
            self._release_slot(future)
        outcomes = _outcomes(future, len(runnings))
        pairs = zip(runnings, outcomes, strict=False)
        reports = [self._finish_one(running, outcome) for running, outcome in pairs]
        if len(outcomes) < len(runnings):
            self._submit_batch(runnings[len(outcomes) :])
        return reports

    def _release_slot(self, future: Future[Any]) -> None:
        """A backend submission ended: the next pending one is shown as running."""
        self.local_running -= 1
        if future in self.unshown:
            self.unshown.remove(future)
        elif self.unshown:
            self.next_shown.extend(self.running.get(self.unshown.popleft(), ()))

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
            store_carried(running.arguments, outcome.carried)
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

    def cancel(self) -> dict[Future[Any], bool]:
        """Cancel every call not yet running; which ones were cancelled."""
        return {future: future.cancel() for future in self.running}

    def stopped(self) -> None:
        """After ``-x``/``--max-failures``: the calls that were still on a worker are
        dropped, not reported; the display no longer shows them running."""
        for runnings in self.running.values():
            for running in runnings:
                _set_status(self.session, running.task, TaskExecutionStatus.PENDING)
        self.running.clear()

    def interrupted(self, cancelled: dict[Future[Any], bool]) -> None:
        """After Ctrl-C: report the tasks it stopped or cancelled; stop the session."""
        self.session.should_stop = True
        for future, runnings in list(self.running.items()):
            for running in runnings:
                exc = KeyboardInterrupt(
                    "Ctrl-C cancelled this task before it started."
                    if cancelled.get(future)
                    else "Ctrl-C stopped the run before this task finished."
                )
                report = ExecutionReport.from_task_and_exception(
                    running.task, (KeyboardInterrupt, exc, None)
                )
                self._report(report)
        self.running.clear()


def _stops_early(session: Session) -> bool:
    return session.config.get("max_failures", float("inf")) < float("inf")


def _set_status(session: Session, task: PTask, status: TaskExecutionStatus) -> None:
    """Set the status pytask's live display shows for a task it lists as unfinished."""
    live = session.config["pm"].get_plugin("live_execution")
    if live is None:
        return
    # A KeyError: already reported, or the display does not list it.
    with suppress(KeyError):
        live.update_task(task.signature, status=status)


def _capture_method(session: Session) -> str:
    """pytask's ``--capture`` as a string: pytask keeps a ``CaptureMethod`` there."""
    method = session.config.get("capture", "fd")
    return str(getattr(method, "value", method))


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
