"""The SSH provider against a real sshd on 127.0.0.1 and 127.0.0.2 (tests/sshd.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import dask
import pytest
from distributed import Client
from pytask import ExitCode
from pytask import build

import taskcloud
from conftest import wait_for
from taskcloud import pools
from taskcloud.capacity import Shape
from taskcloud.errors import ClusterStartError
from taskcloud.errors import HostUnreachableError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.errors import WorkerLostError
from taskcloud.providers import kinds
from taskcloud.providers.cluster import start_pool
from taskcloud.providers.protocol import PoolRequest
from taskcloud.providers.ssh import Host
from taskcloud.providers.ssh import HostInfo
from taskcloud.providers.ssh import SSHCapacity
from taskcloud.providers.ssh import SSHProvider
from taskcloud.providers.ssh import parse_options
from tests.helpers import gone
from tests.helpers import profile_toml

# The hosts' workers cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _host(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


def _pyproject(path: Path, profile: dict, default: bool = False) -> None:
    header = '[tool.taskcloud]\nprovider = "lab"\n\n' if default else ""
    (path / "pyproject.toml").write_text(header + profile_toml("lab", profile))


@pytest.fixture
def lab(sshd, tmp_path, monkeypatch):
    """A project whose profile ``lab`` is the test sshd's two hosts; its pools and
    providers close after the test."""
    _pyproject(tmp_path, sshd.profile())
    monkeypatch.chdir(tmp_path)
    yield sshd
    pools.pools.close_all()
    kinds.close_all()


def _request(**over) -> PoolRequest:
    settings = dict(
        shape=Shape(cpu=1, memory=2**30),
        threads_per_worker=1,
        name="taskcloud-ssh-test",
        label="pool ssh",
        minimum=2,
        maximum=2,
        keepalive=30.0,
    )
    settings.update(over)
    return PoolRequest(**settings)


def _no_processes_left(sshd, timeout: float = 30) -> None:
    wait_for(
        lambda: not sshd.processes(), timeout, f"the hosts' processes ending: {sshd.cmdlines()}"
    )


# --------------------------------------------------------------------------- options


def test_options_name_what_is_wrong() -> None:
    """Unknown keys list the known ones; bad hosts and ports say the accepted form."""
    with pytest.raises(InvalidOptionError, match=r"hostz=.*Expected one of hosts, user, port"):
        parse_options({"hostz": ["a"]})
    with pytest.raises(InvalidOptionError, match=r"hosts=\[\] is invalid.*\[user@\]host\[:port\]"):
        parse_options({"hosts": []})
    with pytest.raises(InvalidOptionError, match=r"port=0 is invalid.*1 to 65535"):
        parse_options({"hosts": ["a"], "port": 0})
    with pytest.raises(InvalidOptionError, match=r"connect_timeout=-1"):
        parse_options({"hosts": ["a"], "connect_timeout": -1})


def test_hosts_take_user_port_and_tables() -> None:
    """``user@host:port`` and tables override the provider's user, port and max_workers."""
    options = parse_options(
        {
            "hosts": ["n1", "bob@n2:2222", {"host": "n3", "port": 23, "max_workers": 2}],
            "user": "alice",
            "max_workers": 5,
        }
    )
    assert [(h.address, h.user, h.port, h.max_workers) for h in options.hosts] == [
        ("n1", "alice", 22, 5),
        ("n2", "bob", 2222, 5),
        ("n3", "alice", 23, 2),
    ]


@pytest.mark.parametrize(
    "entry", ["user@@host:22:33", "user@host:22:33", "@host", "user@", "us er@host", "host:ssh"]
)
def test_a_malformed_host_names_hosts_the_value_and_the_form(entry) -> None:
    """A host entry that is not ``[user@]host[:port]`` is refused, naming ``hosts``,
    the entry and the accepted form."""
    with pytest.raises(InvalidOptionError) as caught:
        parse_options({"hosts": ["n1", entry]})
    assert str(caught.value).startswith(f"hosts={entry!r} is invalid. Expected ")
    assert "[user@]host[:port]" in str(caught.value)


