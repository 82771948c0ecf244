"""taskcloud.Cluster: detached clusters with TLS, found by name, stopping when idle."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security

import taskcloud
from taskcloud.errors import ClusterNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.store import Store
from tests.conftest import wait_for
from tests.helpers import gone
from tests.helpers import run_script

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_clusters")]


def test_cluster_runs_work_scales_and_closes():
    with taskcloud.Cluster(n_workers=1, worker_memory="1 GiB") as cluster:
        client = cluster.get_client()
        assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
        cluster.scale(2)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "scaling to 2")
        workers = client.scheduler_info()["workers"].values()
        assert {w["memory_limit"] for w in workers} == {2**30}
        assert all(w["host"] == "127.0.0.1" for w in workers)
        pid = cluster.pid
        client.close()
    assert gone(pid)
    assert taskcloud.list_clusters() == {}
    assert Store().get("clusters", cluster.name)["status"] == "stopped"


def test_adapt_grows_from_zero_with_queued_work():
    with taskcloud.Cluster(n_workers=0) as cluster:
        client = cluster.get_client()
        assert client.scheduler_info()["workers"] == {}
        cluster.adapt(minimum=0, maximum=2)
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        client.close()


def test_scale_and_adapt_honour_memory_and_cores_and_refuse_unknown_options():
    """scale(memory=, cores=) asks for workers of the cluster's shape; adapt() refuses
    an option it does not take, naming it."""
    with taskcloud.Cluster(n_workers=0, worker_cpu=1, worker_memory="300 MiB") as cluster:
        client = cluster.get_client()
        cluster.scale(memory="600 MiB")
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "scaling to 2")
        cluster.scale(cores=1)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, 60, "scaling to 1")
        with pytest.raises(InvalidOptionError, match=r"memory='lots' is invalid"):
            cluster.scale(memory="lots")
        with pytest.raises(InvalidOptionError, match=r"cores=1.5 is invalid"):
            cluster.scale(cores=1.5)
        with pytest.raises(InvalidOptionError, match=r"interval='1 s' is invalid.*adapt\(\) takes"):
            cluster.adapt(maximum=2, interval="1 s")
        cluster.adapt(minimum_cores=1, maximum_memory="600 MiB")
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        wait_for(lambda: len(client.scheduler_info()["workers"]) >= 1, 60, "keeping the minimum")
        client.close()


def test_named_cluster_outlives_its_process_and_others_attach(tmp_path):
    creator = run_script(
        tmp_path,
        """
        import json, taskcloud
        cluster = taskcloud.Cluster(name="shared", n_workers=1)
        cluster.wait_for_workers(1, timeout=60)
        print(json.dumps(sorted(cluster.scheduler_info["workers"])), flush=True)
        """,
    )
    out, err = creator.communicate(timeout=120)
    assert creator.returncode == 0, err
    workers = json.loads(out)

    attached = taskcloud.Cluster(name="shared")
    assert not attached.created
    assert not attached.shutdown_on_close
    assert sorted(attached.scheduler_info["workers"]) == workers
    client = attached.get_client()
    assert client.submit(lambda: "hello").result(timeout=60) == "hello"
    client.close()
    attached.close()

    listing = taskcloud.list_clusters()
    assert listing["shared"]["workers"] == 1
    assert listing["shared"]["address"].startswith("tls://127.0.0.1:")
    assert listing["shared"]["spec"]["n_workers"] == 1
    assert listing["shared"]["age"] > 0
    pid = listing["shared"]["pid"]

    taskcloud.delete_cluster("shared")
    assert gone(pid)
    assert "shared" not in taskcloud.list_clusters()
    with pytest.raises(ClusterNotFoundError, match="shared"):
        taskcloud.delete_cluster("shared")


def test_attaching_with_other_options_warns_which_are_ignored():
    with taskcloud.Cluster(name="warned", n_workers=1) as cluster:
        with pytest.warns(UserWarning, match=r"n_workers=3 \(running: 1\)"):
            other = taskcloud.Cluster(name="warned", n_workers=3)
        assert other.scheduler_address == cluster.scheduler_address
        other.close()
        assert not gone(cluster.pid)


def test_idle_timeout_stops_a_cluster_whose_creator_was_killed(tmp_path):
    creator = run_script(
        tmp_path,
        """
        import sys, taskcloud, threading
        cluster = taskcloud.Cluster(name="orphan", n_workers=1, idle_timeout="2 s")
        print(cluster.pid, flush=True)
        threading.Event().wait()
        """,
    )
    pid = int(creator.stdout.readline())
    creator.send_signal(signal.SIGKILL)
    creator.wait(timeout=30)
    assert not gone(pid)
    wait_for(lambda: gone(pid), 60, "the orphaned cluster stopping itself")
    record = Store().get("clusters", "orphan")
    assert record["status"] == "stopped"
    assert record["reason"] == "idle"


def test_a_client_that_shuts_the_scheduler_down_stops_the_cluster():
    """The scheduler's end, which no one told the daemon of, ends the daemon."""
    cluster = taskcloud.Cluster(name="terminated", n_workers=1)
    Client(cluster.scheduler_address, security=cluster.security).shutdown()
    wait_for(lambda: gone(cluster.pid), 60, "the daemon noticing its scheduler's end")
    assert Store().get("clusters", "terminated")["reason"] == "scheduler closed"
    cluster.shutdown_on_close = False
    cluster.close()


