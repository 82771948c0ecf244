"""Local pools: worker shape, sharing, adaptive scaling, capacity, sockets, faults."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

import taskcloud
from taskcloud import WorkerLostError
from taskcloud.capacity import HostCapacity
from taskcloud.plugin.summary import where_table
from taskcloud.pools import pools
from tests import helpers
from tests.conftest import listening_sockets
from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools")]


def test_workers_have_the_requested_shape() -> None:
    """threads_per_worker, memory and resource tags reach the dask workers."""
    shaped = taskcloud.function(cpu=1, memory="700 MiB", threads_per_worker=2, keepalive="5 s")(
        helpers.pid
    )
    assert shaped() != os.getpid()
    (worker,) = shaped.client.scheduler_info()["workers"].values()
    assert worker["nthreads"] == 2
    assert worker["memory_limit"] == 700 * 2**20
    assert worker["resources"] == {"cpu": 1, "memory": 700 * 2**20, "gpu": 0}


def _ignores_ctrl_c() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_workers_leave_ctrl_c_to_this_process() -> None:
    """A terminal's Ctrl-C reaches the workers too; this process kills them instead."""
    assert taskcloud.function(keepalive="5 s")(_ignores_ctrl_c)()
    assert not _ignores_ctrl_c()


def test_same_spec_shares_a_pool_and_others_get_their_own() -> None:
    """Equal specs share workers; a different shape gets a pool of its own."""
    one = taskcloud.function(memory="600 MiB", keepalive="5 s")(helpers.pid)
    two = taskcloud.function(memory="600 MiB", keepalive="5 s")(helpers.pid)
    other = taskcloud.function(memory="800 MiB", keepalive="5 s")(helpers.pid)
    assert one() == two()
    assert one.pool is two.pool
    assert other.pool is not one.pool
    assert other() != one()


def test_pool_scales_to_zero_and_back() -> None:
    """Idle workers leave after keepalive; the next call brings one back."""
    quick = taskcloud.function(n_workers=[0, 1], keepalive="1 s")(helpers.pid)
    first = quick()
    assert quick.pool.n_workers == 1
    wait_for(lambda: quick.pool.n_workers == 0, 15, "the pool scaling to zero")
    second = quick()
    assert second != first
    assert quick.pool.stats.started == 2


def test_pools_together_stay_within_the_host(tmp_path: Path) -> None:
    """Two pools of whole-host workers never run at the same time; all work finishes."""
    cores = os.cpu_count() or 1

    def busy(seconds: float) -> int:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return os.getpid()

    big_a = taskcloud.function(cpu=cores, memory="500 MiB", keepalive="0.5 s")(busy)
    big_b = taskcloud.function(cpu=cores, memory="501 MiB", keepalive="0.5 s")(busy)
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(sum(pool.n_workers for pool in pools.active()))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        futures = [big_a.submit(0.5), big_b.submit(0.5), big_a.submit(0.5), big_b.submit(0.5)]
        assert all(f.result(timeout=120) for f in futures)
    finally:
        stop.set()
        sampler.join()
    assert max(seen) == 1


def _host() -> HostCapacity:
    return HostCapacity(ledger=None)


def test_idle_worker_makes_room_at_once_for_a_waiting_pool(caplog) -> None:
    """A pool that does not fit beside another's idle worker gets the room long before
    that worker's keepalive, says that it waits, and the summary says for how long."""
    host = _host()
    # Together they need more cores than the host has, on any host.
    whole = taskcloud.function(cpu=host.cores, memory="400 MiB", keepalive="120 s")(helpers.pid)
    single = taskcloud.function(cpu=1, memory="401 MiB", keepalive="5 s")(helpers.pid)
    assert whole() != os.getpid()
    with caplog.at_level(logging.WARNING, logger="taskcloud"):
        # Well within the idle worker's 120 s keepalive.
        assert single.submit().result(timeout=60) != os.getpid()
    assert single.pool.waited_for_capacity > 0
    assert f"{single.pool.label} waits for capacity" in caplog.text
    where = Counter({whole.pool.label: 1, single.pool.label: 1})
    console = Console(width=200, record=True)
    console.print(where_table(where, pools.active()))
    assert "Waited for capacity" in console.export_text()


