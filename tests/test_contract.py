"""The behaviours every provider promises, one test each, run on ``local``, ``ssh``
(the sshd of tests/sshd.py), ``slurm`` (the Slurm of tests/slurm.py) and ``command``
(tests/command_provider.py, a provider written from docs/providers.md alone and
installed as a package would install it, through an entry point), through the public
API alone: ``@taskcloud.function(provider=...)``, ``taskcloud.Cluster`` and the errors
of ``taskcloud.errors``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import psutil
import pytest

import taskcloud
from taskcloud.errors import MemoryLimitError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.errors import TaskTimeoutError
from taskcloud.errors import WorkerLostError
from tests.conftest import wait_for
from tests.helpers import gone
from tests.helpers import profile_toml
from tests.helpers import run_script

# Neither the hosts' workers nor the jobs' can import this module: its functions
# travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("stop_leftover_clusters"),
]

PROVIDERS = [
    pytest.param("local", id="local"),
    pytest.param("command", id="command"),
    pytest.param("ssh", id="ssh", marks=pytest.mark.ssh),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
]


@dataclass
class Provider:
    """A provider as a test of the contract sees it."""

    #: What ``provider=`` takes: a profile of the project in the working directory.
    name: str
    kind: str
    #: What of the provider's runs for this test now, in words: worker processes
    #: started since the test began, the hosts' processes, the Slurm jobs.
    running: Callable[[], list[str]]


def _descendants() -> dict[int, str]:
    """This process's processes, but multiprocessing's resource tracker, which the
    first pool starts and which lives as long as this process."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            line = " ".join(process.cmdline())
            if process.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in line:
                found[process.pid] = line
    return found


@pytest.fixture
def provider(request, tmp_path, monkeypatch):
    """The provider the test is parametrised with (indirectly, :data:`PROVIDERS`) as
    the profile ``remote`` of a project in tmp_path, the working directory; nothing
    of it runs any more after the test."""
    from taskcloud.pools import pools
    from taskcloud.providers import registry

    kind = request.param
    monkeypatch.chdir(tmp_path)
    if kind in ("local", "command"):
        before = set(_descendants())
        options: dict[str, object] = {"kind": "local"}
        if kind == "command":
            _install_command_provider(tmp_path / "site", monkeypatch)
            # A host of two cores and two (made-up) GPU ids.
            options = {"kind": "command", "cores": 2, "memory": 4 * 2**30, "gpus": ["0", "1"]}
            monkeypatch.setenv("DASK_DISTRIBUTED__DIAGNOSTICS__NVML", "False")

        def running() -> list[str]:
            return [line for pid, line in _descendants().items() if pid not in before]

    elif kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        options = sshd.profile()
        running = sshd.cmdlines
    else:
        slurm = request.getfixturevalue("slurm")
        options = {
            "kind": "slurm",
            "python": sys.executable,
            "pending_timeout": 60,
            "death_timeout": 5,
        }
        running = slurm.jobs
    (tmp_path / "pyproject.toml").write_text(profile_toml("remote", options))
    yield Provider("remote", kind, running)
    pools.close_all(kill=True)
    registry.close_all()
    try:
        wait_for(
            lambda: not running(), 60, f"the {kind} provider's workers ending (then: {running()})"
        )
    finally:
        if kind == "slurm":
            slurm.cancel_all()


def _install_command_provider(site, monkeypatch) -> None:
    """Install tests/command_provider.py in ``site`` as a package would, with the
    ``taskcloud.providers`` entry point ``command``, for this process and the
    processes it starts (a pool's owner, a named cluster's daemon)."""
    info = site / "taskcloud_command_provider-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: taskcloud-command-provider\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[taskcloud.providers]\ncommand = command_provider:CommandProvider\n"
    )
    source = Path(__file__).with_name("command_provider.py")
    (site / "command_provider.py").write_text(source.read_text())
    monkeypatch.syspath_prepend(str(site))
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


# ------------------------------------------------------------------- what workers run


