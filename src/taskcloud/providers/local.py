"""The local provider: worker processes of one shape on this host.

A pool is a dask ``SpecCluster`` whose scheduler runs in this process and whose
workers are ``Nanny``-supervised processes listening on 127.0.0.1. The nanny enforces
the memory limit and replaces a worker that dies; an :class:`Adaptive` subclass scales
the pool from its queue, within what :class:`~taskcloud.capacity.HostCapacity` grants.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import dask
from distributed import Nanny
from distributed import Scheduler
from distributed import SpecCluster
from distributed.deploy.adaptive import Adaptive
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import import_term

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.providers import main_module_hidden

__all__ = [
    "CapacityAdaptive",
    "LocalPoolCluster",
    "PoolWatch",
    "scheduler_spec",
    "start",
    "worker_spec",
]

#: How often a pool reconsiders its size.
ADAPT_INTERVAL = 0.2

#: A pool grows while its queue holds more than this much work per worker: a new
#: local worker starts in about a second, so a second of queued work pays for one.
TARGET_DURATION = 1.0


class PoolWatch(SchedulerPlugin):
    """Counts a pool's workers, notes memory kills and when calls start running.

    It runs in the scheduler's event loop; the pool reads it from other threads.
    """

    name = "taskcloud-watch"

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.memory_kills: dict[str, int] = {}
        self.changed = threading.Condition()
        self._on_start: dict[str, Callable[[str], None]] = {}

    def on_start(self, key: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when the task ``key`` starts on a worker."""
        self._on_start[key] = callback

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.stats.started += 1
        self.stats.peak = max(self.stats.peak, len(scheduler.workers))

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == "worker-restart-memory" and isinstance(msg, dict):
            with self.changed:
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

        The nanny's event and the worker's death reach the scheduler separately, so
        this waits up to ``wait`` seconds for the event.
        """
        deadline = time.monotonic() + wait
        with self.changed:
            while worker not in self.memory_kills:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return self.memory_kills.get(worker)


class LocalPoolCluster(SpecCluster):
    """Workers of one shape; GPU workers each get their own ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, *args: Any, capacity: HostCapacity, shape: Shape, **kwargs: Any) -> None:
        self._capacity = capacity
        self._shape = shape
        super().__init__(*args, **kwargs)

    def new_worker_spec(self) -> dict[str, Any]:
        spec = super().new_worker_spec()
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


def scheduler_spec(
    *, dashboard: bool = False, security: Any = None, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A scheduler on 127.0.0.1; TLS when ``security`` is given."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        # Without a dashboard the scheduler still serves /health; keep it on loopback.
        "dashboard": dashboard,
        "dashboard_address": "127.0.0.1:0",
    }
    if security is not None:
        settings.update(security=security, protocol="tls")
    settings.update(options or {})
    return {"cls": Scheduler, "options": settings}


def worker_spec(
    shape: Shape,
    threads_per_worker: int,
    *,
    worker_class: str = "distributed.Nanny",
    security: Any = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Workers of ``shape`` on 127.0.0.1, each tagged with its resources."""
    cls = import_term(worker_class)
    settings: dict[str, Any] = {
        "nthreads": threads_per_worker,
        "memory_limit": shape.memory,
        "resources": {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu},
        "host": "127.0.0.1",
        "dashboard": False,
        "dashboard_address": "127.0.0.1:0",
    }
    if issubclass(cls, Nanny):
        # A failing call is the caller's exception, not a worker's log line.
        settings.update(env={}, silence_logs=logging.CRITICAL)
    if security is not None:
        settings["security"] = security
    settings.update(options or {})
    return {"cls": cls, "options": settings}


def start(
    shape: Shape,
    threads_per_worker: int,
    capacity: HostCapacity,
    name: str,
    minimum: int,
    maximum: int,
    keepalive: float,
) -> LocalPoolCluster:
    """Start an empty pool on this host and let it adapt between its bounds."""
    # A worker that dies fails its call at once; the pool decides about retries.
    settings = {"distributed.scheduler.allowed-failures": 0}
    with dask.config.set(settings), main_module_hidden():
        cluster = LocalPoolCluster(
            workers={},
            scheduler=scheduler_spec(),
            worker=worker_spec(shape, threads_per_worker),
            asynchronous=False,
            name=name,
            silence_logs=logging.ERROR,
            capacity=capacity,
            shape=shape,
        )
    cluster.adapt(
        Adaptive=CapacityAdaptive,
        minimum=minimum,
        maximum=maximum,
        interval=ADAPT_INTERVAL,
        target_duration=TARGET_DURATION,
        wait_count=max(1, round(keepalive / ADAPT_INTERVAL)),
        capacity=capacity,
        shape=shape,
    )
    return cluster
