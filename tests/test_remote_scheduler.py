"""A pool whose scheduler runs in another process has every pool feature.

The provider here is the local one, under the dask config
``taskcloud.scheduler-process`` (docs/providers.md): the cluster base runs each pool's
scheduler in a process of its own, so nothing of the pool may read the scheduler in this process. Calls learn that
they started, timeouts find and replace their worker, lost workers and memory kills
are told apart, and scaling decides, all from the scheduler's events and requests
over the wire.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import dask
import pytest
from rich.console import Console

import taskcloud
from taskcloud import MemoryLimitError
from taskcloud import TaskTimeoutError
from taskcloud import WorkerLostError
from taskcloud.capacity import HostCapacity
from taskcloud.plugin.summary import where_table
from taskcloud.pools import pools
from taskcloud.providers import kinds
from taskcloud.providers.local import LocalProvider
from taskcloud.providers.scheduler import SchedulerProcess
from tests.conftest import wait_for
from tests.helpers import allocate
from tests.helpers import pid as _pid
from tests.helpers import sleep_and_record
from tests.test_pools import _kill_own_worker
from tests.test_pools import _mark_and_sleep
from tests.test_pools import _nap

pytestmark = pytest.mark.slow


KIND = "remote_scheduler"


class RemoteSchedulerProvider(LocalProvider):
    """Local workers, under a kind of its own (its pools are this module's alone)."""

    kind = KIND


@pytest.fixture(autouse=True)
def _provider():
    kinds.register(KIND, RemoteSchedulerProvider)
    with dask.config.set({"taskcloud.scheduler-process": True}):
        yield
        pools.close_all()
    kinds.close_all()


def remote(**options):
    """``taskcloud.function`` on the provider whose schedulers run elsewhere."""
    return taskcloud.function(provider=KIND, **options)


def _scheduler_pid(dask_scheduler=None) -> int:
    return os.getpid()


def _double(x: int) -> int:
    return 2 * x


def test_calls_and_maps_run_with_the_scheduler_in_another_process() -> None:
    """A call and a map get their results; the summary counts the workers."""
    fn = remote(n_workers=[0, 2], keepalive="10 s")(_pid)
    assert fn() != os.getpid()
    pool = fn.pool
    assert isinstance(pool.cluster.scheduler, SchedulerProcess)
    assert pool.client.run_on_scheduler(_scheduler_pid) != os.getpid()

    double = remote(n_workers=[0, 2], keepalive="10 s")(_double)
    assert double.pool is pool  # the same spec shares the pool
    assert list(double.map(range(6))) == [0, 2, 4, 6, 8, 10]
    assert pool.n_workers >= 1
    assert pool.stats.calls == 7
    assert pool.stats.started >= 1
    assert pool.stats.peak >= pool.n_workers
    console = Console(width=200, record=True)
    console.print(where_table(Counter({pool.label: 7}), pools.active()))
    assert pool.label in console.export_text()


def test_a_call_is_running_once_on_a_worker(tmp_path: Path) -> None:
    """The scheduler's event says a call went to a worker: it can no longer be
    cancelled; a call still queued can."""
    slow = remote(n_workers=[1, 1], keepalive="5 s")(_mark_and_sleep)
    first = slow.submit(str(tmp_path / "first"), 2)
    wait_for(first.running, 60, "the first call reaching its worker")
    second = slow.submit(str(tmp_path / "second"), 0)
    third = slow.submit(str(tmp_path / "third"), 0)
    wait_for(second.running, 30, "the second call reaching its worker")
    assert not first.cancel()
    assert third.cancel()
    assert first.result(timeout=60) == str(tmp_path / "first")
    assert second.result(timeout=60) == str(tmp_path / "second")
    assert not (tmp_path / "third").exists()


def test_timeout_raises_and_frees_the_worker(tmp_path: Path) -> None:
    """timeout= raises; the worker that ran the call is replaced, and the pool goes on."""
    limited = remote(timeout=1, n_workers=[1, 1], keepalive="10 s")(sleep_and_record)
    marker = tmp_path / "pid"
    future = limited.submit(str(marker), 60)
    pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 60, "the call starting"))
    with pytest.raises(TaskTimeoutError, match=r"did not finish within its timeout of 1 s"):
        future.result(timeout=60)
    # Its worker process was killed, not left to finish its 60 s.
    wait_for(lambda: not _alive(pid), 30, "the timed-out worker process ending")
    assert limited(str(tmp_path / "next"), 0) != pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_worker_reruns_then_fails_with_worker_lost(tmp_path: Path) -> None:
    """A SIGKILLed worker's call reruns up to retries, then raises WorkerLostError."""
    marker = tmp_path / "pid"
    fragile = remote(retries=1, keepalive="5 s")(sleep_and_record)
    done = fragile.submit(str(tmp_path / "other"), 0)
    assert done.result(timeout=60)
    future = fragile.submit(str(marker), 60)
    for _ in range(2):
        pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 60, "the call starting"))
        marker.unlink()
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLostError, match=r"'sleep_and_record' died in each of 2 attempts"):
        future.result(timeout=60)
    assert done.result() > 0


def test_lost_worker_is_told_by_its_exit_code() -> None:
    """The nanny's exit event reaches the pool over the wire."""
    fatal = remote(retries=0, keepalive="5 s")(_kill_own_worker)
    with pytest.raises(WorkerLostError, match=r"'_kill_own_worker' died in each of 1 attempt"):
        fatal()
    assert list(fatal.pool.watch.exit_codes.values()) == [-signal.SIGKILL]


def test_memory_limit_exceeded_is_reported() -> None:
    """A call beyond memory= says it exceeded its limit; the next call runs."""
    small = remote(memory="300 MiB", retries=0, keepalive="5 s")(allocate)
    with pytest.raises(MemoryLimitError, match=r"exceeded its memory limit of 300 MiB"):
        small(600, 30)
    assert small(1, 0) == 2**20


def test_pool_scales_to_zero_and_back() -> None:
    """Idle workers leave after keepalive; the next call brings one back."""
    quick = remote(n_workers=[0, 1], keepalive="1 s")(_pid)
    first = quick()
    assert quick.pool.n_workers == 1
    wait_for(lambda: quick.pool.n_workers == 0, 15, "the pool scaling to zero")
    second = quick()
    assert second != first
    assert quick.pool.stats.started == 2
    assert quick.pool.stats.peak == 1


def test_idle_worker_makes_room_at_once_for_a_waiting_pool() -> None:
    """An idle worker that holds nothing leaves for a pool that waits for room, long
    before its keepalive (the scheduler says which workers hold data)."""
    host = HostCapacity(ledger=None)
    whole = remote(cpu=host.cores, memory="400 MiB", keepalive="120 s")(_pid)
    single = remote(cpu=1, memory="401 MiB", keepalive="5 s")(_pid)
    assert whole() != os.getpid()
    assert single.submit().result(timeout=60) != os.getpid()
    assert single.pool.waited_for_capacity > 0


def test_timeout_counts_from_when_the_call_starts() -> None:
    """A call that waits on a busy worker has its whole timeout once it runs: the
    worker's event, not the scheduler's, starts the clock."""
    limited = remote(timeout=2, n_workers=[1, 1], keepalive="10 s")(_nap)
    futures = [limited.submit(1.5), limited.submit(1.5)]
    assert [f.result(timeout=60) for f in futures] == ["rested", "rested"]
