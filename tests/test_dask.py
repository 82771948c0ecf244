"""The dask backend: an existing client is used, a new cluster stays on loopback."""

from __future__ import annotations

import pytest
from distributed import Client
from distributed import LocalCluster
from pytask import ExitCode
from pytask import build

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
    """Without a client, the backend starts workers and a scheduler on 127.0.0.1."""
    write("task_where.py", TASK)
    session = build(paths=tmp_path, n_workers=2, parallel_backend="dask")

    assert session.exit_code == ExitCode.OK
    worker, scheduler, answer = (tmp_path / "where.txt").read_text().split()
    assert worker.startswith("tcp://127.0.0.1:")
    assert scheduler.startswith("tcp://127.0.0.1:")
    assert answer == "42"


def test_new_cluster_opens_no_socket_beyond_loopback() -> None:
    """Every socket the scheduler, nannies and workers listen on is on 127.0.0.1."""
    import psutil

    from taskcloud.backends import build_dask_executor

    me = psutil.Process()
    before = {c.laddr for c in me.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    executor = build_dask_executor(2)
    try:
        assert executor.submit(sum, [1, 2]).result(timeout=60) == 3
        processes = [me, *me.children(recursive=True)]
        listening = {
            c.laddr
            for p in processes
            for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        } - before
    finally:
        executor.shutdown()

    assert len(listening) >= 3  # scheduler, and a nanny and a worker per worker
    assert {address.ip for address in listening} == {"127.0.0.1"}
