"""The scheduler over the wire: a scheduler plugin that logs events and answers
requests, a pool's watch that follows the events, and a named cluster's daemon's side
of the requests relayed to it.

Nothing here assumes that the scheduler runs in this process. :class:`SchedulerEvents`
runs in the scheduler, wherever that is (this process, a process of its own, a server):
it is registered over the wire, logs an event as a call goes to a worker and as a worker
arrives, answers the requests a cluster makes of the scheduler (``taskcloud_replace``,
``taskcloud_activity``, ``taskcloud_idle``), and relays clients' requests of a named
cluster (``taskcloud_scale``, ...) to its daemon, which takes them with :func:`serve`.
:class:`PoolWatch` runs beside the pool's client and learns everything from events the
client subscribed to: the plugin's, the nannies' (``worker-restart-memory``,
:data:`WORKER_EXIT`) and the workers' (:data:`CALL_STARTED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps
from distributed.protocol.pickle import loads

from taskcloud.providers import CALL_STARTED
from taskcloud.providers import WORKER_EXIT

__all__ = ["ARRIVED", "PROCESSING", "PoolWatch", "SchedulerEvents", "install", "serve"]

#: The event of calls going to workers: ``[[key, worker address], ...]``, gathered
#: over one turn of the scheduler's event loop (a map's thousand calls make a few
#: events, not a thousand).
PROCESSING = "taskcloud-processing"

#: The event of a worker arriving: its address, its nanny's, how many there are now,
#: and how many arrived and were there at once since the scheduler started.
ARRIVED = "taskcloud-worker-arrived"

#: What the nanny of a worker it killed for memory logs (dask's own event).
MEMORY_KILL = "worker-restart-memory"

#: The keys a pool gives its calls: the function's name, 12 hex digits, maybe ``-timed``.
_CALL_KEY = re.compile(r"-[0-9a-f]{12}(-timed)?$")


class SchedulerEvents(SchedulerPlugin):
    """In the scheduler: logs :data:`PROCESSING` and :data:`ARRIVED`, and answers

    * ``taskcloud_replace(address)``: let the worker at ``address`` go at once, without
      counting against the calls it ran (they run again elsewhere); its name, or None;
    * ``taskcloud_activity()``: whether anything runs or waits, and the names of the
      workers that hold data (which may not retire yet);
    * ``taskcloud_arrivals()``: what :data:`ARRIVED` says, for a watch that starts
      after workers arrived;
    * ``taskcloud_idle()``: since when (``time.time()``) nothing ran or waited, None
      while busy;

    and relays to a named cluster's daemon, wherever it runs, the requests of the names
    it asked for (``taskcloud_serve(names)``): each request waits in a queue until the
    daemon takes it (``taskcloud_request()``, which returns None once the scheduler
    closes), and its caller gets what the daemon answers (``taskcloud_answer``), its
    error raised.
    """

    name = "taskcloud-events"
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.added = 0
        self.peak = 0
        #: Calls that went to workers in this turn of the event loop, not yet logged.
        self._processing: list[list[Any]] = []

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        #: Requests for the daemon, until it takes them; None once the scheduler closes.
        self._requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        #: What each relayed request's caller waits for, by the request's number.
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._numbers = 0
        scheduler.handlers.update(
            {
                "taskcloud_replace": self.replace,
                "taskcloud_activity": self.activity,
                "taskcloud_arrivals": self.arrivals,
                "taskcloud_idle": self.idle_since,
                "taskcloud_serve": self.serve,
                "taskcloud_request": self.request,
                "taskcloud_answer": self.answer,
            }
        )

    async def close(self) -> None:
        self._requests.put_nowait(None)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish != "processing" or not isinstance(key, str) or not _CALL_KEY.search(key):
            return
        state = self.scheduler.tasks.get(key)
        where = getattr(getattr(state, "processing_on", None), "address", None)
        if not self._processing:
            asyncio.get_running_loop().call_soon(self._log_processing)
        self._processing.append([key, where])

    def _log_processing(self) -> None:
        gathered, self._processing = self._processing, []
        self.scheduler.log_event(PROCESSING, gathered)

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.added += 1
        self.peak = max(self.peak, len(scheduler.workers))
        state = scheduler.workers.get(worker)
        nanny = "" if state is None else str(state.nanny or "")
        scheduler.log_event(ARRIVED, {"worker": worker, "nanny": nanny, **self.arrivals()})

    def arrivals(self) -> dict[str, Any]:
        workers = self.scheduler.workers
        return {
            "n": len(workers),
            "added": self.added,
            "peak": self.peak,
            "nannies": {str(s.nanny): a for a, s in workers.items() if s.nanny},
        }

    async def replace(self, address: str) -> Any:
        state = self.scheduler.workers.get(address)
        if state is None:
            return None
        await self.scheduler.remove_worker(
            address, stimulus_id=f"taskcloud-replace-{time.time()}", expected=True, close=False
        )
        return state.name

    def activity(self) -> dict[str, Any]:
        scheduler = self.scheduler
        workers = scheduler.workers.values()
        busy = bool(scheduler.queued or scheduler.unrunnable or any(w.processing for w in workers))
        return {"busy": busy, "holding": [w.name for w in workers if w.has_what]}

    def idle_since(self) -> float | None:
        return self.scheduler.idle_since

    # -- requests relayed to a named cluster's daemon -------------------------------------

    def serve(self, names: list[str]) -> None:
        """Relay clients' requests of these names to the daemon."""
        for name in names:
            self.scheduler.handlers[name] = self._relay(name)

    def _relay(self, name: str) -> Callable[..., Any]:
        async def relay(**arguments: Any) -> Any:
            self._numbers += 1
            number = self._numbers
            answer = asyncio.get_running_loop().create_future()
            self._answers[number] = answer
            self._requests.put_nowait({"number": number, "name": name, "arguments": arguments})
            try:
                return await answer
            finally:
                self._answers.pop(number, None)

        return relay

    async def request(self) -> dict[str, Any] | None:
        """The next request for the daemon, once there is one; None once closing."""
        return await self._requests.get()

    def answer(self, number: int, result: Any = None, error: bytes | None = None) -> None:
        """The daemon's answer to the request ``number``: its result, or its error
        (pickled), for the request's caller."""
        answer = self._answers.get(number)
        if answer is None or answer.done():
            return
        if error is None:
            answer.set_result(result)
        else:
            answer.set_exception(loads(error))


