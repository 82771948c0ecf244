"""Named clusters under faults: killed creators, killed daemons, workers that cannot start."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from pytask import ExitCode
from pytask import build

import taskcloud
from taskcloud.errors import ClusterNotFoundError
from taskcloud.errors import ClusterStartError
from taskcloud.store import Store
from tests.conftest import wait_for
from tests.helpers import gone
from tests.helpers import run_script

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_clusters")]


def _daemon_of(pid: int) -> psutil.Process | None:
    """The cluster process a creator has started, once it runs."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if "taskcloud.daemon" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_a_cluster_whose_creator_is_killed_as_it_starts_finishes_and_is_listed(
    tmp_path, taskcloud_home
):
    """The half-started cluster lives on, listed, and the next request attaches to it."""
    creator = run_script(
        tmp_path,
        """
        import taskcloud
        taskcloud.Cluster(name="halfway", n_workers=1)
        """,
    )
    daemon = wait_for(lambda: _daemon_of(creator.pid), 60, "the creator starting its daemon")
    # The daemon writes the cluster's credentials once it has taken the name over.
    key = taskcloud_home / "clusters" / "halfway" / "tls-key.pem"
    wait_for(key.exists, 60, "the daemon taking the claim over")
    creator.send_signal(signal.SIGKILL)
    creator.wait(timeout=30)

    listing = wait_for(lambda: taskcloud.list_clusters().get("halfway"), 120, "it being listed")
    assert listing["pid"] == daemon.pid
    with taskcloud.Cluster(name="halfway") as attached:
        assert not attached.created
        client = attached.get_client()
        assert client.submit(lambda: "attached").result(timeout=60) == "attached"
        client.close()
    taskcloud.delete_cluster("halfway")
    assert gone(daemon.pid)


def test_a_daemon_whose_claim_was_dropped_exits_and_the_name_starts_anew(tmp_path):
    """A daemon that lost its claim to its dead creator's successor does not run hidden."""
    creator = run_script(
        tmp_path,
        """
        import taskcloud
        taskcloud.Cluster(name="reclaimed", n_workers=1)
        """,
    )
    daemon = wait_for(lambda: _daemon_of(creator.pid), 60, "the creator starting its daemon")
    daemon.suspend()  # stopped before it takes the claim over
    creator.send_signal(signal.SIGKILL)
    creator.wait(timeout=30)
    # As if the creator had died before it handed its claim to the daemon.
    Store().update("clusters", "reclaimed", lambda r: {**r, "pid": creator.pid})

    with taskcloud.Cluster(name="reclaimed", n_workers=1) as cluster:
        assert cluster.created
        daemon.resume()
        wait_for(lambda: gone(daemon.pid), 60, "the displaced daemon exiting")
        assert taskcloud.list_clusters()["reclaimed"]["pid"] == cluster.pid
        client = cluster.get_client()
        assert client.submit(lambda: 7).result(timeout=60) == 7
        client.close()


def test_a_client_whose_cluster_was_killed_fails_at_once_and_a_new_cluster_serves():
    """After SIGKILL of the daemon, the old client raises; a fresh Cluster gives a live one."""
    cluster = taskcloud.Cluster(name="killed", n_workers=1)
    client = cluster.get_client()
    assert client.submit(lambda: 1).result(timeout=60) == 1
    os.kill(cluster.pid, signal.SIGKILL)
    wait_for(lambda: gone(cluster.pid), 30, "the cluster's process dying")

    with pytest.raises(ClusterNotFoundError, match="No running cluster named 'killed'"):
        client.submit(lambda: 2)
    with pytest.raises(ClusterNotFoundError, match="'killed'"):
        cluster.get_client()

    with taskcloud.Cluster(name="killed", n_workers=1) as fresh:
        assert fresh.created
        live = fresh.get_client()
        assert live is not client
        assert live.scheduler.address == fresh.scheduler_address
        assert live.submit(lambda: 3).result(timeout=60) == 3
        live.close()
    client.close()
    cluster.shutdown_on_close = False
    cluster.close()


def test_futures_of_a_killed_cluster_are_cancelled_without_waiting_for_a_reconnect():
    """A future pending when the daemon dies ends well before dask's 30 s reconnect."""
    cluster = taskcloud.Cluster(name="pending", n_workers=1)
    client = cluster.get_client()
    future = client.submit(lambda: __import__("time").sleep(600))
    wait_for(lambda: any(client.processing().values()), 60, "the call running")
    os.kill(cluster.pid, signal.SIGKILL)
    wait_for(future.done, 15, "the pending future ending")
    assert future.status == "cancelled"
    with pytest.raises(ClusterNotFoundError, match="'pending'"):
        client.gather([future])
    client.close()
    cluster.shutdown_on_close = False
    cluster.close()


def test_the_dask_backend_does_not_take_a_default_client_whose_cluster_is_gone(tmp_path):
    """pytask's dask backend starts its own cluster instead of a dead default client."""
    cluster = taskcloud.Cluster(name="gone", n_workers=1)
    client = cluster.get_client()
    os.kill(cluster.pid, signal.SIGKILL)
    wait_for(lambda: gone(cluster.pid), 30, "the cluster's process dying")
    (tmp_path / "task_one.py").write_text("def task_one():\n    pass\n")
    try:
        session = build(paths=tmp_path, n_workers=2, parallel_backend="dask")
    finally:
        client.close()
        cluster.shutdown_on_close = False
        cluster.close()
    assert session.exit_code == ExitCode.OK, [r.exc_info for r in session.execution_reports]


def test_worker_options_a_worker_cannot_start_with_fail_the_start_with_its_error():
    """The worker's own start error reaches the caller; nothing is left running."""
    with pytest.raises(ClusterStartError, match="no_such_option") as caught:
        taskcloud.Cluster(name="broken", n_workers=1, worker_options={"no_such_option": 1})
    assert "'broken' did not start" in str(caught.value)
    assert taskcloud.list_clusters() == {}
    assert Store().get("clusters", "broken") is None