def test_shutdown_through_the_clusters_own_client_stops_the_cluster():
    """dask's ``client.shutdown()`` on ``cluster.get_client()`` closes the cluster (it
    awaits ``cluster.close()`` in the event loop) and the cluster stops."""
    cluster = taskcloud.Cluster(name="shut-down", n_workers=1)
    client = cluster.get_client()
    assert client.submit(lambda x: x + 1, 1).result(timeout=60) == 2
    pid = cluster.pid
    client.shutdown()
    assert gone(pid)
    assert Store().get("clusters", "shut-down")["status"] == "stopped"
    assert "shut-down" not in taskcloud.list_clusters()


def test_list_drops_clusters_whose_process_died():
    cluster = taskcloud.Cluster(name="crashing", n_workers=0)
    os.killpg(cluster.pid, signal.SIGKILL)
    wait_for(lambda: gone(cluster.pid), 30, "the cluster process dying")
    assert "crashing" not in taskcloud.list_clusters()
    assert Store().get("clusters", "crashing") is None
    with pytest.raises(ClusterNotFoundError, match="No running cluster named 'crashing'"):
        cluster.scale(1)
    cluster.shutdown_on_close = False
    cluster.close()


def test_credentials_are_private_and_required():
    with taskcloud.Cluster(name="private", n_workers=1) as cluster:
        directory = Path(cluster.record["directory"])
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in ("tls-cert.pem", "tls-key.pem"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")

        # A client with credentials of its own is refused by the scheduler.
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=Security.temporary(), timeout=3)
        # So is one that does not speak TLS at all.
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=3)
        # The cluster's own credentials work.
        with Client(address, security=cluster.security, timeout=30) as client:
            assert client.submit(len, "abc").result(timeout=60) == 3


def test_dashboard_link_serves_the_dashboard():
    with taskcloud.Cluster(n_workers=0) as cluster:
        link = cluster.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200


def test_dashboard_link_without_bokeh_says_how_to_get_it(tmp_path, monkeypatch):
    # bokeh is installed here; shadow it so that the cluster's process cannot import it.
    fake = tmp_path / "no_bokeh" / "bokeh"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('bokeh is hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    with (
        taskcloud.Cluster(n_workers=0) as cluster,
        pytest.warns(UserWarning, match=r"pip install 'bokeh"),
    ):
        assert cluster.dashboard_link == ""


def test_two_processes_asking_for_one_name_share_one_cluster(tmp_path):
    source = """
        import taskcloud
        cluster = taskcloud.Cluster(name="race", n_workers=0)
        print(cluster.scheduler_address, cluster.pid, flush=True)
        """
    first = run_script(tmp_path, source)
    second = run_script(tmp_path, source)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == second.returncode == 0, outs
    assert outs[0][0] == outs[1][0]
    assert len(taskcloud.list_clusters()) == 1