def test_a_missing_identity_is_an_option_error(tmp_path, monkeypatch) -> None:
    """An ``identity`` that names no file is an error naming the option and the path,
    from the library and from ``taskcloud provider check``, not an unreachable host."""
    from click.testing import CliRunner

    from taskcloud.cli import main

    missing = tmp_path / "keys" / "id_missing"
    with pytest.raises(
        InvalidOptionError,
        match=rf"identity='{re.escape(str(missing))}' is invalid\. Expected a private key "
        rf"file; there is no file at {re.escape(str(missing))}",
    ):
        parse_options({"hosts": ["n1"], "identity": str(missing)})

    _pyproject(tmp_path, {"kind": "ssh", "hosts": ["127.0.0.1"], "identity": str(missing)})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["provider", "check", "lab"], env={"COLUMNS": "80"})
    assert result.exit_code == 1, result.output
    assert f"identity={str(missing)!r} is invalid" in " ".join(result.output.split())
    assert "unreachable" not in result.output


def test_capacity_spreads_within_each_host_and_names_them_all() -> None:
    """Each host holds what its cores, memory and max_workers allow; a shape none holds
    names every host; default memory is the smallest host's share."""
    small = HostInfo(Host("a", "u", 22), cores=2, memory=8 * 2**30)
    capped = HostInfo(Host("b", "u", 22, max_workers=1), cores=4, memory=16 * 2**30)
    capacity = SSHCapacity("lab", [small, capped])
    assert capacity.fit(Shape(cpu=1, memory=2**30)) == 3
    assert capacity.fit(Shape(cpu=2, memory=6 * 2**30)) == 2
    assert capacity.default_memory(1) == 4 * 2**30
    with pytest.raises(
        ResourceUnavailableError,
        match=r"cpu=8 cannot be satisfied: lab has a \(2 cores, 8 GiB\), b \(4 cores, 16 GiB\)",
    ):
        capacity.check(Shape(cpu=8, memory=2**30))


def test_a_shape_with_default_memory_names_it_as_a_default() -> None:
    """A shape no host holds, asked for without memory, names the memory it would get
    as the default it is, not as if it had been asked for."""
    wide = HostInfo(Host("a", "u", 22), cores=8, memory=16 * 2**30)
    gpu = HostInfo(Host("b", "u", 22), cores=2, memory=8 * 2**30, gpus=1)
    capacity = SSHCapacity("lab", [wide, gpu])
    shape = Shape.of(capacity, cpu=4, memory=None, gpu=1)
    with pytest.raises(
        ResourceUnavailableError,
        match=r"^cpu=4, gpu=1 \(memory defaults to 8 GiB\) cannot be satisfied: lab has a ",
    ):
        capacity.check(shape)


# ------------------------------------------------------------------------- the hosts


@pytest.mark.ssh
@pytest.mark.slow
def test_decorated_calls_run_on_both_hosts(lab) -> None:
    """A profile's pool of [0, 4] one-core workers spreads its load over both hosts."""

    @taskcloud.function(provider="lab", n_workers=[0, 4], keepalive="30 s")
    def where(seconds: float) -> str:
        import distributed

        time.sleep(seconds)
        return distributed.get_worker().address

    assert _host(where(0)) in lab.hosts
    addresses = list(where.map([1.0] * 8))
    assert {_host(address) for address in addresses} == set(lab.hosts)


@pytest.mark.ssh
@pytest.mark.slow
def test_pytask_runs_decorated_tasks_on_the_hosts(sshd, tmp_path, write, monkeypatch) -> None:
    """With ``provider = "lab"`` in pyproject, decorated tasks run on the SSH workers and
    plain tasks locally."""
    _pyproject(tmp_path, sshd.profile(), default=True)
    monkeypatch.chdir(tmp_path)
    write(
        "task_hosts.py",
        """
        from pathlib import Path
        from typing import Annotated
        import taskcloud

        def _where():
            import distributed
            try:
                return distributed.get_worker().address
            except ValueError:
                return "local"

        @taskcloud.function(n_workers=[0, 2])
        def task_remote() -> Annotated[str, Path("remote.txt")]:
            return _where()

        def task_plain() -> Annotated[str, Path("plain.txt")]:
            return _where()
        """,
    )
    try:
        session = build(paths=tmp_path, n_workers=2)
    finally:
        pools.pools.close_all()
        kinds.close_all()
    assert session.exit_code == ExitCode.OK
    assert _host((tmp_path / "remote.txt").read_text()) in sshd.hosts
    assert (tmp_path / "plain.txt").read_text() == "local"


