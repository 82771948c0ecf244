"""What this host has, and how much of it each pool of workers holds.

Every local pool asks :class:`HostCapacity` before it grows, so that all pools
together never take more cores, memory or GPUs than the host has; a pool that may not
grow keeps its work queued until another pool shrinks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import psutil
from attrs import define
from attrs import field
from attrs import frozen

from taskcloud.errors import ResourceUnavailableError
from taskcloud.specs import format_bytes

__all__ = ["HostCapacity", "Shape", "detect_gpus"]


@frozen
class Shape:
    """What one worker takes: cores, bytes of memory and GPUs."""

    cpu: int
    memory: int
    gpu: int = 0


def detect_gpus() -> tuple[str, ...]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1")
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@define
class HostCapacity:
    """The host's cores, memory and GPUs, shared out between pools."""

    cores: int = field(factory=_cores)
    memory: int = field(factory=lambda: psutil.virtual_memory().total)
    gpus: tuple[str, ...] = field(factory=detect_gpus)
    _held: dict[object, tuple[Shape, int]] = field(factory=dict, init=False)
    _gpu_owner: dict[str, str] = field(factory=dict, init=False)
    _released: weakref.WeakSet[Any] = field(factory=weakref.WeakSet, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    def default_memory(self, cpu: int) -> int:
        """An even share of the host's memory for a worker with ``cpu`` cores."""
        return self.memory * min(cpu, self.cores) // self.cores

    def check(self, shape: Shape) -> None:
        """Raise if not even one worker of ``shape`` fits on the empty host."""
        if shape.cpu > self.cores:
            raise ResourceUnavailableError(f"cpu={shape.cpu}", f"{self.cores} cores")
        if shape.memory > self.memory:
            raise ResourceUnavailableError(
                f"memory={format_bytes(shape.memory)}", f"{format_bytes(self.memory)} of memory"
            )
        if shape.gpu > len(self.gpus):
            raise ResourceUnavailableError(f"gpu={shape.gpu}", f"{len(self.gpus)} GPUs")

    def fit(self, shape: Shape) -> int:
        """How many workers of ``shape`` the empty host holds."""
        return self._fit(shape, self.cores, self.memory, len(self.gpus))

    @staticmethod
    def _fit(shape: Shape, cores: int, memory: int, gpus: int) -> int:
        counts = [cores // shape.cpu, memory // shape.memory]
        if shape.gpu:
            counts.append(gpus // shape.gpu)
        return max(min(counts), 0)

    def grant(self, holder: object, shape: Shape, want: int, current: int) -> int:
        """Let ``holder`` have up to ``want`` workers, as far as the others leave room.

        ``holder`` keeps at least the ``current`` workers it has until it shrinks.
        """
        with self._lock:
            if holder in self._released:
                return 0  # a last adaptive step of a pool that is closing
            cores, memory, gpus = self.cores, self.memory, len(self.gpus)
            for other, (other_shape, count) in self._held.items():
                if other is not holder:
                    cores -= other_shape.cpu * count
                    memory -= other_shape.memory * count
                    gpus -= other_shape.gpu * count
            granted = min(want, max(self._fit(shape, cores, memory, gpus), current))
            self._held[holder] = (shape, max(granted, current))
            return granted

    def release(self, holder: object) -> None:
        """Forget what ``holder`` held; it may not hold anything again."""
        with self._lock:
            self._held.pop(holder, None)
            self._released.add(holder)
            self._gpu_owner = {
                g: w for g, w in self._gpu_owner.items() if not w.startswith(f"{id(holder)}:")
            }

    def assign_gpus(self, holder: object, worker: str, n: int, alive: Iterable[str]) -> list[str]:
        """Pick ``n`` free GPU ids for ``worker``; ids of workers no longer alive are free."""
        with self._lock:
            alive_keys = {f"{id(holder)}:{name}" for name in alive}
            prefix = f"{id(holder)}:"
            self._gpu_owner = {
                g: w
                for g, w in self._gpu_owner.items()
                if not w.startswith(prefix) or w in alive_keys
            }
            free = [g for g in self.gpus if g not in self._gpu_owner][:n]
            for gpu in free:
                self._gpu_owner[gpu] = f"{prefix}{worker}"
            return free