def die(path: str, times: int) -> int:
    """Count this attempt in ``path``; SIGKILL this worker in the first ``times``."""
    with open(path, "a") as file:
        file.write("attempt\n")
    with open(path) as file:
        attempts = len(file.read().split())
    if attempts <= times:
        os.kill(os.getpid(), signal.SIGKILL)
    return attempts


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def allocate(megabytes: int, hold: float) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    return len(block)


def visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


# What a dask client runs itself: dask pickles by reference what it can, and the
# workers cannot import this module, so these are lambdas, which travel by value.
PROCESSES = lambda: (__import__("os").getpid(), __import__("os").getppid())  # noqa: E731
VISIBLE = lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES", "<unset>")  # noqa: E731


# ------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_a_killed_worker_reruns_its_call_once_then_the_call_fails(provider, tmp_path) -> None:
    """With retries=1 a call whose worker is SIGKILLed runs again, and returns; killed
    in both attempts it raises WorkerLostError naming the function, its attempts and
    where it ran last."""
    fragile = taskcloud.function(
        provider=provider.name, memory="300 MiB", n_workers=[0, 1], retries=1
    )(die)
    once = tmp_path / "once"
    assert fragile(str(once), 1) == 2
    always = tmp_path / "always"
    with pytest.raises(WorkerLostError, match=r"'die' died in each of 2 attempts") as caught:
        fragile(str(always), 2)
    assert caught.value.worker  # where it died last, in the provider's words
    assert str(caught.value).endswith(f" (last on {caught.value.worker}).")
    assert always.read_text().split() == ["attempt", "attempt"]


OWNER = """
import sys
import taskcloud

def processes():
    import os
    return os.getpid(), os.getppid()

found = taskcloud.function(provider=sys.argv[1], memory="300 MiB", n_workers=[1, 1])(processes)
print(*found(), flush=True)
sys.stdin.readline()  # held until it is killed
"""


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_sigkill_of_a_pools_owner_leaves_no_worker_behind(provider, tmp_path) -> None:
    """A process whose pool has a worker is SIGKILLed: the worker and its nanny end,
    and nothing of the pool runs on the provider (no host process, no job)."""
    owner = run_script(tmp_path, OWNER, provider.name, cwd=tmp_path)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, owner.communicate(timeout=30)[1]
        pids = [int(pid) for pid in line.split()]
        assert provider.running()
        owner.send_signal(signal.SIGKILL)
    finally:
        owner.kill()
        owner.communicate(timeout=30)
    wait_for(lambda: gone(*pids), 60, f"the worker and its nanny {pids} ending")
    wait_for(
        lambda: not provider.running(),
        60,
        f"the pool's leftovers ending (then: {provider.running()})",
    )


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_sigkill_of_a_named_clusters_process_leaves_no_worker_behind(provider) -> None:
    """The process of a named cluster, which started its workers, is SIGKILLed: the
    worker and its nanny end, and nothing of the cluster runs on the provider."""
    cluster = taskcloud.Cluster(
        name="contract-killed", provider=provider.name, n_workers=1, worker_memory="300 MiB"
    )
    try:
        client = cluster.get_client()
        pids = list(client.submit(PROCESSES, pure=False).result(timeout=120))
        client.close()
    finally:
        os.kill(cluster.pid, signal.SIGKILL)
        cluster.shutdown_on_close = False
        cluster.close()
    wait_for(lambda: gone(cluster.pid), 30, "the cluster's process dying")
    wait_for(lambda: gone(*pids), 60, f"the worker and its nanny {pids} ending")
    wait_for(
        lambda: not provider.running(),
        60,
        f"the cluster's leftovers ending (then: {provider.running()})",
    )


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_a_call_past_its_timeout_fails_and_frees_its_worker(provider) -> None:
    """A call past timeout= raises TaskTimeoutError naming it; the pool's one worker
    is free again, so the next call runs there."""
    limited = taskcloud.function(
        provider=provider.name, memory="300 MiB", n_workers=[1, 1], timeout=1
    )(nap)
    with pytest.raises(TaskTimeoutError, match=r"'nap' did not finish within its timeout of 1 s"):
        limited(120)
    assert limited(0) != os.getpid()


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_a_call_beyond_its_memory_fails_and_a_replacement_takes_the_next(provider) -> None:
    """A call that fills more than memory= loses its worker with MemoryLimitError
    naming the limit; a replacement worker takes the next call."""
    small = taskcloud.function(
        provider=provider.name, memory="300 MiB", n_workers=[0, 1], retries=0
    )(allocate)
    with pytest.raises(MemoryLimitError, match=r"'allocate' exceeded its memory limit of 300 MiB"):
        small(600, 60)
    assert small(1, 0) == 2**20


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_a_shape_too_big_is_named_before_anything_starts(provider) -> None:
    """cpu= far beyond every host fails at the first call with ResourceUnavailableError
    naming the request; no worker, host process or job was started for it."""
    huge = taskcloud.function(provider=provider.name, cpu=100_000, memory="300 MiB")(nap)
    with pytest.raises(ResourceUnavailableError, match=r"cpu=100000\b.* cannot be satisfied"):
        huge(0)
    assert not provider.running()


