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
from taskcloud.specs import FunctionSpec
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

needs_gpu = pytest.mark.skipif(
    not detect_gpus(), reason="needs an NVIDIA GPU (nvidia-smi finds none here)"
)


def _visible(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_each_gpu_worker_gets_its_own_devices() -> None:
    """Two concurrent gpu=1 workers on a host with two GPU ids see one id each."""
    capacity = HostCapacity(cores=2, gpus=("0", "1"))
    manager = PoolManager(capacity=capacity)
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
    manager = PoolManager(capacity=capacity)
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
    manager = PoolManager(capacity=HostCapacity(cores=2))
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
    manager = PoolManager(capacity=HostCapacity(cores=2))
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
