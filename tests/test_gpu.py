"""GPU workers: each sees its own devices through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import time
import warnings

import dask
import distributed  # noqa: F401 (loads its config defaults before dask.config.set)
import pytest
from pytask import ExitCode

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import detect_gpus
from taskcloud.functions import Function
from taskcloud.pools import PoolManager
from taskcloud.pools import pools
from taskcloud.providers.local import LocalProvider
from taskcloud.specs import FunctionSpec
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

needs_gpu = pytest.mark.skipif(
    not detect_gpus(), reason="needs an NVIDIA GPU (nvidia-smi finds none here)"
)


def _manager(capacity: HostCapacity) -> PoolManager:
    """Pools whose local provider shares out ``capacity``, a made-up host."""
    return PoolManager(providers={"local": LocalProvider(capacity=capacity)})


def _visible(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_each_gpu_worker_gets_its_own_devices() -> None:
    """Two concurrent gpu=1 workers on a host with two GPU ids see one id each."""
    capacity = HostCapacity(cores=2, gpus=("0", "1"))
    manager = _manager(capacity)
    # The two ids are made up: on a host with one real GPU, dask's NVML monitor
    # would refuse to start a worker that is shown the id "1".
    try:
        with dask.config.set({"distributed.diagnostics.nvml": False}):
            spec = FunctionSpec(gpu=1, memory="300 MiB", n_workers=2)
            remote = Function(_visible, spec, manager)
            seen = {f.result(timeout=120) for f in [remote.submit(3), remote.submit(3)]}
    finally:
        manager.close_all()
    assert seen == {"0", "1"}


@needs_gpu
def test_gpu_worker_on_a_real_gpu() -> None:
    """On a machine with a GPU, a gpu=1 worker sees exactly one of its ids."""
    manager = PoolManager()
    try:
        remote = Function(_visible, FunctionSpec(gpu=1, n_workers=[0, 1]), manager)
        assert remote(0) in detect_gpus()
    finally:
        manager.close_all()


GPU_TASKS = """
import os
from pathlib import Path
from typing import Annotated

from pytask import Product

import taskcloud


@taskcloud.function(gpu=1, memory="2 GiB", n_workers=[0, 1], keepalive="5 s")
def task_on_gpu(path: Annotated[Path, Product] = Path("gpu.txt")) -> None:
    import torch

    a = torch.arange(16.0, device="cuda").reshape(4, 4)
    total = float((a @ a).sum().item())
    visible = os.environ["CUDA_VISIBLE_DEVICES"]
    path.write_text(f"{visible} {torch.cuda.device_count()} {total}")


def task_on_cpu(path: Annotated[Path, Product] = Path("cpu.txt")) -> None:
    path.write_text(str(os.getpid()))
"""


@needs_gpu
def test_gpu_task_computes_on_its_gpu(tmp_path, write, runner) -> None:
    """A gpu=1 task in a pytask run computes on one real GPU while the rest runs locally."""
    torch = pytest.importorskip("torch")
    write("task_gpu.py", GPU_TASKS)
    try:
        result = run_cli(runner, tmp_path, "-n", "2")
    finally:
        pools.close_all()

    assert result.exit_code == ExitCode.OK, result.output
    visible, count, total = (tmp_path / "gpu.txt").read_text().split()
    assert visible in detect_gpus()
    assert count == "1"
    a = torch.arange(16.0).reshape(4, 4)
    assert float(total) == float((a @ a).sum())
    assert (tmp_path / "cpu.txt").read_text() != str(os.getpid())
    assert any("gpu=1" in line for line in result.output.splitlines())


def _seen() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


def _seen_too() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


def test_a_gpu_freed_by_an_idle_worker_goes_to_the_next_pool() -> None:
    """f's idle gpu=1 worker gives way to g's pool, and with it its GPU id: g's worker
    sees exactly that id, not an empty CUDA_VISIBLE_DEVICES."""
    capacity = HostCapacity(cores=2, gpus=("0",))
    manager = _manager(capacity)
    try:
        with dask.config.set({"distributed.diagnostics.nvml": False}):
            f = Function(_seen, FunctionSpec(gpu=1, memory="300 MiB", keepalive="60 s"), manager)
            assert f() == "0"
            # Another spec, so another pool: it waits until f's idle worker leaves.
            spec = FunctionSpec(gpu=1, memory="310 MiB", keepalive="60 s")
            g = Function(_seen_too, spec, manager)
            assert g.submit().result(timeout=120) == "0"
    finally:
        manager.close_all()


def test_a_cpu_only_worker_sees_no_gpu(monkeypatch) -> None:
    """A worker of a shape without GPUs is shown none, though the host has some."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    manager = _manager(HostCapacity(cores=2))
    try:
        with dask.config.set({"distributed.diagnostics.nvml": False}):
            remote = Function(_seen, FunctionSpec(memory="300 MiB"), manager)
            assert remote.submit().result(timeout=120) == ""
    finally:
        manager.close_all()