def test_configuration_gives_defaults_and_explicit_options_win():
    taskcloud.create_cluster_configuration("small", worker_cpu=1, worker_memory="1 GiB")
    with taskcloud.Cluster(configuration="small", n_workers=0) as cluster:
        assert cluster.spec.worker_memory == 2**30
        assert cluster.spec.worker_cpu == 1
    with taskcloud.Cluster(configuration="small", worker_memory="512 MiB", n_workers=0) as c:
        assert c.spec.worker_memory == 2**29


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"worker_cpu": 0}, "worker_cpu"),
        ({"worker_memory": "lots"}, "worker_memory"),
        ({"n_workers": [3, 1]}, "n_workers"),
        ({"idle_timeout": "soon"}, "idle_timeout"),
        ({"name": "no spaces"}, "name"),
        ({"provider": "cloud"}, "provider"),
        ({"provider_options": {"region": "x"}}, "provider_options"),
        ({"worker_options": {"plugin": object()}}, "worker_options"),
        ({"worker_class": 5}, "worker_class"),
    ],
)
def test_bad_options_name_the_parameter(options, parameter):
    with pytest.raises(InvalidOptionError) as caught:
        taskcloud.Cluster(**options)
    assert caught.value.parameter == parameter
    assert Store().all("clusters") == {}


@pytest.mark.parametrize(
    ("option", "suggestion"),
    [("cores", "worker_cpu"), ("memory_limit", "worker_memory"), ("keepalive", "idle_timeout")],
)
def test_unknown_option_suggests_the_clusters_option(option, suggestion):
    """dask's and the decorator's words name the cluster option they stand for."""
    with pytest.raises(taskcloud.UnknownOptionError, match=f"got an unknown option {option!r}"):
        taskcloud.Cluster(**{option: 2})
    with pytest.raises(
        TypeError, match=f"Did you mean {suggestion!r}\\? Its options are n_workers"
    ):
        taskcloud.Cluster(**{option: 2})
    assert Store().all("clusters") == {}


def test_a_shape_the_host_cannot_hold_is_refused_before_starting():
    with pytest.raises(ResourceUnavailableError, match="cpu=512"):
        taskcloud.Cluster(worker_cpu=512)
    assert Store().all("clusters") == {}


def test_a_name_too_long_for_a_directory_is_refused():
    """A 300-character name fails at the constructor, naming the longest accepted."""
    with pytest.raises(
        InvalidOptionError, match=r"name='aaaa.*' is invalid\. Expected a name of at most 64"
    ):
        taskcloud.Cluster(name="a" * 300)
    assert Store().all("clusters") == {}


def test_listings_hide_the_values_of_workers_env(runner):
    """Workers get their env; list_clusters, `cluster list --json` and the warning about
    ignored options name its keys only."""
    from taskcloud.cli import main

    worker_options = {"env": {"TASKCLOUD_TEST_TOKEN": "s3cret"}}
    with taskcloud.Cluster(name="secretive", n_workers=1, worker_options=worker_options) as cluster:
        client = cluster.get_client()
        # A lambda: os.environ.get itself would pickle this process's os.environ along.
        seen = client.submit(lambda: os.environ.get("TASKCLOUD_TEST_TOKEN")).result(timeout=60)
        assert seen == "s3cret"
        client.close()
        spec = taskcloud.list_clusters()["secretive"]["spec"]
        assert spec["worker_options"] == {"env": {"TASKCLOUD_TEST_TOKEN": "***"}}
        listed = runner.invoke(main, ["cluster", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        assert "TASKCLOUD_TEST_TOKEN" in listed.output
        assert "s3cret" not in listed.output
        other = {"env": {"TASKCLOUD_TEST_TOKEN": "other"}}
        with pytest.warns(UserWarning, match=r"worker_options=.*\*\*\*") as warned:
            taskcloud.Cluster(name="secretive", worker_options=other).close()
        assert not any("s3cret" in str(w.message) or "other" in str(w.message) for w in warned)


LEAVES_ITS_CLIENT = """
    import sys

    import taskcloud

    if __name__ == "__main__":
        cluster = taskcloud.Cluster(name="left", n_workers=1, worker_memory="1 GiB")
        client = cluster.get_client()
        print(client.submit(sum, [1, 2]).result())
        if sys.argv[1] == "close":
            client.close()
        if sys.argv[1] in ("close", "delete"):
            taskcloud.delete_cluster("left")
"""


@pytest.mark.parametrize("ending", ["close", "delete", "keep"])
def test_a_script_with_a_named_clusters_client_exits_quietly(tmp_path, ending):
    """A client closed, left open over a deleted cluster, or left open over a running
    one: the script prints its result and nothing at exit."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(LEAVES_ITS_CLIENT))
    result = subprocess.run(
        [sys.executable, str(path), ending],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3\n"
    assert result.stderr == ""
