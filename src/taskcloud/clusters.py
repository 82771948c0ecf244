"""``taskcloud.Cluster``: a dask cluster that lives in its own process, found by name.

Every cluster runs detached in a :mod:`taskcloud.daemon` process with TLS on
127.0.0.1 and is recorded in the store, so another process asking for the same name
attaches to it instead of starting a second one. The cluster shuts itself down after
``idle_timeout`` without work, whether or not anyone is still attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable
from inspect import isawaitable
from pathlib import Path
from typing import Any

import attrs
import psutil
from distributed import Client
from distributed.core import Status
from distributed.core import rpc
from distributed.deploy.cluster import Cluster as _DaskCluster
from distributed.objects import SchedulerInfo
from distributed.utils import LoopRunner
from distributed.utils import silence_logging_cmgr
from tornado.ioloop import PeriodicCallback

from taskcloud import credentials
from taskcloud.capacity import Shape
from taskcloud.configurations import cluster_defaults
from taskcloud.errors import ClusterNotFoundError
from taskcloud.errors import ClusterStartError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import StoreError
from taskcloud.processes import alive
from taskcloud.processes import kill
from taskcloud.providers import kinds
from taskcloud.specs import ClusterSpec
from taskcloud.specs import check_name
from taskcloud.specs import environ_hidden
from taskcloud.specs import options_checked
from taskcloud.specs import parse_n_workers
from taskcloud.store import Store
from taskcloud.store import home
from taskcloud.units import parse_memory

__all__ = ["Cluster", "delete_cluster", "list_clusters"]

TABLE = "clusters"

#: How long a new cluster's process may take to answer.
START_TIMEOUT = 60.0

#: How long closing waits for a cluster's process to finish.
STOP_TIMEOUT = 30.0

_ADAPT_ACCEPTS = (
    "no such option: Cluster.adapt() takes minimum, maximum, minimum_cores, "
    "maximum_cores, minimum_memory and maximum_memory; the cluster's own process "
    "sets how often it adapts"
)

_DASHBOARD_HINT = (
    "This cluster has no dashboard: the dask dashboard needs bokeh in the environment "
    "the scheduler runs in. Install it with `pip install 'bokeh>=3.1'` (or add it to the "
    "cluster's software environment) and start the cluster again."
)


def _alive(record: dict[str, Any]) -> bool:
    """Whether the process recorded for a cluster still runs (and is that process)."""
    return alive(record.get("pid"), record.get("started"))


def _directory(name: str) -> Path:
    return home() / "clusters" / name


class Cluster(_DaskCluster):
    """A dask cluster of local worker processes that outlives the process that started it.

    ``Cluster(name="x")`` starts the cluster ``x``, or attaches to it when it runs
    already; see the README and ``docs/clusters.md`` for every parameter.
    """

    @options_checked("taskcloud.Cluster", unlisted=("store",))
    def __init__(
        self,
        n_workers: int | list[int] | str | None = None,
        worker_cpu: int | None = None,
        worker_memory: int | str | None = None,
        scheduler_cpu: int | None = None,
        scheduler_memory: int | str | None = None,
        software: str | None = None,
        worker_class: str | type | None = None,
        worker_options: dict[str, Any] | None = None,
        scheduler_options: dict[str, Any] | None = None,
        name: str | None = None,
        shutdown_on_close: bool | None = None,
        idle_timeout: float | str | None = None,
        configuration: str | None = None,
        provider: str | None = None,
        provider_options: dict[str, Any] | None = None,
        worker_gpu: int | None = None,
        store: Store | None = None,
    ) -> None:
        given = {
            "n_workers": n_workers,
            "worker_cpu": worker_cpu,
            "worker_memory": worker_memory,
            "worker_gpu": worker_gpu,
            "scheduler_cpu": scheduler_cpu,
            "scheduler_memory": scheduler_memory,
            "software": software,
            "worker_class": worker_class,
            "worker_options": worker_options,
            "scheduler_options": scheduler_options,
            "idle_timeout": idle_timeout,
            "provider": provider,
            "provider_options": provider_options,
        }
        explicit = {key: value for key, value in given.items() if value is not None}
        name = f"taskcloud-{secrets.token_hex(4)}" if name is None else check_name(name)
        if shutdown_on_close not in (None, True, False):
            raise InvalidOptionError("shutdown_on_close", shutdown_on_close, "None, True or False")
        self._store = store or Store()
        options = dict(cluster_defaults(configuration, self._store)) if configuration else {}
        options.update(explicit)
        scheduler_idle = (options.get("scheduler_options") or {}).get("idle_timeout")
        if "idle_timeout" not in explicit and scheduler_idle is not None:
            options["idle_timeout"] = scheduler_idle
        spec = ClusterSpec(**options)
        # A profile is read here, in the project: the cluster's process gets its options.
        resolved = kinds.resolve(spec.provider, spec.provider_options)
        spec = attrs.evolve(spec, provider=resolved.name, provider_options=resolved.options)
        self._provider = resolved
        # The event loop's thread is this object's own: dask's Cluster runs on a loop
        # it is given (public), rather than starting its private ``_loop_runner``.
        self._loop_thread = LoopRunner(asynchronous=False)
        self._loop_thread.start()
        super().__init__(asynchronous=False, loop=self._loop_thread.loop, name=name)
        self._token = secrets.token_hex(8)
        record = self._claim(name)
        if record is None:
            try:
                record = self._launch(name, spec, self._python(spec))
            except BaseException:
                self._store.update(TABLE, name, lambda r: None if self._owns(r) else r)
                self._loop_thread.stop()
                raise
            created = True
        else:
            created = False
            self._warn_ignored(record, spec, set(explicit))
        self.created = created
        self.shutdown_on_close = created if shutdown_on_close is None else shutdown_on_close
        self.spec = ClusterSpec.from_json(record["spec"])
        self.record = record
        self.security = credentials.load(Path(record["directory"]))
        self.pid = int(record["pid"])
        self.scheduler_comm = rpc(
            record["address"], connection_args=self.security.get_connection_args("client")
        )
        try:
            self.sync(self._start)
        except BaseException:
            self._loop_thread.stop()
            raise

    # -- starting or finding ------------------------------------------------------------

    def _claim(self, name: str) -> dict[str, Any] | None:
        """The running cluster ``name``, or None after claiming the name for a new one."""
        deadline = time.monotonic() + START_TIMEOUT
        me = {
            "status": "starting",
            "pid": os.getpid(),
            "started": _my_start(),
            "token": self._token,
            "provider_kind": self._provider.kind,
        }
        found: list[dict[str, Any] | None] = []

        def change(record: dict[str, Any] | None) -> dict[str, Any] | None:
            alive = record is not None and _alive(record)
            found.append(record if alive else None)
            return record if alive else me

        while True:
            self._store.update(TABLE, name, change)
            record = found[-1]
            if record is None:
                return None
            if record["status"] == "running":
                return record
            # Someone else is starting it: wait for them to finish.
            if time.monotonic() > deadline:
                raise ClusterStartError(name, "another process started it and never finished")
            threading.Event().wait(0.05)

    def _owns(self, record: dict[str, Any] | None) -> bool:
        """Whether ``record`` is the claim this object made on its name."""
        return record is not None and record.get("token") == self._token

    def _hand_over(self, name: str, pid: int) -> None:
        """Let the claim live with the new cluster's process rather than with this one.

        Should this process die now, the cluster still finishes starting and is listed.
        """
        with contextlib.suppress(psutil.Error):
            owner = {"pid": pid, "started": psutil.Process(pid).create_time()}
            self._store.update(
                TABLE, name, lambda r: {**r, **owner} if r is not None and self._owns(r) else r
            )

    def _python(self, spec: ClusterSpec) -> str:
        """The interpreter a new cluster runs in, once its shape is known to fit."""
        capacity = kinds.get(self._provider).capacity()
        capacity.check(
            Shape.of(capacity, cpu=spec.worker_cpu, memory=spec.worker_memory, gpu=spec.worker_gpu)
        )
        if spec.software is None:
            return sys.executable
        from taskcloud.environments import environment_python

        return str(environment_python(spec.software, store=self._store))

    def _launch(self, name: str, spec: ClusterSpec, python: str) -> dict[str, Any]:
        directory = _directory(name)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True)
        log = directory / "cluster.log"
        request = {
            "name": name,
            "spec": spec.to_json(),
            "directory": str(directory),
            "token": self._token,
            "provider_kind": self._provider.kind,
        }
        environ = {**os.environ, "TASKCLOUD_HOME": str(self._store.path.parent)}
        with open(log, "ab") as log_file:
            process = subprocess.Popen(
                [python, "-m", "taskcloud.daemon"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                env=environ,
                cwd=directory,
            )
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.close()
        self._hand_over(name, process.pid)
        try:
            answer = _read_answer(process, START_TIMEOUT)
        except BaseException:
            _kill_group(process.pid)
            process.wait()
            raise
        finally:
            process.stdout.close()
        if answer is None or "error" in answer:
            process.wait(STOP_TIMEOUT)
            text = log.read_text(errors="replace")
            reason = (answer or {}).get("error", "the cluster's process exited")
            raise ClusterStartError(name, f"{reason}{_first_error(text)}\n{text[-2000:]}")
        record = self._store.get(TABLE, name)
        if not self._owns(record):
            raise ClusterStartError(name, "another process claimed the name as it started")
        assert record is not None
        if answer.get("waits"):
            # Its first workers wait for what others on the host hold (a GPU, say).
            warnings.warn(f"{answer['waits']}.", stacklevel=3)
        return record

    def _warn_ignored(self, record: dict[str, Any], spec: ClusterSpec, given: set[str]) -> None:
        running, wanted = record.get("spec", {}), spec.to_json()
        differ = [key for key in sorted(given) if running.get(key) != wanted[key]]
        running, wanted = _shown(running), _shown(wanted)
        ignored = [f"{key}={wanted[key]!r} (running: {running.get(key)!r})" for key in differ]
        if ignored:
            warnings.warn(
                f"Attached to the running cluster {self.name!r}; these options differ "
                f"from it and are ignored: {', '.join(ignored)}",
                stacklevel=3,
            )

    # -- what a dask cluster does ---------------------------------------------------------

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> None:
        """Hold ``n`` workers (as many as the host fits); turns adaptive scaling off.

        As with dask's ``SpecCluster.scale``, ``memory`` (``"8 GiB"`` or bytes) and
        ``cores`` ask for at least enough workers of the cluster's shape to hold them.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidOptionError("n", n, "an int >= 0")
        n = max(n, self._workers_for(memory, cores, "memory", "cores", math.ceil))
        granted = self._ask("taskcloud_scale", n=n)
        if granted < n:
            warnings.warn(
                f"Cluster {self.name!r} asked for {n} workers; the host fits {granted}.",
                stacklevel=2,
            )

    def adapt(  # type: ignore[override]
        self,
        minimum: int = 0,
        maximum: int | None = None,
        *,
        minimum_cores: int | None = None,
        maximum_cores: int | None = None,
        minimum_memory: Any = None,
        maximum_memory: Any = None,
        **kwargs: Any,
    ) -> None:
        """Scale between ``minimum`` and ``maximum`` workers (1 unless given) from the
        work queued.

        As with dask's ``SpecCluster.adapt``, ``minimum_cores``/``minimum_memory`` raise
        the minimum and ``maximum_cores``/``maximum_memory`` lower (or set) the maximum,
        in workers of the cluster's shape. The cluster's own process does the scaling,
        so it goes on when this process ends.
        """
        if kwargs:
            name, value = next(iter(kwargs.items()))
            raise InvalidOptionError(name, value, _ADAPT_ACCEPTS)
        low = self._workers_for(
            minimum_memory, minimum_cores, "minimum_memory", "minimum_cores", math.ceil
        )
        minimum = max(minimum, low)
        caps = [] if maximum is None else [maximum]
        if maximum_memory is not None or maximum_cores is not None:
            caps.append(
                self._workers_for(
                    maximum_memory,
                    maximum_cores,
                    "maximum_memory",
                    "maximum_cores",
                    math.floor,
                    min,
                )
            )
        maximum = min(caps) if caps else 1
        parse_n_workers([minimum, maximum])
        self._ask("taskcloud_adapt", minimum=minimum, maximum=maximum)

    def _workers_for(
        self,
        memory: Any,
        cores: Any,
        memory_name: str,
        cores_name: str,
        rounding: Any,
        combine: Any = max,
    ) -> int:
        """How many workers of this cluster's shape hold ``memory`` and ``cores``."""
        counts = []
        if memory is not None:
            per_worker = self.spec.worker_memory or self._capacity().default_memory(
                self.spec.worker_cpu
            )
            counts.append(rounding(parse_memory(memory, memory_name) / per_worker))
        if cores is not None:
            if not isinstance(cores, int) or isinstance(cores, bool) or cores < 0:
                raise InvalidOptionError(cores_name, cores, "an int >= 0")
            counts.append(rounding(cores / self.spec.worker_cpu))
        return int(combine(counts)) if counts else 0

    def _capacity(self) -> Any:
        """The capacity of the cluster's provider."""
        kind = self.record.get("provider_kind") or "local"
        name = self.spec.provider or kind
        return kinds.get(kinds.Resolved(name, kind, self.spec.provider_options)).capacity()

    def _ask(self, operation: str, **arguments: Any) -> Any:
        """Call a handler of the cluster's process; a cluster that is gone says so."""
        self.check_running()
        return self.sync(getattr(self.scheduler_comm, operation), **arguments)

    def check_running(self) -> None:
        """Raise :class:`ClusterNotFoundError` when this cluster's process is gone.

        A cluster restarted under the same name is another cluster: this object, and
        every client it gave, stay attached to the one that is gone.
        """
        if not _alive(self.record):
            raise ClusterNotFoundError(self.name, list_clusters(self._store))

    def get_client(self) -> Client:
        """A client of this cluster: the current one if it is this cluster's, else new.

        Its calls raise :class:`ClusterNotFoundError` at once when the cluster's process
        is gone, rather than waiting for a scheduler that will not come back.
        """
        self.check_running()
        with contextlib.suppress(ValueError):
            current = Client.current()
            # dask's clusters are equal by name; a restarted cluster has the same one.
            if getattr(current, "cluster", None) is self and current.status == "running":
                return current
        return ClusterClient(self)

    @property
    def where(self) -> str:
        """Where the cluster's workers run: ``this host``, or its provider's hosts."""
        return str(self.record.get("where") or "this host")

    @property
    def dashboard_link(self) -> str:
        """The dask dashboard's address; empty, with a warning saying why, without bokeh."""
        port = self.record.get("dashboard_port")
        if not port:
            warnings.warn(_DASHBOARD_HINT, stacklevel=2)
            return ""
        return f"http://127.0.0.1:{port}/status"

    async def _start(self) -> None:
        # Unlike dask's clusters this one does not subscribe to worker updates: the
        # scheduler keeps one subscriber, which belongs to the cluster's own process.
        await self._refresh()
        self.periodic_callbacks["taskcloud-refresh"] = PeriodicCallback(self._refresh, 1000)
        self.periodic_callbacks["taskcloud-refresh"].start()
        self.status = Status.running

    async def _refresh(self) -> None:
        # When the cluster stopped, close() or the next call says so (its clients'
        # futures are cancelled by dask as the connection drops).
        with contextlib.suppress(OSError):
            self.scheduler_info = SchedulerInfo(await self.scheduler_comm.identity())

    async def _close(self) -> None:
        if self.shutdown_on_close and self.status == Status.running:
            with contextlib.suppress(OSError):
                await self.scheduler_comm.taskcloud_stop()
        for callback in self.periodic_callbacks.values():
            callback.stop()
        await self.scheduler_comm.close_rpc()
        self.status = Status.closed

    def close(self, timeout: float | None = None) -> Any:
        """Detach; also stop the cluster when ``shutdown_on_close`` (the creator's default).

        Called in the cluster's event loop (dask's ``Client.shutdown`` does), it returns
        an awaitable, as dask's own clusters do.
        """
        if self.status == Status.closed:
            return None
        closing = super().close(timeout)
        if isawaitable(closing):
            return self._closed_in_loop(closing)
        if self.shutdown_on_close:
            _wait_stopped(self.pid, STOP_TIMEOUT)
        self._loop_thread.stop()
        return None

    async def _closed_in_loop(self, closing: Awaitable[Any]) -> None:
        await closing
        if self.shutdown_on_close:
            await asyncio.get_running_loop().run_in_executor(
                None, _wait_stopped, self.pid, STOP_TIMEOUT
            )
        # The loop's thread cannot end itself from inside the loop.
        threading.Thread(target=self._loop_thread.stop, daemon=True).start()

    def __repr__(self) -> str:
        workers = len(self.scheduler_info.get("workers", {}))
        return f"<taskcloud.Cluster {self.name!r} {self.scheduler_address} workers={workers}>"


