"""The process that keeps one cluster alive, whoever asked for it and whether they live.

``python -m taskcloud.daemon`` reads one JSON line on stdin (the cluster's name, spec,
directory and the token of the claim on its name), takes the claim over from the
process that started it, writes the cluster's TLS credentials, starts a scheduler and
the spec's workers through the provider (:func:`~taskcloud.providers.cluster.start_cluster`;
the scheduler runs in this process, or in a process of its own under the dask config
``taskcloud.scheduler-process``), waits for the first workers (a worker's start error
is the answer), records itself in the store and answers with one JSON line on stdout.
It then runs until ``idle_timeout`` without work, a client's ``taskcloud_stop``,
SIGTERM, or its scheduler's end (a client's ``terminate``). Then it stops its workers
and marks its record stopped.

The claim holds the name while the cluster starts. Once the daemon has taken it over,
the half-started cluster lives with the daemon, not with its creator: a creator
SIGKILLed meanwhile leaves a cluster that finishes starting and is listed. A daemon
whose claim was dropped or taken by another process (its creator died before the
take-over) exits at once instead of running unlisted.

Clients change the cluster's size through requests of its scheduler:
``taskcloud_scale(n)`` and ``taskcloud_adapt(minimum, maximum)``. The daemon asks the
scheduler for nothing but over the wire, wherever it runs: the scheduler relays those
requests to it (:meth:`~taskcloud.providers.protocol.Workers.serve`), says since when
it has been idle, and its worker count comes with dask's ``scheduler_info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from taskcloud import credentials
from taskcloud.capacity import Shape
from taskcloud.errors import ClusterStartError
from taskcloud.providers import kinds
from taskcloud.providers import scheduler_process
from taskcloud.providers import start_forkserver
from taskcloud.providers.cluster import start_cluster
from taskcloud.providers.protocol import ClusterRequest
from taskcloud.specs import ClusterSpec
from taskcloud.store import Store

__all__ = ["main"]

TABLE = "clusters"

#: How long an idle worker of an adaptive cluster stays.
_KEEPALIVE = 5.0

#: How often the daemon asks whether its scheduler is idle, and looks at its workers.
_LOOK = 0.25

#: How long a scheduler may take to say whether it is idle; one busier is not idle.
_ASK_TIMEOUT = 10.0

logger = logging.getLogger("taskcloud")


class _Daemon:
    def __init__(
        self, name: str, spec: ClusterSpec, directory: Path, token: str, kind: str = "local"
    ) -> None:
        self.name = name
        self.token = token
        self.spec = spec
        self.directory = directory
        self.store = Store()
        self.provider = kinds.build(
            kinds.Resolved(spec.provider or kind, kind, dict(spec.provider_options))
        )
        self.capacity = self.provider.capacity()
        self.shape = Shape.of(
            self.capacity, cpu=spec.worker_cpu, memory=spec.worker_memory, gpu=spec.worker_gpu
        )
        self.pid = os.getpid()
        self.started = psutil.Process().create_time()
        # Store writes leave the event loop, one at a time and in order.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="taskcloud-store")
        self.cluster: Any = None
        self.adaptive: Any = None  # the cluster's adaptive scaling, while it adapts
        self.waits: str | None = None  # why the first workers wait, for the answer
        self.stopping = asyncio.Event()

    def take_over(self) -> None:
        """Make the claim on the name this process's: it lives while this process does."""
        owner = {"pid": self.pid, "started": self.started}
        written = self.store.update(
            TABLE, self.name, lambda r: {**r, **owner} if r is not None and self._owns(r) else r
        )
        if not self._owns(written):
            raise ClusterStartError(
                self.name, "its claim on the name was dropped before it started"
            )

    def _owns(self, record: dict[str, Any] | None) -> bool:
        return record is not None and record.get("token") == self.token

    async def serve(self) -> None:

        security = credentials.create(self.directory, self.name)
        with_dashboard = _has_dashboard()
        options = dict(self.spec.scheduler_options)
        # The daemon enforces idle_timeout itself, so that workers stop before the
        # scheduler does (a worker whose scheduler is gone takes seconds to give up).
        options.pop("idle_timeout", None)
        # Asynchronous: its close() is awaitable, which its annotations do not say.
        cluster: Any = await start_cluster(
            self.provider,
            ClusterRequest(
                shape=self.shape,
                threads_per_worker=self.spec.worker_options.get("nthreads", self.spec.worker_cpu),
                name=self.name,
                security=security,
                worker_class=self.spec.worker_class,
                worker_options=self.spec.worker_options,
                scheduler_options=options,
                dashboard=with_dashboard,
                scheduler_process=scheduler_process(),
            ),
        )
        self.cluster = cluster
        try:
            served = await cluster.serve(
                {
                    "taskcloud_scale": self.scale,
                    "taskcloud_adapt": self.adapt,
                    "taskcloud_stop": self.stop,
                }
            )
        except BaseException:
            await cluster.close()
            raise
        low, high = self.spec.n_workers or (self.capacity.fit(self.shape),) * 2
        try:
            if low == high:
                await self.scale(low)
                # The first workers start before the answer: a worker that cannot
                # start (bad worker_options) fails the start with its own error.
                await cluster
            else:
                await self.adapt(low, high)
        except BaseException:
            await _close(cluster, served)
            raise

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        # The scheduler's HTTP server always runs; it is a dashboard only with bokeh.
        port = cluster.dashboard_port if with_dashboard else None
        owned = await loop.run_in_executor(
            self.writer,
            self._write,
            {
                "status": "running",
                "address": cluster.scheduler_address,
                "dashboard_port": port,
                "pid": self.pid,
                "started": self.started,
                "python": sys.executable,
                "directory": str(self.directory),
                "spec": self.spec.to_json(),
                "provider_kind": self.provider.kind,
                "where": cluster.where,
                "workers": cluster.n_workers,
            },
        )
        if not owned:
            await _close(cluster, served)
            raise ClusterStartError(self.name, "another process claimed the name as it started")
        answer = {"address": cluster.scheduler_address, "pid": self.pid}
        _answer({**answer, "waits": self.waits} if self.waits else answer)

        reason = await self.until_stopped(cluster, served)
        await _close(cluster, served)
        self.provider.close()
        await loop.run_in_executor(
            self.writer,
            self._write,
            {"status": "stopped", "stopped": time.time(), "workers": 0, "reason": reason},
        )

    async def until_stopped(self, cluster: Any, served: asyncio.Future[None]) -> str:
        """Wait for a stop request, the scheduler's end (``served`` is done then) or
        ``idle_timeout`` without work; meanwhile keep the record's worker count current."""
        timeout = self.spec.idle_timeout
        workers = None
        while not self.stopping.is_set():
            if served.done():
                error = served.exception()
                if error is not None:  # not the scheduler's end: a bug, said in the log
                    logger.error("cluster %s: its requests failed", self.name, exc_info=error)
                return "scheduler closed"
            if cluster.n_workers != workers:
                workers = cluster.n_workers
                self.record(workers=workers)
            try:
                since = await asyncio.wait_for(cluster.idle_since(), _ASK_TIMEOUT)
            except asyncio.TimeoutError:
                continue
            except OSError:
                return "scheduler closed"
            if timeout and since and time.time() > since + timeout:
                logger.warning("cluster %s idle for %s s: shutting down", self.name, timeout)
                return "idle"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), _LOOK)
        return "stopped"

    async def stop(self) -> None:
        """Close the cluster: first its workers, then its scheduler."""
        self.stopping.set()

    async def scale(self, n: int) -> int:
        """Hold ``n`` workers, or as many as the empty host fits; stops adaptive scaling.

        What the others (pools, clusters, other processes) hold now starts later: the
        cluster keeps asking the capacity for the rest, says once that it waits, and
        its wait makes their idle workers leave at once. Returns what the host fits.
        """
        cluster = self.cluster
        if self.adaptive is not None:
            self.adaptive.stop()
            self.adaptive = None
        target = min(int(n), self.capacity.fit(self.shape))
        granted = self.capacity.grant(cluster, self.shape, target, 0)
        cluster.scale(granted)  # asynchronous: the workers start in the background
        if granted < target:
            self.waits = (
                f"cluster {self.name} waits for capacity: {target - granted} more workers "
                f"({self.shape.asked('cpu', 'memory', 'gpu')} each) do not fit beside the "
                "other pools and clusters on this host; they start as those give way"
            )
            # Asks again every moment, through the capacity (which records the wait),
            # until the cluster holds ``target`` workers; it logs the wait once.
            self.adaptive = cluster.scale_between(target, target, _KEEPALIVE)
        return target

    async def adapt(self, minimum: int, maximum: int) -> int:
        """Scale between ``minimum`` and ``maximum`` from the work queued."""
        self.adaptive = self.cluster.scale_between(int(minimum), int(maximum), _KEEPALIVE)
        return min(int(maximum), self.capacity.fit(self.shape))

    def record(self, **changes: Any) -> None:
        """Update this cluster's store record in the background."""
        self.writer.submit(self._write, changes)

    def _write(self, changes: dict[str, Any]) -> bool:
        """Change this cluster's record; False when the name is no longer this cluster's."""

        def change(record: dict[str, Any] | None) -> dict[str, Any] | None:
            return {**record, **changes} if self._owns(record) else record  # type: ignore[dict-item]

        return self._owns(self.store.update(TABLE, self.name, change))


