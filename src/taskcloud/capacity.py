"""What this host has, and how much of it each pool of workers holds.

Every local pool and named cluster asks :class:`HostCapacity` before it grows, so that
all of them together, in every taskcloud process on the host, never take more cores,
memory or GPUs than the host has. A pool that may not grow keeps its work queued until
another shrinks; an idle pool shrinks at once when another waits.

What other processes hold is in the host's :class:`Ledger`: one lease file per
``HostCapacity`` under ``$TASKCLOUD_HOME/capacity``, rewritten under a file lock as
holdings change. A lease whose process is gone (or whose pid now names another
process) counts for nothing and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from attrs import define
from attrs import field
from attrs import frozen

from taskcloud import processes
from taskcloud.errors import ResourceUnavailableError
from taskcloud.units import format_bytes

__all__ = ["HostCapacity", "Ledger", "Shape", "detect_gpus"]


@frozen
class Shape:
    """What one worker takes: cores, bytes of memory and GPUs."""

    cpu: int
    memory: int
    gpu: int = 0
    #: Whether ``memory`` is the capacity's default rather than asked for; messages say so.
    memory_default: bool = field(default=False, eq=False, kw_only=True)

    @classmethod
    def of(cls, capacity: Any, *, cpu: int, memory: int | None, gpu: int = 0) -> Shape:
        """A worker's shape as asked for; without ``memory``, the capacity's default
        for ``cpu`` cores. This is the one rule for a shape's default memory."""
        if memory is None:
            return cls(cpu=cpu, memory=capacity.default_memory(cpu), gpu=gpu, memory_default=True)
        return cls(cpu=cpu, memory=memory, gpu=gpu)

    def asked(self, *resources: str) -> str:
        """The ``resources`` (of cpu, memory, gpu) as a request: ``cpu=8, gpu=1``; a
        default memory named as one: ``cpu=8 (memory defaults to 89.4 GiB)``."""
        memory = format_bytes(self.memory)
        values = {"cpu": self.cpu, "memory": memory, "gpu": self.gpu}
        default = self.memory_default and "memory" in resources
        text = ", ".join(f"{r}={values[r]}" for r in resources if not (default and r == "memory"))
        if not default:
            return text
        if not text:
            return f"memory={memory} (the default for cpu={self.cpu})"
        return f"{text} (memory defaults to {memory})"


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


class Ledger:
    """The leases of every taskcloud process on this host: files in one directory.

    Each :class:`HostCapacity` writes what it holds (and whether one of its holders
    waits for room) to a lease of its own while holding the directory's lock; it
    reads the others' leases under the same lock, so two processes never both take
    the last free room.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self.token = uuid.uuid4().hex
        self._written: str | None = None
        self._started: tuple[int, float] | None = None

    @classmethod
    def for_host(cls) -> Ledger:
        """The ledger of this host's taskcloud state (``$TASKCLOUD_HOME``), wherever
        that is when it is used."""
        return cls()

    @property
    def directory(self) -> Path:
        """Where the leases are."""
        if self._directory is not None:
            return self._directory
        from taskcloud.store import home

        return home() / "capacity"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger's lock: no other process reads or writes leases meanwhile."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.directory / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing lets go of the lock

    def others(self) -> list[dict[str, Any]]:
        """The leases of live processes other than this ledger's own; under the lock."""
        leases = []
        for path in self.directory.glob("*.lease"):
            if path.name == self._name():
                continue
            try:
                lease = json.loads(path.read_text())
                alive = processes.alive(int(lease["pid"]), float(lease["started"]))
            except (OSError, ValueError, KeyError, TypeError):
                alive = False  # half-written leases are never read: writes replace
            if alive:
                leases.append(lease)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return leases

    def write(self, held: list[list[int]], gpus: list[str], waiting: bool) -> None:
        """Record this process's holdings; under the lock. Nothing held: no lease."""
        pid, started = self._process()
        path = self.directory / self._name()
        if self._written is not None and not path.exists():
            self._written = None  # $TASKCLOUD_HOME changed, or someone removed it
        if not held and not gpus and not waiting:
            if self._written is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
                self._written = None
            return
        text = json.dumps(
            {"pid": pid, "started": started, "held": held, "gpus": gpus, "waiting": waiting}
        )
        if text == self._written:
            return
        partial = path.with_suffix(".partial")
        partial.write_text(text)
        os.replace(partial, path)
        self._written = text

    def _process(self) -> tuple[int, float]:
        # A forked child is another process, with a lease of its own.
        if self._started is None or self._started[0] != os.getpid():
            self._started = (os.getpid(), psutil.Process().create_time())
            self._written = None
        return self._started

    def _name(self) -> str:
        return f"{self._process()[0]}-{self.token}.lease"