HOLDER = """
    import sys, time
    import taskcloud

    def hold():
        time.sleep(600)

    held = taskcloud.function(cpu=1, memory={memory}, n_workers=[1, 1])(hold)
    future = held.submit()
    while not future.running():
        time.sleep(0.05)
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_pools_of_two_processes_share_the_host(tmp_path: Path) -> None:
    """Another process's pool holds its memory here too; its lease ends with it."""
    memory = _host().memory * 6 // 10  # two such workers never fit together
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(HOLDER.format(memory=memory)))
    holder = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        mine = taskcloud.function(cpu=1, memory=memory + 1, keepalive="5 s")(helpers.pid)
        future = mine.submit()
        wait_for(lambda: mine.pool.waiting_for_capacity, 60, "the pool waiting for capacity")
        assert not future.done()
        assert mine.pool.n_workers == 0
        holder.kill()  # SIGKILL: it cannot give its lease back
        assert future.result(timeout=60) != os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_pools_listen_on_loopback_only() -> None:
    """The scheduler, nannies and workers of a pool only listen on 127.0.0.1."""
    before = listening_sockets()
    remote = taskcloud.function(n_workers=[1, 1], keepalive="5 s")(helpers.pid)
    assert remote() != os.getpid()
    listening = listening_sockets() - before
    assert len(listening) >= 3
    assert {address.ip for address in listening} == {"127.0.0.1"}


def _kill_own_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_lost_worker_is_known_at_once_not_after_a_wait_for_memory() -> None:
    """The nanny reports how its worker ended, so a lost worker fails its call
    without waiting out the notice of a memory kill that never comes."""
    warm = taskcloud.function(retries=0, keepalive="5 s")(helpers.pid)
    fatal = taskcloud.function(retries=0, keepalive="5 s")(_kill_own_worker)
    warm()
    with pytest.raises(WorkerLostError, match=r"'_kill_own_worker' died in each of 1 attempt"):
        fatal()
    exit_codes = fatal.pool.watch.exit_codes
    assert list(exit_codes.values()) == [-signal.SIGKILL]


def _nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


def test_timeout_counts_from_when_the_call_starts() -> None:
    """A call that waits on a busy worker has its whole timeout once it runs."""
    limited = taskcloud.function(timeout=2, n_workers=[1, 1], keepalive="10 s")(_nap)
    # The one worker takes both calls at once (dask's worker-saturation); the second
    # runs from 1.5 s to 3 s, past 2 s after it reached the worker.
    futures = [limited.submit(1.5), limited.submit(1.5)]
    assert [f.result(timeout=60) for f in futures] == ["rested", "rested"]


def _mark_and_sleep(path: str, seconds: float) -> str:
    Path(path).touch()
    time.sleep(seconds)
    return path


def test_cancel_takes_back_only_calls_no_worker_has(tmp_path) -> None:
    """As with a process pool: a call on a worker is running and cannot be cancelled."""
    slow = taskcloud.function(memory="300 MiB", n_workers=[1, 1], keepalive="5 s")(_mark_and_sleep)
    first = slow.submit(str(tmp_path / "first"), 2)
    wait_for(first.running, 60, "the first call reaching its worker")
    # The worker takes two calls at a time (dask's worker-saturation); the third waits.
    second = slow.submit(str(tmp_path / "second"), 0)
    third = slow.submit(str(tmp_path / "third"), 0)
    wait_for(second.running, 30, "the second call reaching its worker")

    assert not first.cancel()
    assert third.cancel()
    assert third.cancelled()
    assert first.result(timeout=60) == str(tmp_path / "first")
    assert second.result(timeout=60) == str(tmp_path / "second")
    # A later call runs after the cancelled one would have; it still never ran.
    assert slow(str(tmp_path / "fourth"), 0) == str(tmp_path / "fourth")
    assert not (tmp_path / "third").exists()
