"""What the hosts a provider reports have, and how much of it each pool of workers holds.

One :class:`Capacity` over a provider's :class:`Host` answers every pool and named
cluster before it grows, so that all of them together, in every taskcloud process,
never take more cores, memory or GPUs than a host has; it places each worker on a
host (fewest of its pool's first) and hands out GPU ids per host. A pool that may not
grow keeps its work queued until another shrinks; an idle pool shrinks at once when
another waits. :class:`HostCapacity` is this host's; the SSH and Slurm providers build
theirs over the hosts they read (Slurm's is ``queued``: its queue does the waiting).

What other processes hold is in the :class:`Ledger`: one lease file per process and
capacity in each host's directory (this host's: ``$TASKCLOUD_HOME/capacity``),
rewritten under a file lock as holdings change. A lease whose process is gone (or
whose pid now names another process) counts for nothing and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from attrs import define
from attrs import field
from attrs import frozen

from taskcloud import processes
from taskcloud.errors import ResourceUnavailableError
from taskcloud.units import format_bytes

__all__ = ["THIS_HOST", "Capacity", "Host", "HostCapacity", "Ledger", "Shape", "detect_gpus"]

#: The name of the host this process runs on, in placements and summaries.
THIS_HOST = "this host"


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
    """The leases of every taskcloud process: files, one directory per host.

    Each :class:`Capacity` writes what it holds on a host (and whether one of its
    holders waits for room) to a lease of its own in that host's directory while
    holding the directory's lock; it reads the others' leases under the same lock, so
    two processes never both take the last free room. This host's leases are in
    ``$TASKCLOUD_HOME/capacity`` itself (:meth:`for_host`); other hosts' (SSH hosts)
    in a directory each below it, named by the host (:meth:`for_hosts`).
    """

    def __init__(self, directory: Path | None = None, *, per_host: bool = False) -> None:
        self._directory = directory
        self._per_host = per_host
        self.token = uuid.uuid4().hex
        self._written: dict[Path, str] = {}
        self._started: tuple[int, float] | None = None

    @classmethod
    def for_host(cls) -> Ledger:
        """The ledger of this host's taskcloud state (``$TASKCLOUD_HOME``), wherever
        that is when it is used."""
        return cls()

    @classmethod
    def for_hosts(cls) -> Ledger:
        """The ledger of other hosts, a directory each under ``$TASKCLOUD_HOME``."""
        return cls(per_host=True)

    @property
    def directory(self) -> Path:
        """Where the leases are (of other hosts: their directories)."""
        if self._directory is not None:
            return self._directory
        from taskcloud.store import home

        return home() / "capacity"

    def at(self, host: str = "") -> Path:
        """The directory of ``host``'s leases."""
        if not self._per_host:
            return self.directory
        return self.directory / _host_key(host)

    @contextlib.contextmanager
    def locked(self, hosts: Iterable[str] = ("",)) -> Iterator[None]:
        """Hold the lock of each of ``hosts`` (in one order, so that two processes
        never wait for each other): no other process reads or writes their leases."""
        with contextlib.ExitStack() as stack:
            for directory in sorted({self.at(host) for host in hosts}):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                descriptor = os.open(directory / "lock", os.O_CREAT | os.O_RDWR, 0o600)
                stack.callback(os.close, descriptor)  # closing lets go of the lock
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield

    def others(self, host: str = "") -> list[dict[str, Any]]:
        """The leases of ``host`` of live processes other than this ledger's own;
        under the lock."""
        leases = []
        for path in self.at(host).glob("*.lease"):
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

    def write(self, held: list[list[int]], gpus: list[str], waiting: bool, host: str = "") -> None:
        """Record this process's holdings on ``host``; under the lock. Nothing held:
        no lease."""
        pid, started = self._process()
        path = self.at(host) / self._name()
        if path in self._written and not path.exists():
            del self._written[path]  # $TASKCLOUD_HOME changed, or someone removed it
        if not held and not gpus and not waiting:
            if self._written.pop(path, None) is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
            return
        text = json.dumps(
            {"pid": pid, "started": started, "held": held, "gpus": gpus, "waiting": waiting}
        )
        if text == self._written.get(path):
            return
        partial = path.with_suffix(".partial")
        partial.write_text(text)
        os.replace(partial, path)
        self._written[path] = text

    def _process(self) -> tuple[int, float]:
        # A forked child is another process, with a lease of its own.
        if self._started is None or self._started[0] != os.getpid():
            self._started = (os.getpid(), psutil.Process().create_time())
            self._written = {}
        return self._started

    def _name(self) -> str:
        return f"{self._process()[0]}-{self.token}.lease"


