"""``@taskcloud.function(cluster=...)``: calls on the workers of a named cluster."""

from __future__ import annotations

import pytest
from pytask import ExitCode

import taskcloud
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import TaskTimeoutError
from taskcloud.pools import pools
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools", "stop_leftover_clusters")]


def where() -> str:
    from distributed import get_worker

    return get_worker().address


def test_calls_run_on_the_named_clusters_workers():
    """Call, submit and map go to the running cluster; no pool of the function's own."""
    with taskcloud.Cluster(name="analysis", n_workers=1) as cluster:
        workers = set(cluster.scheduler_info["workers"])
        on_cluster = taskcloud.function(cluster="analysis")(where)

        assert on_cluster() in workers
        assert on_cluster.submit().result(timeout=60) in workers
        double = taskcloud.function(cluster="analysis")(lambda x: 2 * x)
        assert list(double.map(range(5))) == [0, 2, 4, 6, 8]
        assert [pool.label for pool in pools.active()] == ["cluster 'analysis'"]
        assert "cluster 'analysis'" in repr(on_cluster)
        pools.close_all()
        assert taskcloud.list_clusters()["analysis"]["pid"] == cluster.pid


def test_a_cluster_that_does_not_run_starts_from_the_configuration_of_its_name():
    """The first call starts the cluster from the saved configuration named like it."""
    taskcloud.create_cluster_configuration(
        "analysis", worker_cpu=1, worker_memory="1 GiB", n_workers=1
    )
    on_cluster = taskcloud.function(cluster="analysis")(where)
    assert on_cluster().startswith("tls://127.0.0.1:")
    listing = taskcloud.list_clusters()["analysis"]
    assert listing["spec"]["worker_memory"] == 2**30
    assert listing["spec"]["n_workers"] == 1


def test_a_cluster_gone_between_calls_is_started_again():
    """After the cluster is deleted, the next call attaches to a new one."""
    on_cluster = taskcloud.function(cluster="again")(where)
    first = on_cluster()
    taskcloud.delete_cluster("again")
    second = on_cluster()
    assert second != first
    assert "again" in taskcloud.list_clusters()


def test_timeout_holds_on_a_cluster():
    """A call that outlives its timeout fails as on a pool (the start event arms it)."""
    with taskcloud.Cluster(name="timed", n_workers=1):
        sleepy = taskcloud.function(cluster="timed", timeout="1 s")(
            lambda: __import__("time").sleep(120)
        )
        with pytest.raises(TaskTimeoutError, match="timeout of 1 s"):
            sleepy.submit().result(timeout=60)


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"cpu": 2}, "cpu"),
        ({"memory": "1 GiB"}, "memory"),
        ({"n_workers": [0, 2]}, "n_workers"),
        ({"software": "env"}, "software"),
        ({"keepalive": "5 s"}, "keepalive"),
    ],
)
def test_shape_options_cannot_go_with_a_cluster(options, parameter):
    """A pool's shape with cluster= is an error naming both."""
    with pytest.raises(InvalidOptionError, match=r"cluster='analysis'") as caught:
        taskcloud.function(cluster="analysis", **options)
    assert caught.value.parameter == parameter


def test_a_bad_cluster_name_is_refused_at_the_decorator():
    """cluster= takes a name."""
    with pytest.raises(InvalidOptionError, match="cluster="):
        taskcloud.function(cluster="")


def test_decorated_tasks_of_a_pytask_run_use_the_cluster(tmp_path, write, runner):
    """Under -n 2 a task decorated with cluster= runs on that cluster's workers."""
    write(
        "task_cluster.py",
        """
        from pathlib import Path
        from typing import Annotated

        import taskcloud

        @taskcloud.function(cluster="analysis")
        def task_on_cluster() -> Annotated[str, Path("where.txt")]:
            from distributed import get_worker
            return get_worker().address
        """,
    )
    with taskcloud.Cluster(name="analysis", n_workers=1) as cluster:
        result = run_cli(runner, tmp_path, "-n", "2")
        assert result.exit_code == ExitCode.OK, result.output
        assert (tmp_path / "where.txt").read_text() in cluster.scheduler_info["workers"]
        assert "cluster 'analysis'" in result.output


def test_environ_cannot_be_given_with_a_cluster():
    """A named cluster's workers are shared: environ= with cluster= is refused."""
    with pytest.raises(InvalidOptionError, match=r"environ='WHO' is invalid.*worker_options"):
        taskcloud.function(cluster="analysis", environ={"WHO": "me"})(where)
