"""Saved cluster configurations in the SQLite store, and functions that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import taskcloud
from taskcloud import ConfigurationNotFoundError
from taskcloud import InvalidOptionError
from taskcloud import SoftwareEnvironmentNotFoundError
from taskcloud import StoreError
from taskcloud.cli import main
from taskcloud.store import Store
from taskcloud.store import home


def test_state_lives_under_taskcloud_home(taskcloud_home) -> None:
    """TASKCLOUD_HOME moves the state file."""
    taskcloud.create_cluster_configuration("big", worker_cpu=2)
    assert home() == taskcloud_home
    assert (taskcloud_home / "taskcloud.sqlite").is_file()


def test_create_list_delete() -> None:
    """Configurations are saved normalised, listed by name and deleted."""
    saved = taskcloud.create_cluster_configuration(
        "big", worker_cpu=2, worker_memory="2 GiB", n_workers=[0, 3], keepalive="1 minute"
    )
    assert saved == {
        "worker_cpu": 2,
        "worker_memory": 2 * 2**30,
        "n_workers": [0, 3],
        "keepalive": 60.0,
    }
    taskcloud.create_cluster_configuration("small", worker_memory=10**9)
    assert list(taskcloud.list_cluster_configurations()) == ["big", "small"]
    taskcloud.delete_cluster_configuration("big")
    assert list(taskcloud.list_cluster_configurations()) == ["small"]


def test_bad_values_name_the_configuration_option() -> None:
    with pytest.raises(
        InvalidOptionError, match=r"worker_memory='lots' is invalid\. Expected bytes"
    ):
        taskcloud.create_cluster_configuration("bad", worker_memory="lots")
    with pytest.raises(InvalidOptionError, match=r"name='no spaces' is invalid"):
        taskcloud.create_cluster_configuration("no spaces", worker_cpu=1)
    assert taskcloud.list_cluster_configurations() == {}


def test_unknown_option_suggests_the_configuration_option() -> None:
    """cpu= (the decorator's word) is not a configuration's option: worker_cpu is."""
    with pytest.raises(taskcloud.UnknownOptionError) as caught:
        taskcloud.create_cluster_configuration("big", cpu=2)
    assert str(caught.value) == (
        "taskcloud.create_cluster_configuration got an unknown option 'cpu'. Did you mean "
        "'worker_cpu'? Its options are worker_cpu, worker_memory, worker_gpu, software, "
        "n_workers, keepalive, threads_per_worker, environ, provider, dashboard."
    )
    assert taskcloud.list_cluster_configurations() == {}


def test_deleting_an_unknown_configuration_lists_the_saved_ones() -> None:
    taskcloud.create_cluster_configuration("big", worker_cpu=2)
    with pytest.raises(
        ConfigurationNotFoundError, match=r"No cluster configuration named 'huge'. Saved: 'big'."
    ):
        taskcloud.delete_cluster_configuration("huge")


def test_function_takes_defaults_from_a_configuration() -> None:
    """A configuration sets the decorator's defaults; explicit options win."""
    taskcloud.create_cluster_configuration("big", worker_cpu=2, worker_memory="3 GiB", keepalive=5)

    @taskcloud.function(configuration="big", cpu=1)
    def fit(x):
        return x

    assert (fit.spec.cpu, fit.spec.memory, fit.spec.keepalive) == (1, 3 * 2**30, 5.0)
    assert fit.spec.configuration == "big"


def test_unknown_configuration_fails_when_decorating() -> None:
    with pytest.raises(ConfigurationNotFoundError, match="No cluster configuration named 'nope'"):
        taskcloud.function(configuration="nope")


def test_concurrent_writers_lose_nothing(taskcloud_home) -> None:
    """Several processes writing at once all get their configurations saved."""
    script = (
        "import sys, taskcloud\n"
        "for i in range(20):\n"
        "    taskcloud.create_cluster_configuration(f'p{sys.argv[1]}-{i}', worker_cpu=1)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(n)]) for n in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    assert len(taskcloud.list_cluster_configurations()) == 80


def test_a_damaged_state_file_is_reported_and_kept(taskcloud_home) -> None:
    """A corrupt file gives an error that says how to reset it, and is left as it was."""
    path = taskcloud_home / "taskcloud.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot be used: file is not a database.*move it away"):
        taskcloud.list_cluster_configurations()
    assert path.read_bytes() == b"this is not a database" * 100
    assert Store(taskcloud_home / "fresh.sqlite").all("configurations") == {}


def test_a_configuration_naming_an_unknown_software_environment_is_refused() -> None:
    """software= must name a saved environment when the configuration is saved, not at
    its first use; the error lists the saved ones."""
    with pytest.raises(
        SoftwareEnvironmentNotFoundError,
        match=r"No software environment named 'nope'\. Saved: none\.",
    ):
        taskcloud.create_cluster_configuration("big", worker_cpu=2, software="nope")
    assert taskcloud.list_cluster_configurations() == {}


def test_listings_hide_environ_values() -> None:
    """list_cluster_configurations() and `config list --json` show environ's keys with
    their values hidden; functions still get the values."""
    taskcloud.create_cluster_configuration("secret", environ={"TOKEN": "s3cret"})
    assert taskcloud.list_cluster_configurations() == {"secret": {"environ": {"TOKEN": "***"}}}
    listed = CliRunner().invoke(main, ["config", "list", "--json"])
    assert json.loads(listed.output) == {"secret": {"environ": {"TOKEN": "***"}}}

    @taskcloud.function(configuration="secret")
    def read() -> None:
        return None

    assert read.spec.environ == (("TOKEN", "s3cret"),)
