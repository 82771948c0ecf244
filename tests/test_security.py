"""Pools and the dask backend: TLS with credentials of their own, dashboards on request."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from distributed import Client
from distributed.comm.core import CommClosedError
from distributed.comm.core import FatalCommClosedError

import taskcloud
from taskcloud import credentials
from taskcloud.configurations import create_cluster_configuration
from taskcloud.configurations import function_defaults
from taskcloud.errors import InvalidOptionError
from taskcloud.pools import pools
from taskcloud.specs import FunctionSpec
from tests import helpers
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools")]

#: How long a refused client may try before it gives up.
CONNECT_TIMEOUT = 3


@pytest.fixture
def foreign(tmp_path):
    """TLS credentials of another taskcloud cluster: valid, but not this one's."""
    return credentials.create(tmp_path / "foreign", "foreign")


@pytest.fixture
def executor():
    from taskcloud.backends import build_dask_executor

    started = build_dask_executor(1)
    yield started
    started.shutdown()


def _touch(path: str) -> None:
    Path(path).write_text("ran")


def _addresses(client) -> list[str]:
    """The scheduler's address, and every worker's and nanny's."""
    info = client.scheduler_info()
    workers = info["workers"]
    return [info["address"], *workers, *(w["nanny"] for w in workers.values() if w["nanny"])]


def _connect(address: str, security=None) -> None:
    """Open a comm to ``address`` and close it; an error if the server refuses it."""
    from distributed.comm import connect

    async def main() -> None:
        args = security.get_connection_args("client") if security is not None else {}
        comm = await connect(address, timeout=CONNECT_TIMEOUT, **args)
        await comm.close()

    asyncio.run(main())


def _run_as_stranger(address: str, security, marker: Path) -> None:
    with Client(address, security=security, timeout=CONNECT_TIMEOUT) as client:
        client.run_on_scheduler(_touch, str(marker))
        client.run(_touch, str(marker))


#: How a TLS server ends the handshake of a plain client, and of a foreign one.
PLAIN_REFUSED = r"TCP \(closed\)"
FOREIGN_REFUSED = "TLS certificate does not match"


def _assert_refuses_strangers(client, security, foreign, marker: Path) -> None:
    addresses = _addresses(client)
    assert len(addresses) >= 3
    for address in addresses:
        assert address.startswith("tls://127.0.0.1:")
        _connect(address, security)  # the run's own credentials get in
        with pytest.raises(CommClosedError, match=PLAIN_REFUSED):
            _connect(address.replace("tls://", "tcp://"))
        with pytest.raises(FatalCommClosedError, match=FOREIGN_REFUSED):
            _connect(address, foreign)
    scheduler = addresses[0]
    with pytest.raises(CommClosedError, match=PLAIN_REFUSED):
        _run_as_stranger(scheduler.replace("tls://", "tcp://"), None, marker)
    with pytest.raises(FatalCommClosedError, match=FOREIGN_REFUSED):
        _run_as_stranger(scheduler, foreign, marker)
    assert not marker.exists()


def test_pool_refuses_plain_and_foreign_clients(tmp_path, foreign) -> None:
    """A pool's scheduler, workers and nannies speak TLS with the pool's credentials
    alone: a plain client and one with another cluster's certificate are refused."""
    remote = taskcloud.function(n_workers=[1, 1], keepalive="5 s")(helpers.pid)
    assert remote() != os.getpid()
    security = remote.cluster.security
    _assert_refuses_strangers(remote.client, security, foreign, tmp_path / "ran")
    assert remote() != os.getpid()


def test_dask_backend_refuses_plain_and_foreign_clients(tmp_path, foreign, executor) -> None:
    """The dask backend's cluster refuses a plain client and a foreign TLS client."""
    assert executor.submit(sum, [1, 2]).result(timeout=60) == 3
    client = executor._client  # type: ignore[attr-defined]
    _assert_refuses_strangers(client, client.security, foreign, tmp_path / "ran")
    assert executor.submit(sum, [3, 4]).result(timeout=60) == 7


def test_pool_credentials_are_private_and_go_with_the_pool() -> None:
    """A pool's key and certificate are 0600 in a 0700 directory, removed when it closes."""
    remote = taskcloud.function(n_workers=[0, 1], keepalive="5 s")(helpers.pid)
    other = taskcloud.function(n_workers=[0, 1], keepalive="5 s", memory="300 MiB")(helpers.pid)
    remote(), other()
    directory = remote.cluster.credentials
    assert directory != other.cluster.credentials
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.getuid()
    for name in (credentials.CERT, credentials.KEY):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    pools.close_all()
    assert not directory.exists()


KILLED_OWNER = """
import os, taskcloud

def one():
    return 1

if __name__ == "__main__":
    remote = taskcloud.function(n_workers=[0, 1])(one)
    assert remote() == 1
    print(remote.cluster.credentials, flush=True)
    os.kill(os.getpid(), 9)
"""