def _host_key(host: str) -> str:
    """A directory name for ``host``: its name where that is safe, with a digest of
    it where characters had to be replaced."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip(".")
    if safe != host or not safe:
        safe = f"{safe}-{hashlib.sha256(host.encode()).hexdigest()[:12]}"
    return f"host-{safe}"


@frozen
class Host:
    """One host a provider reports: its name, cores, bytes of memory and GPU ids
    (``"0"``, ``"1"``, ... or UUIDs)."""

    name: str
    cores: int
    memory: int
    gpus: tuple[str, ...] = field(default=(), converter=lambda ids: tuple(str(i) for i in ids))

    def describe(self) -> str:
        """``name (2 cores, 8 GiB, 1 GPUs)``: what the host has, as errors name it."""
        gpus = f", {len(self.gpus)} GPUs" if self.gpus else ""
        return f"{self.name} ({self.cores} cores, {format_bytes(self.memory)}{gpus})"

    def share(self, cpu: int) -> int:
        """An even share of the host's memory per core, for ``cpu`` cores."""
        return max(1, self.memory * cpu // max(self.cores, 1))


#: Which resource of a shape no host has enough of, in the order errors name them.
_RESOURCES = ("cpu", "memory", "gpu")

_DEFAULT: Any = object()  # the default ledger of a capacity: see Capacity


@define(slots=False)
class _Holding:
    """What one holder holds: its shape, how many workers in all, and (on a capacity
    of several hosts) how many of them are where, as :meth:`Capacity.place` put them."""

    shape: Shape
    count: int = 0
    placed: dict[str, int] = field(factory=dict)


class Capacity:
    """The hosts a provider reports, shared out between holders (pools, clusters).

    The one account of what each holder holds on each host, of GPU ids per host, and
    of who waits for room. Hosts that are ours (``queued=False``: this host, SSH
    hosts) are shared with every other taskcloud process through ``ledger``'s lease
    files, one directory per host; ``ledger=None`` shares nothing beyond this object.
    A ``queued`` capacity (Slurm's) holds nothing: its scheduler's queue does the
    waiting, so ``grant`` only caps a holder at ``max_workers``.

    ``max_workers`` caps the workers of each host (a mapping of host names to caps,
    ``None`` for no cap) or, as an int, the workers of each holder.
    """

    def __init__(
        self,
        provider: str,
        hosts: Sequence[Host],
        *,
        ledger: Ledger | None = _DEFAULT,
        queued: bool = False,
        max_workers: Mapping[str, int | None] | int | None = None,
    ) -> None:
        if not hosts:
            raise ValueError("a capacity needs at least one host")
        self.provider = provider
        self.hosts: tuple[Host, ...] = tuple(hosts)
        self.queued = queued
        if ledger is _DEFAULT:
            ledger = None if queued else Ledger.for_hosts()
        self.ledger: Ledger | None = None if queued else ledger
        self._caps: dict[str, int | None] = {}
        self._holder_cap: int | None = None
        if isinstance(max_workers, int):
            self._holder_cap = max_workers
        elif max_workers is not None:
            self._caps = dict(max_workers)
        self._by_name = {host.name: host for host in self.hosts}
        self._has_gpus = any(host.gpus for host in self.hosts)
        self._held: dict[object, _Holding] = {}
        #: Each GPU id held in this process, by (host, id): its holder (weakly) and the
        #: worker that holds it, or None while a holder's ``scale`` has it reserved.
        self._gpu_owner: dict[tuple[str, str], tuple[Any, str | None]] = {}
        #: The holders in a ``gpus_for`` block: the workers they name are not in their plan yet.
        self._scaling: set[int] = set()
        self._released: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.RLock()
        self._waits: dict[int, list[float]] = {}  # since, total
        self._others_waiting = False
        self._others: dict[str, list[dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider!r}, {self.describe()!r})"

    # -- what the hosts hold -----------------------------------------------------------

    def describe(self) -> str:
        """Every host and what it has: ``a (2 cores, 8 GiB), b (4 cores, 16 GiB)``."""
        return ", ".join(host.describe() for host in self.hosts)

    def default_memory(self, cpu: int) -> int:
        """The memory of a worker of ``cpu`` cores whose memory is not given: an even
        share per core of a host's memory, on the smallest of the hosts with ``cpu``
        cores (so that it fits on each), else on the largest host. The one rule."""
        wide = [host for host in self.hosts if host.cores >= cpu]
        if wide:
            return min(host.share(cpu) for host in wide)
        return _largest(self.hosts).share(cpu)

    def check(self, shape: Shape) -> None:
        """Raise :class:`ResourceUnavailableError` when no host can ever hold one
        worker of ``shape``, naming the first resource none has enough of."""
        if any(self._fit_on(host, shape, _Used()) for host in self.hosts):
            return
        lacking = next(
            (r for r in _RESOURCES if not any(_has(host, shape, r) for host in self.hosts)), ""
        )
        raise self._refusal(shape, lacking)

    def _refusal(self, shape: Shape, lacking: str) -> ResourceUnavailableError:
        """The error of a shape no host holds; ``lacking`` names the resource no host
        has enough of (empty: each has enough of each, but of none all together)."""
        request = shape.asked(lacking) if lacking else shape.asked(*_RESOURCES)
        return ResourceUnavailableError(
            request, self.describe(), self.provider, where=self.provider
        )

    def fit(self, shape: Shape) -> int:
        """How many workers of ``shape`` the empty hosts hold, all together (a queued
        capacity: its cap, else at least one, since the queue holds the rest)."""
        held = sum(self._fit_on(host, shape, _Used()) for host in self.hosts)
        if self.queued:
            return self._holder_cap if self._holder_cap is not None else max(held, 1)
        return held if self._holder_cap is None else min(held, self._holder_cap)

    def room(self, host: str, shape: Shape) -> int:
        """How many more workers of ``shape`` fit on ``host`` beside every holder's,
        here and in other processes."""
        with self._shared():
            return self._fit_on(self._by_name[host], shape, self._used(host, None))

    # -- growing and waiting -----------------------------------------------------------

    def grant(self, holder: object, shape: Shape, want: int, current: int) -> int:
        """Let ``holder`` have up to ``want`` workers, as far as the others leave room.

        ``holder`` keeps at least the ``current`` workers it has until it shrinks.
        The others are this process's other holders and every other process's leases
        of the same hosts. GPUs are counted by their ids: those no worker of another
        holder (or another process) holds now, less those granted to others that have
        no ids yet. A queued capacity grants ``want``, capped.
        """
        if self.queued:
            return want if self._holder_cap is None else min(want, self._holder_cap)
        with self._shared():
            if holder in self._released:
                return 0  # a last adaptive step of a pool that is closing
            room = sum(self._fit_on(h, shape, self._used(h.name, holder)) for h in self.hosts)
            room -= sum(
                self._unplaced(k, other) for k, other in self._held.items() if k is not holder
            )
            if self._holder_cap is not None:
                room = min(room, self._holder_cap)
            granted = min(want, max(room, current))
            holding = self._held.setdefault(holder, _Holding(shape))
            holding.shape = shape
            holding.count = max(granted, current)
            _trim(holding.placed, holding.count)
            self._note_wait(holder, waiting=granted < want)
            return granted

    def place(self, holder: object, shape: Shape, placed: Mapping[str, int]) -> str:
        """The host for ``holder``'s next worker: of the hosts with room for one more
        worker of ``shape`` beside every holder's (``holder``'s own are ``placed``:
        how many are on each host now), the one with the fewest of ``holder``'s; when
        none has room, the host with the fewest."""
        with self._shared():

            def fits(host: Host) -> bool:
                used = self._used(host.name, holder)
                used.add(shape, placed.get(host.name, 0))
                return self._fit_on(host, shape, used) > 0

            roomy = [host for host in self.hosts if fits(host)] or list(self.hosts)
            chosen = min(roomy, key=lambda host: placed.get(host.name, 0)).name
            if holder not in self._released and not self.queued:
                holding = self._held.setdefault(holder, _Holding(shape))
                holding.placed = {name: n for name, n in placed.items() if n > 0}
                holding.placed[chosen] = holding.placed.get(chosen, 0) + 1
                holding.count = max(holding.count, sum(holding.placed.values()))
            return chosen

    def waiting(self, holder: object) -> bool:
        """Whether ``holder`` wants more workers than there is room for now."""
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
        if self.queued:
            return  # nothing held: the queue keeps the books
        with self._shared():
            self._held.pop(holder, None)
            self._waits.pop(id(holder), None)
            self._released.add(holder)
            self._gpu_owner = {
                g: owner for g, owner in self._gpu_owner.items() if owner[0]() is not holder
            }

    # -- GPU ids -----------------------------------------------------------------------

    @contextlib.contextmanager
    def gpus_for(self, holder: object, workers: int, per_worker: int) -> Iterator[int]:
        """Reserve whole sets of ``per_worker`` free GPU ids, each set on one host, for
        up to ``workers`` new workers of ``holder``; yields how many sets it reserved.

        Inside, :meth:`assign_gpus` hands the reserved sets to the workers ``holder``
        names; the sets it did not hand out are free again on the way out. A holder
        starts only as many GPU workers as this yields, so that none starts short.
        """
        with self._shared():
            self._scaling.add(id(holder))
            reserved = 0
            ref = _weak(holder)
            for host in self.hosts if per_worker else ():
                free = self._free_ids(host.name)
                sets = min(workers - reserved, len(free) // per_worker)
                for gpu in free[: sets * per_worker]:
                    self._gpu_owner[(host.name, gpu)] = (ref, None)
                reserved += sets
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

    def assign_gpus(
        self, holder: object, worker: str, n: int, host: str | None = None
    ) -> list[str]:
        """Give ``worker`` of ``holder`` ``n`` GPU ids of ``host`` (None: the only
        host): those reserved for ``holder`` there by :meth:`gpus_for`, else free ones.
        Fewer than ``n`` when too few are free.

        An id stays the worker's while ``holder`` lives, is not released and has
        ``worker`` in its ``plan`` (the names of the workers it means to run, as
        dask's ``SpecCluster.plan``); then it is free, for every holder and process.
        """
        if host is None:
            if len(self.hosts) > 1:
                raise ValueError(f"which host? {self.provider} has {len(self.hosts)}")
            host = self.hosts[0].name
        with self._shared():
            owners = self._live_gpus().items()
            reserved = [
                gpu
                for (where, gpu), (ref, name) in owners
                if where == host and ref() is holder and name is None
            ]
            ids = [*reserved, *self._free_ids(host)][:n]
            ref = _weak(holder)
            for gpu in ids:
                self._gpu_owner[(host, gpu)] = (ref, worker)
            return sorted(ids, key=self._by_name[host].gpus.index)

    # -- the books ---------------------------------------------------------------------

    def _fit_on(self, host: Host, shape: Shape, used: _Used) -> int:
        """How many workers of ``shape`` fit on ``host`` beside what is ``used``."""
        fits = [
            (host.cores - used.cores) // max(shape.cpu, 1),
            (host.memory - used.memory) // max(shape.memory, 1),
        ]
        if shape.gpu:
            fits.append((len(host.gpus) - used.gpus) // shape.gpu)
        cap = self._caps.get(host.name)
        if cap is not None:
            fits.append(cap - used.workers)
        return max(min(fits), 0)

    def _counts(self, holder: object, holding: _Holding) -> dict[str, int]:
        """How many of a holder's workers are on each host: on a capacity of several
        hosts, as the holder says (``holder.host_counts()``, keyed by anything whose
        ``str`` is the host's name), else where :meth:`place` put them."""
        if len(self.hosts) == 1:
            return {self.hosts[0].name: holding.count}
        live = _host_counts(holder)
        return holding.placed if live is None else live

    def _unplaced(self, holder: object, holding: _Holding) -> int:
        """Workers granted a holder that no host was chosen for yet."""
        if len(self.hosts) == 1:
            return 0
        return max(0, holding.count - sum(self._counts(holder, holding).values()))

    def _used(self, host: str, but: object) -> _Used:
        """What every holder but ``but`` holds on ``host``, here and in other processes."""
        used = _Used()
        owned: dict[int, int] = {}
        if self._by_name[host].gpus:
            for (where, _), (ref, _) in self._live_gpus().items():
                if where == host and ref() is not but:
                    owned[id(ref())] = owned.get(id(ref()), 0) + 1
        for other, holding in self._held.items():
            if other is but:
                continue
            count = self._counts(other, holding).get(host, 0)
            used.add(holding.shape, count, gpus=0)
            used.gpus += max(owned.pop(id(other), 0), holding.shape.gpu * count)
        used.gpus += sum(owned.values())  # ids of holders that hold no grant
        for lease in self._others.get(host, ()):
            asked = 0
            for cpu, memory, gpu, count in lease["held"]:
                used.add(Shape(cpu=cpu, memory=memory), count)
                asked += gpu * count
            used.gpus += max(asked, len(lease["gpus"]))
        return used

    def _live_gpus(self) -> dict[tuple[str, str], tuple[Any, str | None]]:
        """Forget the ids of workers that left their holder's plan; the rest."""
        if not self._gpu_owner:
            return self._gpu_owner
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

    def _free_ids(self, host: str) -> list[str]:
        """The GPU ids of ``host`` that no holder here and no other process holds, in order."""
        taken = {gpu for where, gpu in self._live_gpus() if where == host}
        taken |= {gpu for lease in self._others.get(host, ()) for gpu in lease["gpus"]}
        return [gpu for gpu in self._by_name[host].gpus if gpu not in taken]

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        """This object's lock and its hosts' ledger: read the other processes' leases
        on the way in, write this one's on the way out."""
        with self._lock:
            if self.ledger is None:
                yield
                return
            names = [host.name for host in self.hosts]
            with self.ledger.locked(names):
                self._others = {name: self.ledger.others(name) for name in names}
                self._others_waiting = any(
                    lease.get("waiting") for leases in self._others.values() for lease in leases
                )
                try:
                    yield
                finally:
                    self._write_leases()

    def _note_wait(self, holder: object, *, waiting: bool) -> None:
        since, total = self._waits.setdefault(id(holder), [0.0, 0.0])
        if waiting and not since:
            self._waits[id(holder)][0] = time.monotonic()
        elif not waiting and since:
            self._waits[id(holder)] = [0.0, total + time.monotonic() - since]

    def _write_leases(self) -> None:
        assert self.ledger is not None
        waiting = any(wait[0] > 0 for wait in self._waits.values())
        gpus = self._live_gpus() if self._has_gpus else {}
        for host in self.hosts:
            held = []
            for holder, holding in self._held.items():
                count = self._counts(holder, holding).get(host.name, 0)
                if count:
                    shape = holding.shape
                    held.append([shape.cpu, shape.memory, shape.gpu, count])
            ids = sorted(gpu for where, gpu in gpus if where == host.name)
            self.ledger.write(held, ids, waiting, host=host.name)


@define
class _Used:
    """What holders hold on one host: cores, memory, GPUs and workers."""

    cores: int = 0
    memory: int = 0
    gpus: int = 0
    workers: int = 0

    def add(self, shape: Shape, count: int, gpus: int | None = None) -> None:
        self.cores += shape.cpu * count
        self.memory += shape.memory * count
        self.gpus += shape.gpu * count if gpus is None else gpus
        self.workers += count


def _has(host: Host, shape: Shape, resource: str) -> bool:
    """Whether ``host`` has enough of ``resource`` for one worker of ``shape``."""
    if resource == "cpu":
        return host.cores >= shape.cpu
    if resource == "memory":
        return host.memory >= shape.memory
    return len(host.gpus) >= shape.gpu


def _largest(hosts: Sequence[Host]) -> Host:
    return max(hosts, key=lambda host: (host.cores, host.memory, len(host.gpus)))


def _trim(placed: dict[str, int], count: int) -> None:
    """Bring a holder's placements down to ``count`` workers, from the hosts with the
    most: it shrank, and its next :meth:`Capacity.place` says where it really is."""
    while sum(placed.values()) > count:
        most = max(placed, key=lambda name: placed[name])
        placed[most] -= 1
        if not placed[most]:
            del placed[most]


class HostCapacity(Capacity):
    """This host's cores, memory and GPUs (read with psutil and :func:`detect_gpus`
    unless given), shared with every taskcloud process here through its ledger."""

    def __init__(
        self,
        cores: int | None = None,
        memory: int | None = None,
        gpus: Sequence[str] | None = None,
        ledger: Ledger | None = _DEFAULT,
    ) -> None:
        host = Host(
            THIS_HOST,
            _cores() if cores is None else cores,
            psutil.virtual_memory().total if memory is None else memory,
            detect_gpus() if gpus is None else tuple(gpus),
        )
        super().__init__(
            "local", [host], ledger=Ledger.for_host() if ledger is _DEFAULT else ledger
        )

    @property
    def cores(self) -> int:
        return self.hosts[0].cores

    @property
    def memory(self) -> int:
        return self.hosts[0].memory

    @property
    def gpus(self) -> tuple[str, ...]:
        return self.hosts[0].gpus

    def _refusal(self, shape: Shape, lacking: str) -> ResourceUnavailableError:
        if lacking == "cpu":
            return ResourceUnavailableError(f"cpu={shape.cpu}", f"{self.cores} cores")
        if lacking == "memory":
            return ResourceUnavailableError(
                shape.asked("memory"), f"{format_bytes(self.memory)} of memory"
            )
        if lacking == "gpu":
            return ResourceUnavailableError(f"gpu={shape.gpu}", f"{len(self.gpus)} GPUs")
        return ResourceUnavailableError(shape.asked(*_RESOURCES), self.describe())


def _weak(holder: object) -> Any:
    """A weak reference to ``holder``, or a strong one for objects that take none."""
    try:
        return weakref.ref(holder)
    except TypeError:
        return lambda: holder


def _host_counts(holder: Any) -> dict[str, int] | None:
    """How many workers ``holder`` has on each host, by host name, as it says through
    its ``host_counts()``; None: it says nothing."""
    counts = getattr(holder, "host_counts", None)
    if counts is None:
        return None
    for _ in range(5):
        try:
            return {str(host): int(n) for host, n in counts().items() if n}
        except RuntimeError:  # changed as it was read, on the holder's event loop
            continue
    return None


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