@pytest.mark.ssh
@pytest.mark.slow
def test_pytask_s_shows_what_a_remote_task_prints_as_it_runs(sshd, tmp_path, write) -> None:
    """Under ``pytask -n 2 -s`` a decorated task's output on a host reaches the
    terminal while the task still runs, as a local worker's does."""
    _pyproject(tmp_path, sshd.profile(), default=True)
    release = tmp_path / "release"
    write(
        "task_talks.py",
        f"""
        import time
        from pathlib import Path
        import taskcloud

        @taskcloud.function(n_workers=[0, 1])
        def task_talks() -> None:
            print("remote line one", flush=True)
            deadline = time.monotonic() + 120
            while not Path({str(release)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        """,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pytask", "-n", "2", "-s"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:  # ends when pytask does
            seen.append(line)
            if "remote line one" in line:
                break
        # Shown while the task still waits for the release file.
        assert any("remote line one" in line for line in seen), "".join(seen)
        assert process.poll() is None
        release.touch()
        rest = process.communicate(timeout=120)[0]
    finally:
        release.touch()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, "".join(seen) + rest


@pytest.mark.ssh
def test_unknown_host_key_is_refused_with_the_fix(sshd, tmp_path) -> None:
    """A host whose key is not in known_hosts is refused, saying how to add it."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    provider = SSHProvider("lab", sshd.options(known_hosts=str(empty)))
    hint = rf"ssh-keyscan -p {sshd.port} 127\.0\.0\.1 >> {empty}"
    with pytest.raises(HostUnreachableError, match=hint):
        provider.capacity()
    missing = tmp_path / "absent_known_hosts"
    provider = SSHProvider("lab", sshd.options(known_hosts=str(missing), hosts=["127.0.0.2"]))
    with pytest.raises(HostUnreachableError, match=rf"127\.0\.0\.2 >> {missing}"):
        provider.capacity()


@pytest.mark.ssh
@pytest.mark.slow
def test_unreachable_host_is_named_and_the_others_used(sshd, caplog) -> None:
    """127.0.0.3, where nothing listens, is named with its reason; the others get the workers."""
    from distributed import Client

    provider = SSHProvider("lab", sshd.options(hosts=[*sshd.hosts, "127.0.0.3"], connect_timeout=5))
    with caplog.at_level(logging.WARNING, logger="taskcloud"):
        capacity = provider.capacity()
    assert "127.0.0.3" in capacity.unreachable
    assert any("127.0.0.3 is left out" in r.getMessage() for r in caplog.records)
    workers = start_pool(provider, _request())
    try:
        with Client(workers, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            assert {_host(a) for a in client.scheduler_info()["workers"]} == set(sshd.hosts)
    finally:
        workers.close()
        provider.close()
    alone = SSHProvider("lab", sshd.options(hosts=["127.0.0.3"], connect_timeout=5))
    with pytest.raises(HostUnreachableError, match=r"127\.0\.0\.3: .*refused"):
        alone.capacity()


@pytest.mark.ssh
def test_a_shape_no_host_holds_names_every_host(sshd) -> None:
    """cpu=64 fails naming each host's cores and memory."""
    provider = SSHProvider("lab", sshd.options())
    with pytest.raises(
        ResourceUnavailableError,
        match=r"cpu=64 cannot be satisfied: lab has 127\.0\.0\.1 \(\d+ cores, .*\), 127\.0\.0\.2 \(",
    ):
        provider.capacity().check(Shape(cpu=64, memory=2**30))


@pytest.mark.ssh
def test_check_prints_the_host_key_fix_whole_at_80_columns(sshd, tmp_path, monkeypatch) -> None:
    """``provider check`` at 80 columns wraps the reason in its table and prints the
    ``ssh-keyscan`` command that adds the host key whole, on a line of its own."""
    from click.testing import CliRunner

    from taskcloud.cli import main

    empty = tmp_path / "a-directory-with-a-rather-long-name" / "known_hosts"
    empty.parent.mkdir()
    empty.write_text("")
    _pyproject(tmp_path, sshd.profile(known_hosts=str(empty), hosts=["127.0.0.1"]))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["provider", "check", "lab"], env={"COLUMNS": "80"})

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in lines
    assert "…" not in result.output
    row = next(line for line in lines if line.lstrip().startswith("127.0.0.1"))
    assert "unreachable" in row