def test_credentials_of_a_killed_process_go_with_the_next_pool(tmp_path) -> None:
    """A SIGKILLed owner leaves its credentials behind; the next pool removes them."""
    script = tmp_path / "owner.py"
    script.write_text(KILLED_OWNER)
    owner = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert owner.returncode == -9, owner.stderr
    left = Path(owner.stdout.strip())
    assert left.is_dir()
    assert left.parent == Path(tempfile.gettempdir())
    taskcloud.function(n_workers=[0, 1], keepalive="5 s")(helpers.pid)()
    assert not left.exists()


EXITING_OWNER = """
from taskcloud import credentials

security, directory = credentials.ephemeral("left open")
print(directory, flush=True)
"""


def test_credentials_left_open_go_when_their_process_exits(tmp_path) -> None:
    """Ephemeral credentials nobody discarded are removed as their process exits."""
    owner = subprocess.run(
        [sys.executable, "-c", EXITING_OWNER], capture_output=True, text=True, timeout=60
    )
    assert owner.returncode == 0, owner.stderr
    left = Path(owner.stdout.strip())
    assert left.name.startswith(credentials.EPHEMERAL_PREFIX)
    assert not left.exists()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _http_ports(client) -> list[int]:
    """The HTTP ports of the scheduler and of every worker."""
    info = client.scheduler_info()
    workers = info["workers"].values()
    return [info["services"]["dashboard"], *(w["services"]["dashboard"] for w in workers)]


def _assert_health_only(client) -> None:
    for port in _http_ports(client):
        assert _get(f"http://127.0.0.1:{port}/health") == 200
        for page in ("/info/main/workers.html", "/info/logs/x.html", "/metrics", "/status"):
            assert _get(f"http://127.0.0.1:{port}{page}") == 404, page


def test_pool_without_dashboard_serves_health_alone() -> None:
    """By default a pool has no dashboard: no link, and no page beyond /health."""
    remote = taskcloud.function(n_workers=[1, 1], keepalive="5 s")(helpers.pid)
    remote()
    assert remote.pool.dashboard_link == ""
    _assert_health_only(remote.client)


def test_dask_backend_serves_health_alone(executor) -> None:
    """The dask backend's scheduler and workers serve no page beyond /health."""
    assert executor.submit(sum, [1, 2]).result(timeout=60) == 3
    _assert_health_only(executor._client)  # type: ignore[attr-defined]


def test_pool_with_dashboard_serves_it() -> None:
    """dashboard=True gives the pool a dask dashboard on 127.0.0.1, and its own pool."""
    pytest.importorskip("bokeh", reason="the dask dashboard needs bokeh")
    plain = taskcloud.function(n_workers=[0, 1], keepalive="5 s")(helpers.pid)
    shown = taskcloud.function(n_workers=[0, 1], keepalive="5 s", dashboard=True)(helpers.pid)
    shown()
    assert shown.pool is not plain.pool
    link = shown.pool.dashboard_link
    assert link.startswith("http://127.0.0.1:")
    assert _get(link) == 200


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_dashboard_must_be_a_bool(value) -> None:
    """dashboard= takes True or False, checked when the decorator is applied."""
    with pytest.raises(InvalidOptionError, match=r"dashboard.*True or False"):
        taskcloud.function(dashboard=value)


def test_dashboard_is_part_of_the_pool_key() -> None:
    """Functions that differ only in dashboard= get pools of their own."""
    assert FunctionSpec(dashboard=True).pool() != FunctionSpec().pool()
    assert FunctionSpec(dashboard=True).pool().describe().endswith("dashboard")


def test_configuration_sets_the_dashboard() -> None:
    """A saved configuration carries dashboard=, as a decorator default."""
    assert create_cluster_configuration("shown", dashboard=True) == {"dashboard": True}
    assert function_defaults("shown") == {"dashboard": True}
    remote = taskcloud.function(configuration="shown")(helpers.pid)
    assert remote.spec.dashboard is True
    assert (
        taskcloud.function(configuration="shown", dashboard=False)(helpers.pid).spec.dashboard
        is False
    )


def test_config_create_takes_the_dashboard_flag(runner) -> None:
    """taskcloud config create --dashboard saves the decorator default."""
    from taskcloud.cli import main

    result = runner.invoke(main, ["config", "create", "shown", "--dashboard", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"shown": {"dashboard": True}}
    assert function_defaults("shown") == {"dashboard": True}


SUMMARY_TASKS = """
from pathlib import Path
from typing import Annotated
from pytask import Product
import taskcloud

@taskcloud.function(n_workers=[0, 1], keepalive="5 s", dashboard={dashboard})
def task_shown(path: Annotated[Path, Product] = Path("shown.txt")) -> None:
    path.write_text("ran")
"""


@pytest.mark.parametrize("dashboard", [True, False])
def test_summary_shows_a_pools_dashboard_when_it_has_one(
    runner, tmp_path, write, dashboard
) -> None:
    """Under pytask -n 2 the summary links a pool's dashboard, and only when asked for."""
    if dashboard:
        pytest.importorskip("bokeh", reason="the dask dashboard needs bokeh")
    write("task_shown.py", SUMMARY_TASKS.format(dashboard=dashboard))
    result = run_cli(runner, tmp_path, "-n", "2")
    assert result.exit_code == 0, result.output
    assert "Where tasks ran" in result.output
    assert ("http://127.0.0.1:" in result.output) is dashboard, result.output
