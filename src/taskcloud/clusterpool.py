"""``@taskcloud.function(cluster="name")``: calls on the workers of a named cluster.

A :class:`ClusterPool` is a :class:`~taskcloud.pools.Pool` whose workers belong to a
:class:`~taskcloud.Cluster`: calls, retries, timeouts and maps work as on a pool of
the function's own, but the cluster's process scales its workers, and the pool only
attaches to it. The cluster is found by name, or started when it does not run: from
the decorator's ``configuration=``, else from the saved configuration named like the
cluster, else with the cluster's defaults. Closing the pool detaches; the cluster
runs on until its ``idle_timeout``.

The cluster's scheduler runs in another process, so calls learn that they started
from an event: :class:`StartNotices` runs in that scheduler and logs each call's key
as it starts; the pool's client subscribes to them.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from attrs import define
from distributed.diagnostics.plugin import SchedulerPlugin

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.pools import Pool
from taskcloud.pools import PoolStats
from taskcloud.providers.starts import CallStarts
from taskcloud.specs import PoolSpec

__all__ = ["ClusterPool", "ClusterWatch", "StartNotices"]

#: The topic of the events that say a call started on a worker.
TOPIC = "taskcloud-call-started"

#: The keys a pool gives its calls: the function's name and 12 hex digits.
_CALL_KEY = re.compile(r"-[0-9a-f]{12}$")


class StartNotices(SchedulerPlugin):
    """In a named cluster's scheduler: logs a :data:`TOPIC` event as a call starts."""

    name = TOPIC

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing" and isinstance(key, str) and _CALL_KEY.search(key):
            self.scheduler.log_event(TOPIC, key)


class ClusterWatch:
    """What a pool's calls ask of its watch, from the events of :class:`StartNotices`.

    A named cluster's nannies do not report memory kills to this process: a worker
    killed for memory is a lost worker here, retried as such.
    """

    def __init__(self) -> None:
        self._on_start: dict[str, Callable[[str], None]] = {}
        self._on_executing: dict[str, Callable[[str, float], None]] = {}
        self._lock = threading.Lock()

    def on_start(self, key: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(key)`` when the task ``key`` starts on a worker."""
        with self._lock:
            self._on_start[key] = callback

    def on_executing(self, key: str, callback: Callable[[str, float], None]) -> None:
        """Call ``callback(key, since)`` when a worker's thread takes the timed call."""
        with self._lock:
            self._on_executing[key] = callback

    def notice(self, event: tuple[float, Any]) -> None:
        """Handle one :data:`TOPIC` event: a key from :class:`StartNotices`, or from a
        worker's :class:`~taskcloud.providers.CallStarts` the key and its start."""
        message = event[1]
        if isinstance(message, dict):
            key = str(message.get("key"))
            with self._lock:
                executing = self._on_executing.pop(key, None)
            if executing is not None:
                executing(key, float(message.get("since", 0.0)))
            return
        with self._lock:
            callback = self._on_start.pop(str(message), None)
        if callback is not None:
            callback(str(message))

    def memory_kill(self, worker: str, wait: float) -> int | None:
        """Never known for a named cluster's workers."""
        return None


@define(eq=False)
class ClusterPool(Pool):
    """The workers of the named cluster ``cluster``, fed as a pool's."""

    @classmethod
    def attach(cls, name: str, configuration: str | None = None) -> ClusterPool:
        """Attach to the cluster ``name``, starting it when it does not run."""
        from taskcloud.clusters import Cluster
        from taskcloud.clusters import ClusterClient
        from taskcloud.configurations import list_cluster_configurations

        if configuration is None and name in list_cluster_configurations():
            configuration = name
        cluster = Cluster(name=name, configuration=configuration, shutdown_on_close=False)
        try:
            client = ClusterClient(cluster, set_as_default=False)
            client.register_plugin(StartNotices(), name=StartNotices.name)
            # Its workers say when a timed call starts, on the same topic.
            client.register_plugin(CallStarts())
            watch = ClusterWatch()
            client.subscribe_topic(TOPIC, watch.notice)
        except BaseException:
            cluster.close()
            raise
        spec = cluster.spec
        memory = spec.worker_memory or HostCapacity().default_memory(spec.worker_cpu)
        shape = Shape(cpu=spec.worker_cpu, memory=memory, gpu=spec.worker_gpu)
        pool_spec = PoolSpec(cpu=spec.worker_cpu, memory=memory, gpu=spec.worker_gpu)
        stats = PoolStats(started=_workers(cluster), peak=_workers(cluster))
        return cls(pool_spec, shape, cluster, client, watch, stats, f"cluster {name!r}")

    @property
    def alive(self) -> bool:
        """Whether the cluster's process still runs."""
        try:
            self.cluster.check_running()
        except LookupError:
            return False
        return True

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Pool.submit`; a cluster that is gone raises ``ClusterNotFoundError``."""
        self._count_workers()
        return super().submit(*args, **kwargs)

    def submit_pickled(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Pool.submit_pickled`; a cluster that is gone raises
        ``ClusterNotFoundError``."""
        self._count_workers()
        return super().submit_pickled(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Pool.map`; a cluster that is gone raises ``ClusterNotFoundError``."""
        self._count_workers()
        return super().map(*args, **kwargs)

    def _count_workers(self) -> None:
        workers = _workers(self.cluster)
        self.stats.started = max(self.stats.started, workers)
        self.stats.peak = max(self.stats.peak, workers)

    @property
    def n_workers(self) -> int:
        return _workers(self.cluster)

    @property
    def waiting_for_capacity(self) -> bool:
        """A named cluster's process, not this pool, asks the host for room."""
        return False

    @property
    def waited_for_capacity(self) -> float:
        return 0.0

    def stop_running(self, dask_future: Any) -> None:
        """Take a timed-out call back: cancel it, and replace its worker through the
        cluster's scheduler (in the cluster's process, so asked over the client)."""
        key = dask_future.key
        try:
            processing = self.client.processing()
        except Exception:  # the cluster is gone
            processing = {}
        worker = next((name for name, keys in processing.items() if key in keys), None)
        dask_future.cancel()
        if worker is None:
            return
        with contextlib.suppress(Exception):  # the cluster closed meanwhile
            self.client.sync(
                self.client.scheduler.restart_workers,
                workers=[worker],
                wait_for_workers=False,
                on_error="return",
                stimulus_id=f"taskcloud-timeout-{time.time()}",
            )

    def close(self, *, kill: bool = False) -> None:
        """Detach from the cluster; it runs on (its ``idle_timeout`` stops it)."""
        try:
            self.client.close()
        finally:
            self.cluster.close()


def _workers(cluster: Any) -> int:
    return len(cluster.scheduler_info.get("workers", {}))