FINDER = """
import taskcloud

cluster = taskcloud.Cluster(name="contract-found")
client = cluster.get_client()
print(cluster.created, client.submit(sum, [1, 2]).result(timeout=120), flush=True)
client.close()
"""


@pytest.mark.parametrize("provider", PROVIDERS, indirect=True)
def test_a_named_cluster_is_found_by_name_from_another_process(provider, tmp_path) -> None:
    """Cluster(name=..., provider=...) runs; another process attaches by its name
    alone, without starting one, and computes on its workers."""
    with taskcloud.Cluster(
        name="contract-found", provider=provider.name, n_workers=1, worker_memory="300 MiB"
    ) as cluster:
        assert cluster.created
        client = cluster.get_client()
        assert client.submit(lambda x: x * 2, 21).result(timeout=120) == 42
        client.close()
        found = subprocess.run(
            [sys.executable, "-c", FINDER],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert found.stdout.split() == ["False", "3"], found.stderr


NO_FAKE_GPUS = (
    "{kind}: no GPU ids can be faked for its workers: the hosts' GPUs are what nvidia-smi "
    "there lists{more}, so gpu=1 is refused with ResourceUnavailableError"
)


@pytest.mark.parametrize(
    "provider",
    [
        pytest.param("local", id="local"),
        pytest.param("command", id="command"),
        pytest.param(
            "ssh",
            id="ssh",
            marks=[
                pytest.mark.ssh,
                pytest.mark.xfail(
                    strict=True,
                    raises=ResourceUnavailableError,
                    reason=NO_FAKE_GPUS.format(
                        kind="ssh",
                        more=" (tests/test_ssh.py gives its capacity made-up ids instead)",
                    ),
                ),
            ],
        ),
        pytest.param(
            "slurm",
            id="slurm",
            marks=[
                pytest.mark.slurm,
                pytest.mark.xfail(
                    strict=True,
                    raises=ResourceUnavailableError,
                    reason=NO_FAKE_GPUS.format(
                        kind="slurm", more=" as GRES; the test Slurm's node has none"
                    ),
                ),
            ],
        ),
    ],
    indirect=True,
)
def test_a_gpu_shape_gets_its_gpu_ids_and_no_other_shape_sees_them(provider, monkeypatch) -> None:
    """Each of a named cluster's two gpu=1 workers sees one GPU id of its own; a
    worker of a shape without GPUs sees none, though the host has them. (A process
    reads its host's GPUs once, so the made-up ids of tests/test_gpu.py reach the
    clusters' own processes, not the pools of this one.)"""
    # Two made-up ids for the host; dask's NVML monitor, which would refuse them, is off.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("DASK_DISTRIBUTED__DIAGNOSTICS__NVML", "False")
    with taskcloud.Cluster(
        provider=provider.name, n_workers=2, worker_gpu=1, worker_memory="300 MiB"
    ) as cluster:
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        seen = client.run(VISIBLE)
        client.close()
    assert sorted(seen.values()) == ["0", "1"]
    with taskcloud.Cluster(provider=provider.name, n_workers=1, worker_memory="300 MiB") as cluster:
        client = cluster.get_client()
        assert client.submit(VISIBLE, pure=False).result(timeout=120) == ""
        client.close()
