"""A named cluster whose scheduler runs in a process of its own works as any other.

The daemon starts under ``DASK_TASKCLOUD__SCHEDULER_PROCESS=true`` (docs/providers.md),
so its scheduler runs in another process and the daemon asks it for everything over the
wire: clients' scale, adapt and stop requests reach the daemon through the scheduler,
it learns when the scheduler went idle or closed, and its record follows the workers.
"""

from __future__ import annotations

import json
import os

import psutil
import pytest
from distributed import Client
from distributed import get_worker

import taskcloud
from taskcloud.store import Store
from tests.conftest import wait_for
from tests.helpers import gone
from tests.helpers import run_script

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools", "stop_leftover_clusters")]


@pytest.fixture(autouse=True)
def _scheduler_process(monkeypatch):
    """Every daemon this module starts runs its scheduler in a process of its own."""
    monkeypatch.setenv("DASK_TASKCLOUD__SCHEDULER_PROCESS", "true")


def where() -> str:
    return get_worker().address


def _scheduler_pid(cluster: taskcloud.Cluster) -> int:
    """The scheduler's process (the one listening on its port, found without a client,
    which would race an idle cluster's end), which must be the daemon's descendant and
    not the daemon."""
    port = int(cluster.scheduler_address.rsplit(":", 1)[1])
    listening = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert len(listening) == 1, listening
    pid = listening.pop()
    assert pid not in (cluster.pid, os.getpid())
    assert cluster.pid in [p.pid for p in psutil.Process(pid).parents()]
    return int(pid)


def _listed_workers(name: str) -> int:
    return int(taskcloud.list_clusters()[name]["workers"])


def test_scale_adapt_and_stop_reach_the_daemon_through_the_scheduler():
    """A client's requests are relayed to the daemon, its errors raised to the caller;
    the record's worker count follows; closing stops the daemon and its scheduler."""
    with taskcloud.Cluster(name="relayed", n_workers=1, worker_cpu=1) as cluster:
        scheduler = _scheduler_pid(cluster)
        client = cluster.get_client()
        assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
        wait_for(lambda: _listed_workers("relayed") == 1, 30, "the record counting 1 worker")

        cluster.scale(2)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "scaling to 2")
        wait_for(lambda: _listed_workers("relayed") == 2, 30, "the record counting 2 workers")

        cluster.adapt(minimum=0, maximum=1)
        wait_for(lambda: len(client.scheduler_info()["workers"]) <= 1, 60, "adapting down")
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6

        # A daemon's handler that raises: the caller gets its error.
        with pytest.raises(ValueError, match="many"):
            cluster.sync(cluster.scheduler_comm.taskcloud_scale, n="many")
        client.close()
        pid = cluster.pid
    wait_for(lambda: gone(pid, scheduler), 30, "the daemon and its scheduler ending")
    record = Store().get("clusters", "relayed")
    assert record["status"] == "stopped"
    assert record["reason"] == "stopped"
    assert record["workers"] == 0


def test_idle_timeout_stops_the_cluster():
    """The daemon asks its scheduler since when it has been idle, and stops after
    ``idle_timeout``."""
    cluster = taskcloud.Cluster(name="idle", n_workers=1, idle_timeout="4 s")
    scheduler = _scheduler_pid(cluster)
    wait_for(lambda: gone(cluster.pid, scheduler), 60, "the idle cluster stopping itself")
    record = Store().get("clusters", "idle")
    assert record["status"] == "stopped"
    assert record["reason"] == "idle"
    cluster.shutdown_on_close = False
    cluster.close()


def test_a_client_that_shuts_the_scheduler_down_stops_the_daemon():
    """The scheduler's end, which no one told the daemon of, ends the daemon."""
    cluster = taskcloud.Cluster(name="terminated", n_workers=1)
    scheduler = _scheduler_pid(cluster)
    # A plain client's shutdown: it closes the scheduler (a named cluster's client
    # would close the cluster object instead).
    Client(cluster.scheduler_address, security=cluster.security).shutdown()
    wait_for(lambda: gone(cluster.pid, scheduler), 60, "the daemon noticing its scheduler's end")
    assert Store().get("clusters", "terminated")["reason"] == "scheduler closed"
    cluster.shutdown_on_close = False
    cluster.close()


def test_another_process_finds_the_cluster_and_a_function_runs_on_it(tmp_path):
    """A process that did not start the cluster attaches by name; ``cluster=`` calls
    run on its workers."""
    with taskcloud.Cluster(name="shared", n_workers=1) as cluster:
        _scheduler_pid(cluster)
        workers = sorted(cluster.scheduler_info["workers"])
        other = run_script(
            tmp_path,
            """
            import json, taskcloud
            from distributed import get_worker

            def where():
                return get_worker().address

            attached = taskcloud.Cluster(name="shared")
            answer = {
                "created": attached.created,
                "workers": sorted(attached.scheduler_info["workers"]),
                "ran_on": taskcloud.function(cluster="shared")(where)(),
            }
            attached.close()
            print(json.dumps(answer), flush=True)
            """,
        )
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err
        answer = json.loads(out)
        assert not answer["created"]
        assert answer["workers"] == workers
        assert answer["ran_on"] in workers
        assert taskcloud.function(cluster="shared")(where)() in workers
        assert not gone(cluster.pid)