@define
class HostCapacity:
    """The host's cores, memory and GPUs, shared out between pools."""

    cores: int = field(factory=_cores)
    memory: int = field(factory=lambda: psutil.virtual_memory().total)
    gpus: tuple[str, ...] = field(factory=detect_gpus)
    ledger: Ledger | None = field(factory=Ledger.for_host)
    _held: dict[object, tuple[Shape, int]] = field(factory=dict, init=False)
    #: Each GPU id held in this process: its holder (weakly) and the worker that holds
    #: it, or None while a holder's ``scale`` has it reserved for a worker it starts.
    _gpu_owner: dict[str, tuple[Any, str | None]] = field(factory=dict, init=False)
    #: The holders in a ``gpus_for`` block: the workers they name are not in their plan yet.
    _scaling: set[int] = field(factory=set, init=False)
    _released: weakref.WeakSet[Any] = field(factory=weakref.WeakSet, init=False)
    _lock: threading.RLock = field(factory=threading.RLock, init=False)
    _waits: dict[int, list[float]] = field(factory=dict, init=False)  # since, total
    _others_waiting: bool = field(default=False, init=False)
    _others: list[dict[str, Any]] = field(factory=list, init=False)

    def default_memory(self, cpu: int) -> int:
        """An even share of the host's memory for a worker with ``cpu`` cores."""
        return self.memory * min(cpu, self.cores) // self.cores

    def check(self, shape: Shape) -> None:
        """Raise if not even one worker of ``shape`` fits on the empty host."""
        if shape.cpu > self.cores:
            raise ResourceUnavailableError(f"cpu={shape.cpu}", f"{self.cores} cores")
        if shape.memory > self.memory:
            raise ResourceUnavailableError(
                shape.asked("memory"), f"{format_bytes(self.memory)} of memory"
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
        The others are this process's other holders and every other process's lease.
        GPUs are counted by their ids: those no worker of another holder (or another
        process) holds now, less those granted to others that have no ids yet.
        """
        with self._shared():
            if holder in self._released:
                return 0  # a last adaptive step of a pool that is closing
            cores, memory = self.cores, self.memory
            for other_shape, count in self._others_held(holder):
                cores -= other_shape.cpu * count
                memory -= other_shape.memory * count
            gpus = self._free_gpus(holder)
            granted = min(want, max(self._fit(shape, cores, memory, gpus), current))
            self._held[holder] = (shape, max(granted, current))
            self._note_wait(holder, waiting=granted < want)
            return granted

    def waiting(self, holder: object) -> bool:
        """Whether ``holder`` wants more workers than the host has room for now."""
        with self._lock:
            wait = self._waits.get(id(holder))
            return wait is not None and wait[0] > 0

    def waited(self, holder: object) -> float:
        """How many seconds ``holder`` has waited for room so far, all waits together."""
        with self._lock:
            since, total = self._waits.get(id(holder), (0.0, 0.0))
            return total + (time.monotonic() - since if since else 0.0)

    def others_waiting(self, holder: object) -> bool:
        """Whether any other holder, in this process or another, waits for room."""
        with self._lock:
            here = any(wait[0] > 0 for key, wait in self._waits.items() if key != id(holder))
            return here or self._others_waiting

    def release(self, holder: object) -> None:
        """Forget what ``holder`` held; it may not hold anything again."""
        with self._shared():
            self._held.pop(holder, None)
            self._waits.pop(id(holder), None)
            self._released.add(holder)
            self._gpu_owner = {
                g: owner for g, owner in self._gpu_owner.items() if owner[0]() is not holder
            }

    @contextlib.contextmanager
    def gpus_for(self, holder: object, workers: int, per_worker: int) -> Iterator[int]:
        """Reserve whole sets of ``per_worker`` free GPU ids for up to ``workers`` new
        workers of ``holder``; yields how many sets it reserved.

        Inside, :meth:`assign_gpus` hands the reserved sets to the workers ``holder``
        names; the sets it did not hand out are free again on the way out. A holder
        starts only as many GPU workers as this yields, so that none starts short.
        """
        with self._shared():
            self._scaling.add(id(holder))
            free = self._free_ids(None)
            reserved = min(workers, len(free) // per_worker) if per_worker else 0
            ref = _weak(holder)
            for gpu in free[: reserved * per_worker]:
                self._gpu_owner[gpu] = (ref, None)
        try:
            yield reserved
        finally:
            with self._shared():
                self._scaling.discard(id(holder))
                self._gpu_owner = {
                    g: owner
                    for g, owner in self._gpu_owner.items()
                    if not (owner[0]() is holder and owner[1] is None)
                }

    @property
    def host_names(self) -> list[str]:
        return ["this host"]

    def place(self, holder: object, shape: Shape, placed: Any) -> str:
        """The host for ``holder``'s next worker: this one."""
        return "this host"

    def assign_gpus(
        self, holder: object, worker: str, n: int, host: str | None = None
    ) -> list[str]:
        """Give ``worker`` of ``holder`` ``n`` GPU ids: those reserved for ``holder`` by
        :meth:`gpus_for`, else free ones. Fewer than ``n`` when too few are free.

        An id stays the worker's while ``holder`` lives, is not released and has
        ``worker`` in its ``plan`` (the names of the workers it means to run, as
        dask's ``SpecCluster.plan``); then it is free, for every holder and process.
        """
        with self._shared():
            owners = self._live_gpus().items()
            reserved = [g for g, (ref, name) in owners if ref() is holder and name is None]
            ids = [*reserved, *self._free_ids(None)][:n]
            ref = _weak(holder)
            for gpu in ids:
                self._gpu_owner[gpu] = (ref, worker)
            return sorted(ids, key=self.gpus.index)

    def _live_gpus(self) -> dict[str, tuple[Any, str | None]]:
        """Forget the ids of workers that left their holder's plan; the rest."""
        plans: dict[int, set[str] | None] = {}
        live = {}
        for gpu, (ref, worker) in self._gpu_owner.items():
            holder = ref()
            if holder is None or holder in self._released:
                continue
            if worker is not None and id(holder) not in self._scaling:
                if id(holder) not in plans:
                    plans[id(holder)] = _plan(holder)
                plan = plans[id(holder)]
                if plan is not None and worker not in plan:
                    continue
            live[gpu] = (ref, worker)
        self._gpu_owner = live
        return live

    def _free_ids(self, holder: object) -> list[str]:
        """The GPU ids no other process holds and no holder here but ``holder`` (None:
        no holder at all), in order."""
        taken = {
            g for g, (ref, _) in self._live_gpus().items() if holder is None or ref() is not holder
        }
        taken |= {g for lease in self._others for g in lease["gpus"]}
        return [g for g in self.gpus if g not in taken]

    def _free_gpus(self, holder: object) -> int:
        """How many GPUs ``holder`` may take: free ids, less those granted to other
        holders (here or in other processes) whose workers have no ids yet."""
        if not self.gpus:
            return 0  # every grant asks: a host without GPUs answers at once
        owned: dict[int, int] = {}
        for ref, _ in self._live_gpus().values():
            other = ref()
            owned[id(other)] = owned.get(id(other), 0) + 1
        pending = 0
        for other, (shape, count) in self._held.items():
            if other is not holder:
                pending += max(0, shape.gpu * count - owned.get(id(other), 0))
        for lease in self._others:
            asked = sum(gpu * count for _, _, gpu, count in lease["held"])
            pending += max(0, asked - len(lease["gpus"]))
        return max(0, len(self._free_ids(holder)) - pending)

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        """This object's lock and the host ledger's: read the other processes' leases
        on the way in, write this one's on the way out."""
        with self._lock:
            if self.ledger is None:
                yield
                return
            with self.ledger.locked():
                self._others = self.ledger.others()
                self._others_waiting = any(lease.get("waiting") for lease in self._others)
                try:
                    yield
                finally:
                    self._write_lease()

    def _others_held(self, holder: object) -> Iterator[tuple[Shape, int]]:
        for other, held in self._held.items():
            if other is not holder:
                yield held
        for lease in self._others:
            for cpu, memory, gpu, count in lease["held"]:
                yield Shape(cpu=cpu, memory=memory, gpu=gpu), count

    def _note_wait(self, holder: object, *, waiting: bool) -> None:
        since, total = self._waits.setdefault(id(holder), [0.0, 0.0])
        if waiting and not since:
            self._waits[id(holder)][0] = time.monotonic()
        elif not waiting and since:
            self._waits[id(holder)] = [0.0, total + time.monotonic() - since]

    def _write_lease(self) -> None:
        assert self.ledger is not None
        held = [
            [shape.cpu, shape.memory, shape.gpu, count]
            for shape, count in self._held.values()
            if count
        ]
        waiting = any(wait[0] > 0 for wait in self._waits.values())
        self.ledger.write(held, sorted(self._live_gpus()), waiting)


def _weak(holder: object) -> Any:
    """A weak reference to ``holder``, or a strong one for objects that take none."""
    try:
        return weakref.ref(holder)
    except TypeError:
        return lambda: holder


def _plan(holder: Any) -> set[str] | None:
    """The names of the workers ``holder`` means to run, as strings; None: unknown."""
    for _ in range(5):
        plan = getattr(holder, "plan", None)
        if plan is None:
            return None
        try:
            return {str(name) for name in plan}
        except RuntimeError:  # changed as it was read, on the holder's event loop
            continue
    return None
