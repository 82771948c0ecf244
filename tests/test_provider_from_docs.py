"""A provider written from docs/providers.md alone (tests/command_provider.py: workers
as plain subprocesses through a command template, no taskcloud internals, no built-in
subclassed) gets what the built-in providers give: results, environ, placement, lost
workers rerun, memory limits, timeouts, a shape too big named, GPU ids, and nothing left
behind when its owner is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import taskcloud
from taskcloud import MemoryLimitError
from taskcloud import ResourceUnavailableError
from taskcloud import TaskTimeoutError
from taskcloud import WorkerLostError
from taskcloud.pools import pools
from taskcloud.providers import kinds
from tests.command_provider import CommandProvider
from tests.conftest import wait_for
from tests.helpers import allocate
from tests.helpers import sleep_and_record

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch):
    """A project whose profile ``cmd`` is the command provider on a host of two cores
    and two (made-up) GPU ids."""
    kinds.register("command", CommandProvider)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.taskcloud.providers.cmd]\n"
        'kind = "command"\ncores = 2\nmemory = 4294967296\ngpus = ["0", "1"]\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    # dask's NVML monitor would refuse made-up GPU ids on a machine with a GPU.
    monkeypatch.setenv("DASK_DISTRIBUTED__DIAGNOSTICS__NVML", "False")
    # Its workers are new interpreters: they import this module's functions as pytest
    # does, from tests/.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    yield tmp_path
    pools.close_all()
    kinds.close_all()


def _environment() -> dict[str, str]:
    return {
        "pid": str(os.getpid()),
        "token": os.environ.get("TOKEN", ""),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
    }


def test_calls_run_on_its_workers_with_their_environment() -> None:
    """A call runs in a worker the provider started, with the pool's environ; a shape
    without GPUs sees none; the summary's "where" names the provider and host."""
    remote = taskcloud.function(
        memory="300 MiB", provider="cmd", environ={"TOKEN": "t0k"}, keepalive="5 s"
    )(_environment)
    seen = remote()
    assert seen["pid"] != str(os.getpid())
    assert seen["token"] == "t0k"
    assert seen["gpus"] == ""
    assert remote.pool.label.endswith("on cmd")
    assert remote.pool.cluster.where == "cmd: 127.0.0.1"


def test_gpu_workers_each_get_their_own_ids() -> None:
    """Two concurrent gpu=1 workers on the provider's host see one id each."""
    remote = taskcloud.function(gpu=1, memory="300 MiB", provider="cmd", n_workers=2)(_slow_env)
    futures = [remote.submit(2), remote.submit(2)]
    assert {f.result(timeout=120)["gpus"] for f in futures} == {"0", "1"}


def _slow_env(seconds: float) -> dict[str, str]:
    time.sleep(seconds)
    return _environment()


def test_a_shape_too_big_is_named() -> None:
    """cpu=64 fails before anything starts, naming the provider's host."""
    remote = taskcloud.function(cpu=64, provider="cmd")(_environment)
    with pytest.raises(ResourceUnavailableError, match=r"cpu=64 .*127\.0\.0\.1 \(2 cores"):
        remote()


def test_a_killed_worker_reruns_then_fails_with_worker_lost(tmp_path) -> None:
    """A SIGKILLed worker's call reruns up to retries, then raises WorkerLostError;
    what finished before stays finished."""
    marker = tmp_path / "pid"
    fragile = taskcloud.function(memory="300 MiB", provider="cmd", retries=1, keepalive="5 s")(
        sleep_and_record
    )
    done = fragile.submit(str(tmp_path / "other"), 0)
    assert done.result(timeout=120)
    future = fragile.submit(str(marker), 60)
    for _ in range(2):
        pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 120, "the call"))
        marker.unlink()
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLostError, match=r"'sleep_and_record' died in each of 2 attempts"):
        future.result(timeout=120)
    assert done.result() > 0


def test_memory_is_enforced() -> None:
    """A call beyond memory= loses its worker and says it exceeded its limit; the next
    call runs on a new worker."""
    small = taskcloud.function(memory="300 MiB", provider="cmd", retries=0)(allocate)
    with pytest.raises(MemoryLimitError, match=r"exceeded its memory limit of 300 MiB"):
        small(600, 30)
    assert small(1, 0) == 2**20


def _nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


def test_a_timeout_frees_the_worker() -> None:
    """A call past its timeout raises; the pool's one worker takes the next call."""
    limited = taskcloud.function(memory="300 MiB", provider="cmd", timeout=1, n_workers=[0, 1])(
        _nap
    )
    with pytest.raises(TaskTimeoutError, match=r"'_nap' did not finish within"):
        limited(60)
    assert limited(0) == "rested"


OWNER = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import taskcloud
from taskcloud.providers import kinds
from tests.command_provider import CommandProvider

kinds.register("command", CommandProvider)

@taskcloud.function(memory="300 MiB", provider="cmd", n_workers=[2, 2])
def pid():
    time.sleep(0.5)
    return os.getpid()

pids = {{f.result() for f in [pid.submit(), pid.submit()]}}
print(json.dumps(sorted(pids)), flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_owner_leaves_no_worker(project) -> None:
    """SIGKILL of the process that owns the pool: its workers (nannies and worker
    processes) all end, with nothing to tell them but the scheduler's absence."""
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER.format(root=str(ROOT)))],
        stdout=subprocess.PIPE,
        text=True,
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = owner.stdout.readline()
        pids = json.loads(line)
        children = psutil.Process(owner.pid).children(recursive=True)
        assert set(pids) <= {child.pid for child in children}
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    wait_for(
        lambda: not any(child.is_running() and child.status() != "zombie" for child in children),
        90,
        "the owner's workers ending",
    )