#: A line of the cluster's log that names an error, e.g. a worker's own start error.
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): .+$", re.MULTILINE)


def _first_error(log: str) -> str:
    """The first error the cluster's log names, other than a nanny's "failed to start"
    (which says only that its worker did not), as a line of its own; else ''."""
    for match in _ERROR_LINE.finditer(log):
        if "Nanny failed to start" not in match.group(0):
            return f"\nFirst error in the cluster's log: {match.group(0)}"
    return ""


class ClusterClient(Client):
    """The client :meth:`Cluster.get_client` gives: calls fail at once once it is gone.

    Without this a client whose cluster's process died waits for the scheduler to
    come back (``distributed.comm.timeouts.connect``) before it cancels its futures.
    """

    cluster: Cluster

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`distributed.Client.submit`, once the cluster is known to run."""
        self.cluster.check_running()
        return super().submit(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`distributed.Client.map`, once the cluster is known to run."""
        self.cluster.check_running()
        return super().map(*args, **kwargs)

    def compute(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`distributed.Client.compute`, once the cluster is known to run."""
        self.cluster.check_running()
        return super().compute(*args, **kwargs)

    def gather(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`distributed.Client.gather`, once the cluster is known to run."""
        self.cluster.check_running()
        return super().gather(*args, **kwargs)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`distributed.Client.close`; quiet about a cluster that is gone."""
        if self.status == "closed":
            # dask's __del__ closes again, perhaps as the interpreter tears its
            # modules down: there is nothing left to do, and nothing to ask psutil.
            return None
        if _alive(self.cluster.record):
            try:
                return super().close(*args, **kwargs)
            except Exception:
                if _alive(self.cluster.record):
                    raise
                return None  # it ended as we closed: a reconnect was cut short
        # dask logs the reconnection that closing cancels as an error, with a traceback;
        # older tornado may raise from that reconnect. The client is closed either way.
        with silence_logging_cmgr(logging.CRITICAL), contextlib.suppress(Exception):
            return super().close(*args, **kwargs)
        return None


def _my_start() -> float:
    return psutil.Process().create_time()


def _read_answer(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
    """The daemon's one JSON line, or None when it exits without one."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    descriptor = process.stdout.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClusterStartError("?", f"no answer from the cluster's process in {timeout} s")
        ready, _, _ = select.select([descriptor], [], [], left)
        if ready:
            chunk = os.read(descriptor, 65536)
            if not chunk:
                return None
            data += chunk
    return json.loads(data.decode())


def _wait_stopped(pid: int, timeout: float) -> None:
    try:
        process = psutil.Process(pid)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        _kill_group(pid)


def _kill_group(pid: int) -> None:
    """Kill a cluster's process and its workers (they share its process group)."""
    kill(pid, group=True)


def _shown(spec: dict[str, Any]) -> dict[str, Any]:
    """A cluster's spec with its workers' ``env`` values as ``"***"``."""
    env = (spec.get("worker_options") or {}).get("env")
    if not isinstance(env, dict):
        return spec
    return {**spec, "worker_options": {**spec["worker_options"], "env": environ_hidden(env)}}


def list_clusters(store: Store | None = None) -> dict[str, dict[str, Any]]:
    """The running clusters by name: status, address, workers, spec, age, dashboard,
    provider and where its workers run (``this host``, or the provider's hosts).

    Records of clusters whose process died without saying so are dropped (where the
    state may be written). Workers' ``env`` values show as ``"***"``.
    """
    store = store or Store()
    listing = {}
    now = time.time()
    for name, record in store.all(TABLE).items():
        if record.get("status") == "stopped":
            continue
        if not _alive(record):
            with contextlib.suppress(StoreError):  # a listing only reads
                store.update(TABLE, name, lambda r: None if r is not None and not _alive(r) else r)
            continue
        if record.get("status") != "running":
            continue
        port = record.get("dashboard_port")
        listing[name] = {
            "name": name,
            "status": record["status"],
            "address": record["address"],
            "workers": record.get("workers", 0),
            "spec": _shown(record.get("spec", {})),
            "age": now - float(record.get("started", now)),
            "dashboard": f"http://127.0.0.1:{port}/status" if port else None,
            "pid": record["pid"],
            "provider": record.get("spec", {}).get("provider") or "local",
            "where": record.get("where", "this host"),
        }
    return listing


def delete_cluster(name: str, store: Store | None = None, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the cluster ``name`` and its workers."""
    store = store or Store()
    record = store.get(TABLE, name)
    if record is None or record.get("status") == "stopped" or not _alive(record):
        raise ClusterNotFoundError(name, list_clusters(store))
    pid = int(record["pid"])
    kill(pid, sig=signal.SIGTERM)
    _wait_stopped(pid, timeout)
    store.update(
        TABLE,
        name,
        lambda r: (
            {**r, "status": "stopped", "workers": 0} if r is not None and r.get("pid") == pid else r
        ),
    )
