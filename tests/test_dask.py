"""The dask backend: an existing client is used, a new cluster stays on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import psutil
import pytest
from distributed import Client
from distributed import LocalCluster
from pytask import ExitCode
from pytask import build

from tests.conftest import listening_sockets
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

TASK = """
from pathlib import Path
from typing import Annotated
from pytask import Product

OFFSET = 40

def answer():
    return OFFSET + 2

def task_where(path: Annotated[Path, Product] = Path("where.txt")) -> None:
    from distributed import get_worker
    worker = get_worker()
    path.write_text(f"{worker.address} {worker.scheduler.address} {answer()}")
"""


def test_uses_the_current_client(tmp_path, write) -> None:
    """With a client already connected, tasks run on that client's cluster."""
    write("task_where.py", TASK)
    with (
        LocalCluster(
            n_workers=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        session = build(paths=tmp_path, n_workers=2, parallel_backend="dask")
        workers = set(cluster.scheduler_info["workers"])

    assert session.exit_code == ExitCode.OK
    worker, _, answer = (tmp_path / "where.txt").read_text().split()
    assert worker in workers
    assert answer == "42"


def test_new_cluster_listens_on_loopback_only(tmp_path, write) -> None:
    """Without a client, the backend starts TLS workers and a scheduler on 127.0.0.1."""
    write("task_where.py", TASK)
    session = build(paths=tmp_path, n_workers=2, parallel_backend="dask")

    assert session.exit_code == ExitCode.OK
    worker, scheduler, answer = (tmp_path / "where.txt").read_text().split()
    assert worker.startswith("tls://127.0.0.1:")
    assert scheduler.startswith("tls://127.0.0.1:")
    assert answer == "42"


def test_new_cluster_opens_no_socket_beyond_loopback() -> None:
    """Every socket the scheduler, nannies and workers listen on is on 127.0.0.1."""
    from taskcloud.backends import build_dask_executor

    before = listening_sockets()
    executor = build_dask_executor(2)
    try:
        assert executor.submit(sum, [1, 2]).result(timeout=60) == 3
        listening = listening_sockets() - before
    finally:
        executor.shutdown()

    assert len(listening) >= 3  # scheduler, and a nanny and a worker per worker
    assert {address.ip for address in listening} == {"127.0.0.1"}


def test_new_cluster_schedules_outside_this_process() -> None:
    """The scheduler has a process of its own, configured like this one."""
    import dask

    from taskcloud.backends import build_dask_executor

    with dask.config.set({"distributed.scheduler.allowed-failures": 7}):
        executor = build_dask_executor(1)
    try:
        client = executor._client  # type: ignore[attr-defined]
        scheduler_pid = client.run_on_scheduler(os.getpid)
        setting = client.run_on_scheduler(dask.config.get, "distributed.scheduler.allowed-failures")
    finally:
        executor.shutdown()

    assert scheduler_pid != os.getpid()
    assert setting == 7
    wait_for(lambda: not psutil.pid_exists(scheduler_pid), 10, "the scheduler process exiting")


OWNER = """
import time
from taskcloud.backends import build_dask_executor

if __name__ == "__main__":
    executor = build_dask_executor(2)
    assert executor.submit(sum, [1, 2]).result(timeout=60) == 3
    print("ready", flush=True)
    time.sleep(600)
"""


def test_new_cluster_ends_when_its_owner_is_killed(tmp_path) -> None:
    """SIGKILL to the process that started the cluster leaves no process behind."""
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        children = psutil.Process(owner.pid).children(recursive=True)
        assert len(children) >= 3  # the scheduler and two workers, at least
        owner.kill()
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)

    wait_for(lambda: not any(_alive(child) for child in children), 30, "every process exiting")


def test_scheduler_process_that_fails_says_why() -> None:
    """A scheduler that cannot start reports the error from its process."""
    from taskcloud.providers.scheduler import SchedulerProcess

    async def start() -> None:
        await SchedulerProcess(no_such_option=1)

    with pytest.raises(RuntimeError, match=r"did not start: TypeError.*no_such_option"):
        asyncio.run(start())


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _echo(value: object) -> object:
    return value


def _fail() -> None:
    raise ValueError("raised on the worker")


def test_executor_sends_small_results_as_events_and_fetches_the_rest() -> None:
    """Small bytes come back as events, large ones and other objects by a fetch."""
    from taskcloud.backends import EVENT_RESULT_LIMIT
    from taskcloud.backends import DaskExecutor

    small, large = b"s" * 100, b"l" * (EVENT_RESULT_LIMIT + 1)
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        executor = DaskExecutor(client)
        futures = [executor.submit(_echo, value) for value in (small, large, [1, 2])]
        assert [f.result(timeout=60) for f in futures] == [small, large, [1, 2]]
        assert [msg[1] for _, msg in client.get_events(executor.topic)] == [small]

        failing = executor.submit(_fail)
        assert not failing.cancel(), "a call handed to dask is running"
        with pytest.raises(ValueError, match="raised on the worker"):
            failing.result(timeout=60)
        executor.shutdown()
        # The client was the caller's: it stays open.
        assert client.status == "running"
        assert client.submit(_echo, 3).result(timeout=60) == 3
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(_echo, 1)