async def install(scheduler_comm: Any) -> None:
    """Register :class:`SchedulerEvents` with the scheduler behind ``scheduler_comm`` (a
    cluster's rpc), once; as ``Client.register_plugin`` does."""
    await scheduler_comm.register_scheduler_plugin(
        plugin=dumps(SchedulerEvents()), name=SchedulerEvents.name, idempotent=True
    )


async def serve(
    scheduler_comm: Any, handlers: dict[str, Callable[..., Any]]
) -> asyncio.Future[None]:
    """Answer clients' requests of these names with these coroutines: the scheduler
    behind ``scheduler_comm`` (a cluster's rpc; :class:`SchedulerEvents` registered with
    it) relays them to this process. Requests are answered from when this returns until
    the scheduler closes or is gone; then the future it returns is done.
    """
    await scheduler_comm.taskcloud_serve(names=sorted(handlers))
    return asyncio.ensure_future(_take_requests(scheduler_comm, handlers))


async def _take_requests(scheduler_comm: Any, handlers: dict[str, Callable[..., Any]]) -> None:
    """Take the scheduler's requests one by one, each answered in a task of its own."""
    answering: set[asyncio.Future[None]] = set()
    while True:
        try:
            request = await scheduler_comm.taskcloud_request()
        except OSError:  # the scheduler is gone
            return
        if request is None:  # the scheduler closes
            return
        handler = handlers[request["name"]]
        task = asyncio.ensure_future(_answer(scheduler_comm, handler, request))
        answering.add(task)
        task.add_done_callback(answering.discard)


async def _answer(
    scheduler_comm: Any, handler: Callable[..., Any], request: dict[str, Any]
) -> None:
    """Run ``handler`` for ``request``; send the scheduler its result, or its error."""
    try:
        answer = {"result": await handler(**request["arguments"])}
    except Exception as exc:
        answer = {"error": _pickled(exc)}
    with contextlib.suppress(OSError):  # the scheduler is gone, and the caller with it
        await scheduler_comm.taskcloud_answer(number=request["number"], **answer)


def _pickled(error: Exception) -> bytes:
    """``error`` pickled; one that does not pickle, as a RuntimeError in its words."""
    try:
        return bytes(dumps(error))
    except Exception:
        return bytes(dumps(RuntimeError(f"{type(error).__name__}: {error}")))


