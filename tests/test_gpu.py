"""GPU workers: each sees its own devices through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import time

import pytest

from taskcloud.capacity import HostCapacity
from taskcloud.capacity import detect_gpus
from taskcloud.functions import Function
from taskcloud.pools import PoolManager
from taskcloud.specs import FunctionSpec

pytestmark = pytest.mark.slow


def _visible(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_each_gpu_worker_gets_its_own_devices() -> None:
    """Two concurrent gpu=1 workers on a host with two GPU ids see one id each."""
    capacity = HostCapacity(cores=2, gpus=("0", "1"))
    manager = PoolManager(capacity=capacity)
    try:
        remote = Function(_visible, FunctionSpec(gpu=1, memory="300 MiB", n_workers=2), manager)
        seen = {f.result(timeout=120) for f in [remote.submit(3), remote.submit(3)]}
    finally:
        manager.close_all()
    assert seen == {"0", "1"}


@pytest.mark.skipif(not detect_gpus(), reason="needs an NVIDIA GPU (nvidia-smi finds none here)")
def test_gpu_worker_on_a_real_gpu() -> None:
    """On a machine with a GPU, a gpu=1 worker sees exactly one of its ids."""
    manager = PoolManager()
    try:
        remote = Function(_visible, FunctionSpec(gpu=1, n_workers=[0, 1]), manager)
        assert remote(0) in detect_gpus()
    finally:
        manager.close_all()