@pytest.mark.ssh
@pytest.mark.slow
def test_a_dropped_connection_reruns_then_names_the_host(lab, tmp_path) -> None:
    """A call whose host's SSH connection drops runs again, then fails naming the host."""
    started = tmp_path / "started.txt"

    @taskcloud.function(provider="lab", n_workers=[0, 2], retries=1)
    def hang(path: str) -> None:
        import distributed

        with open(path, "a") as file:
            file.write(distributed.get_worker().address + "\n")
        time.sleep(120)

    future = hang.submit(str(started))
    for attempt in (1, 2):
        wait_for(
            lambda attempt=attempt: (
                started.exists() and len(started.read_text().split()) >= attempt
            ),
            60,
            f"attempt {attempt} starting",
        )
        host = _host(started.read_text().split()[attempt - 1])
        wait_for(lambda host=host: lab.drop(host), 10, f"dropping {host}'s connection")
    with pytest.raises(WorkerLostError, match=rf"'hang'.* 2 attempts \(last on tls://{host}:"):
        future.result(timeout=60)


@pytest.mark.ssh
@pytest.mark.slow
def test_secrets_never_reach_the_hosts_command_lines(sshd) -> None:
    """``environ`` values and the TLS key's PEM text are in no host process's command
    line or environment as the host shows it; the workers have the values; nothing is
    left after close."""
    from distributed import Client

    provider = SSHProvider("lab", sshd.options())
    workers = start_pool(provider, _request(environ={"TASKCLOUD_TEST_TOKEN": "s3cret-token-value"}))
    try:
        with Client(workers, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            values = client.run(lambda: os.environ.get("TASKCLOUD_TEST_TOKEN"))
            assert set(values.values()) == {"s3cret-token-value"}
            key = Path(workers.security.tls_worker_key).read_text().splitlines()[1]
            lines = sshd.cmdlines()
            assert lines
            assert not [
                line for line in lines if "s3cret" in line or key in line or "BEGIN" in line
            ]
            environs = [str(process.environ()) for process in sshd.processes()]
            assert not [env for env in environs if "s3cret" in env or key in env]
    finally:
        workers.close()
        provider.close()
    _no_processes_left(sshd)


@pytest.mark.ssh
@pytest.mark.slow
def test_a_pool_whose_workers_never_came_leaves_nothing(sshd) -> None:
    """A pool connects to a host for its first worker there, not before; closing a pool
    whose workers never came leaves nothing on the hosts."""
    provider = SSHProvider("lab", sshd.options())
    workers = start_pool(provider, _request(minimum=0, maximum=2))
    try:
        assert workers.n_workers == 0
        assert not any("hostside agent" in line for line in sshd.cmdlines())
    finally:
        workers.close()
        provider.close()
    _no_processes_left(sshd)


@pytest.mark.ssh
def test_check_reports_each_host(sshd) -> None:
    """check() names each host: reachable with versions and hardware, or why not."""
    provider = SSHProvider("lab", sshd.options(hosts=[*sshd.hosts, "127.0.0.3"], connect_timeout=5))
    reports = {report.host: report for report in provider.check()}
    for host in sshd.hosts:
        report = reports[host]
        assert report.reachable, report
        assert report.versions_match, report
        assert report.python
        assert report.cores >= 1
        assert report.memory > 0
    assert not reports["127.0.0.3"].reachable
    assert "refused" in reports["127.0.0.3"].reason


@pytest.mark.ssh
@pytest.mark.slow
def test_a_named_cluster_runs_its_workers_on_the_hosts(sshd, taskcloud_home) -> None:
    """``Cluster(provider="ssh", provider_options=...)`` starts its workers on the hosts;
    closing it leaves nothing there."""
    with taskcloud.Cluster(
        n_workers=2,
        worker_memory="1 GiB",
        provider="ssh",
        provider_options=sshd.options(),
        worker_options={"resources": {"licence": 1}},
    ) as cluster:
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info()["workers"].values()
        assert {worker["host"] for worker in workers} == set(sshd.hosts)
        # worker_options reach the hosts' nannies.
        assert all(worker["resources"] == {"licence": 1} for worker in workers)
        assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
        client.close()
    _no_processes_left(sshd)
    with pytest.raises(ClusterStartError, match=r"worker_class='distributed.Worker'.*Nanny"):
        taskcloud.Cluster(
            n_workers=1,
            worker_memory="1 GiB",
            provider="ssh",
            provider_options=sshd.options(),
            worker_class="distributed.Worker",
        )
    _no_processes_left(sshd)


def test_a_host_that_never_answers_fails_within_connect_timeout(tmp_path) -> None:
    """A host that accepts connections but never speaks SSH is named, with the limit,
    once connect_timeout has passed."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.4", 0))
        silent.listen()  # never accepted: no SSH banner ever comes
        port = silent.getsockname()[1]
        provider = SSHProvider("lab", {"hosts": [f"127.0.0.4:{port}"], "connect_timeout": 1})
        started = time.monotonic()
        with pytest.raises(HostUnreachableError, match=r"127\.0\.0\.4: no answer within 1 s"):
            provider.capacity()
        assert time.monotonic() - started < 15


@pytest.mark.ssh
def test_provider_check_command_reports_the_hosts(sshd, tmp_path, monkeypatch) -> None:
    """``taskcloud provider check lab`` lists each host; an unreachable one makes it exit 1."""
    from click.testing import CliRunner

    from taskcloud.cli import main

    _pyproject(tmp_path, sshd.profile(hosts=[*sshd.hosts, "127.0.0.3"], connect_timeout=5))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["provider", "check", "lab", "--json"])
    assert result.exit_code == 1, result.output
    hosts = {host["host"]: host for host in json.loads(result.output)["hosts"]}
    assert all(hosts[host]["reachable"] and hosts[host]["versions_match"] for host in sshd.hosts)
    assert "refused" in hosts["127.0.0.3"]["reason"]


@pytest.mark.ssh
@pytest.mark.slow
def test_a_worker_that_cannot_start_says_why(sshd, caplog) -> None:
    """A ``python`` the hosts lack fails each worker's start naming the host, the
    command's exit status and what the host's shell said."""
    provider = SSHProvider("lab", sshd.options(hosts=["127.0.0.2"], python="/nonexistent/python"))
    workers = start_pool(provider, _request(minimum=1, maximum=1))
    try:
        with caplog.at_level(logging.DEBUG, logger="taskcloud"):
            wait_for(
                lambda: any("did not start" in r.getMessage() for r in caplog.records),
                30,
                "a failed start logged",
            )
        message = next(r.getMessage() for r in caplog.records if "did not start" in r.getMessage())
        assert "127.0.0.2" in message
        assert "/nonexistent/python -m taskcloud.hostside agent` exited with 127" in message
        assert re.search("not found|No such file", message)
    finally:
        workers.close()
        provider.close()


def _unreachable_spec(security, name: str) -> dict:
    """A worker's spec whose scheduler is not there: its nanny keeps looking for it."""
    return {
        "scheduler": "tls://127.0.0.1:9",
        "listen": "127.0.0.1",
        "name": name,
        "nthreads": 1,
        "memory_limit": 2**30,
        "resources": {},
        "env": {},
        "tls_ca": Path(security.tls_ca_file).read_text(),
        "tls_cert": Path(security.tls_worker_cert).read_text(),
        "tls_key": Path(security.tls_worker_key).read_text(),
    }


@pytest.fixture
def agent():
    """A host agent in a subprocess, two workers asked of it whose nannies listen
    while they look for a scheduler that is not there; its descendants' pids."""
    import psutil

    from taskcloud import credentials

    security, directory = credentials.ephemeral("hostside-test")
    process = subprocess.Popen(
        [sys.executable, "-m", "taskcloud.hostside", "agent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for name in ("0", "1"):
            request = {"start": name, "spec": _unreachable_spec(security, name)}
            process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        host = psutil.Process(process.pid)

        def listening() -> list:
            children = host.children(recursive=True)
            ports = [c for p in children for c in p.net_connections("tcp") if c.status == "LISTEN"]
            return children if len(ports) >= 2 else []

        wait_for(listening, 60, "both nannies listening while they look for their scheduler")
        yield process, [child.pid for child in host.children(recursive=True)]
    finally:
        process.kill()
        process.wait()
        credentials.discard(directory)


def test_hostside_agent_ends_its_workers_with_its_input_even_while_they_start(agent) -> None:
    """The agent and every process it forked end when its input does, even while
    their nannies still look for a scheduler that is not there."""
    process, pids = agent
    process.stdin.close()
    # Well within the 60 s a start may take: they end because the input did.
    assert process.wait(20) == 0
    wait_for(lambda: gone(*pids), 20, f"the agent's children {pids} ending")


def test_a_sigkilled_agents_workers_end_too(agent) -> None:
    """Each child of an agent that is SIGKILLed sees its lifeline end and kills its
    worker: nothing the agent forked lives on."""
    process, pids = agent
    process.kill()
    process.wait()
    wait_for(lambda: gone(*pids), 20, f"the agent's children {pids} ending")


def test_the_agent_answers_each_request_by_its_worker_id(agent) -> None:
    """A bad spec is answered with the worker id it names; a worker stopped while it
    starts ends, and the agent says so by its id."""
    process, _ = agent
    process.stdin.write(json.dumps({"start": "7", "spec": {"name": "7"}}) + "\n")
    process.stdin.write(json.dumps({"stop": "0"}) + "\n")
    process.stdin.flush()
    replies = [json.loads(process.stdout.readline()) for _ in range(2)]
    assert [reply["id"] for reply in replies if "exit" in reply] == ["0"]
    (bad,) = [reply for reply in replies if reply["id"] == "7"]
    assert re.search(r"the spec lacks scheduler, listen", bad["error"])


def _visible_gpus_here() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


@pytest.mark.ssh
@pytest.mark.slow
def test_each_worker_sees_only_the_gpu_ids_it_was_given_on_its_host(sshd) -> None:
    """On hosts with GPUs (made-up ids: the test sshd's hosts have none for nvidia-smi
    to list), each gpu=1 worker sees one id of its own host in CUDA_VISIBLE_DEVICES,
    two workers on one host see different ids, and a worker of a shape without GPUs
    sees none."""
    provider = SSHProvider("lab", sshd.options())
    read = provider.capacity()
    infos = [HostInfo(info.host, info.cores, info.memory, gpus=("0", "1")) for info in read.infos]
    provider._capacity = SSHCapacity("lab", infos, ledger=None)  # the made-up GPU ids
    gpu = start_pool(
        provider, _request(shape=Shape(cpu=1, memory=2**30, gpu=1), minimum=3, maximum=3)
    )
    cpu = start_pool(provider, _request(name="taskcloud-ssh-cpu", minimum=1, maximum=1))
    try:
        with (
            dask.config.set({"distributed.diagnostics.nvml": False}),
            Client(gpu, set_as_default=False) as client,
            Client(cpu, set_as_default=False) as other,
        ):
            client.wait_for_workers(3, timeout=120)
            by_host: dict[str, list[str]] = {}
            for address, ids in client.run(_visible_gpus_here).items():
                by_host.setdefault(address.split("//")[1].rsplit(":", 1)[0], []).append(ids)
            # Fewest-first over both hosts; on each, every worker has an id of its own.
            assert set(by_host) == set(sshd.hosts)
            assert sorted(len(ids) for ids in by_host.values()) == [1, 2]
            for ids in by_host.values():
                assert set(ids) <= {"0", "1"}
                assert len(set(ids)) == len(ids)
            # Travels by value: the hosts cannot import this module.
            seen = other.submit(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), pure=False)
            assert seen.result(timeout=120) == ""
    finally:
        gpu.close()
        cpu.close()
        provider.close()
    _no_processes_left(sshd)