class PoolWatch:
    """What a pool's calls learn about their tasks and workers, from events.

    Its handlers run in the client's event loop; the pool reads it from other threads.
    ``stats`` counts the workers as they arrive.
    """

    def __init__(self, client: Any, stats: Any) -> None:
        self.client = client
        self.stats = stats
        self.memory_kills: dict[str, int] = {}
        self.exit_codes: dict[str, int] = {}
        self._latest_of_nanny: dict[str, str] = {}
        self.changed = threading.Condition()
        self._lock = threading.Lock()
        self._on_start: dict[str, Callable[[str], None]] = {}
        self._on_executing: dict[str, Callable[[str, float], None]] = {}
        #: Where each followed call runs, by key (None until it goes to a worker).
        self._where: dict[str, str | None] = {}

    @classmethod
    def attach(cls, client: Any, stats: Any) -> PoolWatch:
        """Register the scheduler's plugin through ``client`` (once per scheduler) and
        follow its events, the nannies' and the workers'."""
        watch = cls(client, stats)
        client.register_plugin(SchedulerEvents(), name=SchedulerEvents.name)
        handlers = {
            PROCESSING: watch._processing,
            ARRIVED: watch._arrived,
            CALL_STARTED: watch._call_started,
            MEMORY_KILL: watch._memory_killed,
            WORKER_EXIT: watch._exited,
        }
        # Subscriptions travel ahead of the first call's graph, on the same stream.
        for topic, handler in handlers.items():
            client.subscribe_topic(topic, handler)
        # Workers that arrived before the subscription.
        watch._count(client.sync(client.scheduler.taskcloud_arrivals))
        return watch

    # -- what calls ask -------------------------------------------------------------------

    def on_start(self, key: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when the task ``key`` goes to a worker."""
        with self._lock:
            self._on_start[key] = callback
            self._where[key] = None

    def on_executing(self, key: str, callback: Callable[[str, float], None]) -> None:
        """Call ``callback(key, since)`` when a worker's thread starts the timed ``key``."""
        with self._lock:
            self._on_executing[key] = callback

    def forget(self, key: str) -> None:
        """The call ``key`` ended: nothing more about it is wanted."""
        with self._lock:
            self._on_start.pop(key, None)
            self._on_executing.pop(key, None)
            self._where.pop(key, None)

    def running_on(self, key: str) -> str | None:
        """The address of the worker the task ``key`` went to, if it did; asked of the
        scheduler when no event said (not from the client's event loop)."""
        with self._lock:
            where = self._where.get(key)
        if where is not None:
            return where
        try:
            processing = self.client.processing()
        except Exception:  # the scheduler is gone
            return None
        return next((worker for worker, keys in processing.items() if key in keys), None)

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

    # -- events, in the client's event loop -----------------------------------------------

    def _processing(self, event: tuple[float, Any]) -> None:
        started = []
        with self._lock:
            for key, where in event[1]:
                if key in self._where:
                    self._where[key] = where
                    started.append((key, self._on_start.pop(key, None)))
        for key, callback in started:
            if callback is not None:
                callback(key)

    def _call_started(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if not isinstance(message, dict):
            return
        key = str(message.get("key"))
        with self._lock:
            callback = self._on_executing.pop(key, None)
        if callback is not None:
            callback(key, float(message.get("since", 0.0)))

    def _arrived(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict):
            self._count(message)

    def _count(self, message: dict[str, Any]) -> None:
        with self.changed:
            self._latest_of_nanny.update(message.get("nannies") or {})
            if message.get("nanny") and message.get("worker"):
                self._latest_of_nanny[message["nanny"]] = message["worker"]
        self.stats.started = max(self.stats.started, int(message.get("added", 0)))
        self.stats.peak = max(self.stats.peak, int(message.get("peak", 0)))

    def _exited(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if not isinstance(message, dict):
            return
        with self.changed:
            # A worker that died while it started is known here, not to its nanny.
            nanny = str(message.get("nanny", ""))
            worker = message.get("worker") or self._latest_of_nanny.get(nanny, "")
            self.exit_codes[worker] = int(message.get("exitcode", 0))
            self.changed.notify_all()

    def _memory_killed(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if not isinstance(message, dict):
            return
        with self.changed:
            self.memory_kills[str(message.get("worker", ""))] = int(message.get("rss", 0))
            self.changed.notify_all()
