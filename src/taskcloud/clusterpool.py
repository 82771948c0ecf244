"""``@taskcloud.function(cluster="name")``: calls on the workers of a named cluster.

A :class:`ClusterPool` is a :class:`~taskcloud.pools.Pool` whose workers belong to a
:class:`~taskcloud.Cluster`: calls, retries, timeouts and maps work as on a pool of
the function's own, but the cluster's process scales its workers, and the pool only
attaches to it. The cluster is found by name, or started when it does not run: from
the decorator's ``configuration=``, else from the saved configuration named like the
cluster, else with the cluster's defaults. Closing the pool detaches; the cluster
runs on until its ``idle_timeout``.

The cluster's scheduler runs in another process; the pool watches it as every pool
does, over the wire: :class:`~taskcloud.providers.events.PoolWatch` registers its
scheduler plugin through the pool's client and follows its events.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from attrs import define

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import Shape
from taskcloud.pools import Pool
from taskcloud.pools import PoolStats
from taskcloud.providers.events import PoolWatch
from taskcloud.providers.starts import CallStarts
from taskcloud.specs import PoolSpec

__all__ = ["ClusterPool"]


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
        stats = PoolStats(started=_workers(cluster), peak=_workers(cluster))
        try:
            client = ClusterClient(cluster, set_as_default=False)
            # Its workers say when a timed call starts.
            client.register_plugin(CallStarts())
            watch = PoolWatch.attach(client, stats)
        except BaseException:
            cluster.close()
            raise
        spec = cluster.spec
        memory = spec.worker_memory or HostCapacity().default_memory(spec.worker_cpu)
        shape = Shape(cpu=spec.worker_cpu, memory=memory, gpu=spec.worker_gpu)
        pool_spec = PoolSpec(cpu=spec.worker_cpu, memory=memory, gpu=spec.worker_gpu)
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
        worker = self.watch.running_on(dask_future.key)
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