async def _close(cluster: Any, served: asyncio.Future[None]) -> None:
    """Stop answering requests, then close the cluster: its workers, its scheduler."""
    served.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await served
    await cluster.close()


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
        import distributed.dashboard  # noqa: F401
    except ImportError:
        return False
    return True


def _answer(message: dict[str, Any]) -> None:
    """Send the one line the starting process waits for, then let go of stdout.

    A starting process that died meanwhile hears nothing; the cluster runs on, listed.
    """
    with contextlib.suppress(OSError):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main() -> None:
    if start_forkserver():
        import dask

        # This process's nannies fork from it; set in dask's config, not the
        # environment, which the processes a provider starts (Slurm's jobs) inherit.
        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        request = json.loads(sys.stdin.readline())
        spec = ClusterSpec.from_json(request["spec"])
        daemon = _Daemon(
            request["name"],
            spec,
            Path(request["directory"]),
            request["token"],
            request.get("provider_kind", "local"),
        )
        daemon.take_over()
        asyncio.run(daemon.serve())
    except BaseException as exc:
        _answer({"error": _reason(exc)})
        raise


def _reason(exc: BaseException) -> str:
    """``exc`` and what caused it, innermost last: a nanny's "failed to start" hides
    the worker's own error (a bad ``worker_options`` key, say) in its causes."""
    reasons, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reasons.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return reasons[0] if len(reasons) == 1 else f"{reasons[0]} (caused by {reasons[-1]})"


if __name__ == "__main__":
    main()