def test_a_named_cluster_gets_the_gpu_a_pool_gives_way(monkeypatch) -> None:
    """A gpu=1 named cluster started while a pool here holds the only GPU says that it
    waits; the pool's idle worker leaves at once (long before its keepalive), and the
    cluster's worker gets the GPU id."""
    import taskcloud

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("DASK_DISTRIBUTED__DIAGNOSTICS__NVML", "False")
    manager = _manager(HostCapacity(cores=2))
    try:
        with dask.config.set({"distributed.diagnostics.nvml": False}):
            spec = FunctionSpec(gpu=1, memory="300 MiB", keepalive="600 s")
            assert Function(_seen, spec, manager)() == "0"
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                cluster = taskcloud.Cluster(worker_gpu=1, worker_memory="300 MiB")
            with cluster:
                client = cluster.get_client()
                # A lambda travels by value; the workers cannot import this test module.
                visible = client.submit(
                    lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
                )
                assert visible.result(timeout=90) == "0"
                client.close()
            waits = [str(w.message) for w in said if "waits for capacity" in str(w.message)]
            assert waits, [str(w.message) for w in said]
            assert "1 more workers (cpu=1, memory=300 MiB, gpu=1 each)" in waits[0]
    finally:
        manager.close_all()


# ------------------------------------------------------------- one capacity, many hosts


class _Holder:
    """A pool as a capacity sees it: the names of the workers it means to run, and
    how many of them are on each host."""

    def __init__(self) -> None:
        self.plan: set[str] = set()
        self.placed: dict[str, int] = {}

    def host_counts(self) -> dict[str, int]:
        return dict(self.placed)


def test_gpu_ids_are_per_host_and_placement_spreads_fewest_first() -> None:
    """On two hosts with GPUs, a worker gets ids of its own host only; ``place`` puts
    each next worker on the host with the fewest of its pool's that has room; a host
    whose ids are all given out takes no other pool's GPU worker."""
    from taskcloud.capacity import Capacity
    from taskcloud.capacity import Host
    from taskcloud.capacity import Shape

    a = Host("a", cores=4, memory=8 * 2**30, gpus=("0", "1"))
    b = Host("b", cores=4, memory=8 * 2**30, gpus=("GPU-b0",))
    capacity = Capacity("lab", [a, b], ledger=None)
    shape = Shape(cpu=1, memory=2**30, gpu=1)
    pool, other = _Holder(), _Holder()
    assert capacity.grant(pool, shape, 5, 0) == 3  # three GPU ids in all
    assert capacity.waiting(pool)
    given: dict[str, list[str]] = {}
    placed = pool.placed
    with capacity.gpus_for(pool, 3, 1) as sets:
        assert sets == 3
        for worker in ("w0", "w1", "w2"):
            host = capacity.place(pool, shape, placed)
            placed[host] = placed.get(host, 0) + 1
            pool.plan.add(worker)
            given[worker] = capacity.assign_gpus(pool, worker, 1, host=host)
            given[worker].insert(0, host)
    assert [host for host, _ in given.values()] == ["a", "b", "a"]
    assert sorted(tuple(ids) for ids in given.values()) == [
        ("a", "0"),
        ("a", "1"),
        ("b", "GPU-b0"),
    ]
    assert capacity.grant(other, shape, 1, 0) == 0
    assert capacity.assign_gpus(other, "x", 1, host="b") == []
    # w1 leaves its pool's plan: its id on b is free again, and b has room again.
    pool.plan.discard("w1")
    placed["b"] -= 1
    assert capacity.grant(pool, shape, 2, 2) == 2
    assert capacity.room("b", shape) == 1
    assert capacity.grant(other, shape, 1, 0) == 1
    assert capacity.place(other, shape, {}) == "b"
    assert capacity.assign_gpus(other, "x", 1, host="b") == ["GPU-b0"]
    capacity.release(pool)
    capacity.release(other)


HOLDS_A_HOST = """
import sys
from taskcloud.capacity import Capacity, Host, Shape

class Pool:
    plan = set()

capacity = Capacity("lab", [Host("shared", cores=4, memory=8 * 2**30)])
pool = Pool()
granted = capacity.grant(pool, Shape(cpu=1, memory=2**30), 3, 0)
print("holding", granted, flush=True)
sys.stdin.readline()
"""


def test_two_processes_share_a_remote_host_through_the_ledger(taskcloud_home, tmp_path) -> None:
    """Another process's pool holds three of a host's four cores in the host's
    ledger: a pool here is granted only the one left, another capacity over that host
    and a spare one places its workers on the spare, and the first pool gets the
    whole host once that process is gone."""
    import subprocess
    import sys

    from taskcloud.capacity import Capacity
    from taskcloud.capacity import Host
    from taskcloud.capacity import Shape
    from tests.conftest import wait_for

    script = tmp_path / "holder.py"
    script.write_text(HOLDS_A_HOST)
    holder = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["holding", "3"]
        assert list((taskcloud_home / "capacity" / "host-shared").glob("*.lease"))
        shape = Shape(cpu=1, memory=2**30)
        shared = Capacity("lab", [Host("shared", cores=4, memory=8 * 2**30)])
        pool = _Holder()
        assert shared.grant(pool, shape, 4, 0) == 1
        assert shared.waiting(pool)
        both = Capacity(
            "lab", [Host("shared", 4, 8 * 2**30), Host("spare", 2, 8 * 2**30)], max_workers=None
        )
        other = _Holder()
        # Another capacity (a lease of its own): the pool here holds shared's last core.
        assert both.grant(other, shape, 8, 0) == 2  # spare's two
        assert both.place(other, shape, {}) == "spare"
        assert both.place(other, shape, {"spare": 1}) == "spare"
        # No host has room: the one with the fewest of its workers.
        assert both.place(other, shape, {"spare": 2}) == "shared"
        both.release(other)
        holder.kill()  # SIGKILL: it cannot give its lease back
        holder.wait()
        wait_for(lambda: shared.grant(pool, shape, 4, 0) == 4, 30, "the whole host granted")
        assert not shared.waiting(pool)
        assert shared.waited(pool) > 0
        shared.release(pool)
    finally:
        holder.kill()
        holder.wait()
