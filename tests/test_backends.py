"""The backend registry: pytask-parallel's names, plain string names, clear errors."""

from __future__ import annotations

from concurrent.futures import Executor
from concurrent.futures import ThreadPoolExecutor

import pytest

import taskcloud
from taskcloud import BackendBuildError
from taskcloud import BackendNotFoundError
from taskcloud import InvalidOptionError
from taskcloud import ParallelBackend
from taskcloud import ParallelBackendRegistry
from taskcloud import WorkerType


def _threads(n_workers: int) -> Executor:
    return ThreadPoolExecutor(max_workers=n_workers)


def test_builtin_backends_are_registered() -> None:
    """A fresh registry knows the built-in names, in a stable order."""
    assert ParallelBackendRegistry().names() == ["dask", "loky", "processes", "threads"]


def test_register_with_the_pytask_parallel_enum() -> None:
    """The pytask-parallel call registers the custom backend unchanged."""
    registry = ParallelBackendRegistry()
    registry.register_parallel_backend(
        ParallelBackend.CUSTOM, _threads, worker_type="threads", remote=True
    )
    backend = registry.get("custom")
    assert (backend.worker_type, backend.remote) == (WorkerType.THREADS, True)
    with registry.get_parallel_backend(ParallelBackend.CUSTOM, n_workers=3) as pool:
        assert pool._max_workers == 3


def test_register_with_a_string_name() -> None:
    """Any name of letters, digits, '-', '_' or '.' can be registered."""
    registry = ParallelBackendRegistry()
    registry.register_parallel_backend("my-cluster", _threads, worker_type=WorkerType.THREADS)
    assert "my-cluster" in registry
    assert registry.names()[-1] == "my-cluster"


def test_members_are_their_names() -> None:
    """Enum members equal, hash and print as their string values, both ways round."""
    assert ParallelBackend.LOKY == "loky"
    assert "loky" == ParallelBackend.LOKY  # noqa: SIM300
    assert {"loky": 1}[ParallelBackend.LOKY] == {ParallelBackend.LOKY: 1}["loky"] == 1
    assert WorkerType.THREADS == "threads"
    assert str(ParallelBackend.DASK) == f"{ParallelBackend.DASK}" == "dask"
    assert f"{WorkerType.PROCESSES:>10}" == " processes"
    assert ParallelBackend("custom") is ParallelBackend.CUSTOM


def test_registry_mapping_as_in_pytask_parallel() -> None:
    """registry.registry maps members and plain names to builder, worker_type, remote."""
    registry = ParallelBackendRegistry()
    registry.register_parallel_backend(ParallelBackend.CUSTOM, _threads, remote=True)
    registry.register_parallel_backend("my-cluster", _threads, worker_type="threads")
    table = registry.registry

    assert ParallelBackend.LOKY in table
    assert "loky" in table
    assert set(table) >= {ParallelBackend.CUSTOM, ParallelBackend.THREADS, "my-cluster"}
    assert all(isinstance(key, ParallelBackend) for key in table if key != "my-cluster")
    custom = table[ParallelBackend.CUSTOM]
    assert (custom.builder, custom.worker_type, custom.remote) == (
        _threads,
        WorkerType.PROCESSES,
        True,
    )
    assert table["my-cluster"].worker_type is WorkerType.THREADS
    with pytest.raises(TypeError):
        table["mine"] = custom  # type: ignore[index]


def test_restore_returns_to_a_checkpoint() -> None:
    """restore() forgets what was registered after checkpoint(), keeps what was before."""
    registry = ParallelBackendRegistry()
    registry.register_parallel_backend("before", _threads)
    saved = registry.checkpoint()
    registry.register_parallel_backend("after", _threads)
    registry.restore(saved)
    assert "before" in registry
    assert "after" not in registry


def test_registries_do_not_share_their_tables() -> None:
    """Registering on one registry leaves another untouched."""
    one, other = ParallelBackendRegistry(), ParallelBackendRegistry()
    one.register_parallel_backend("mine", _threads)
    assert "mine" not in other


def test_reset_forgets_registrations() -> None:
    """reset() restores exactly the built-in backends."""
    registry = ParallelBackendRegistry()
    registry.register_parallel_backend("mine", _threads)
    registry.reset()
    assert "mine" not in registry


def test_unknown_backend_lists_the_registered_ones() -> None:
    """An unknown name is a LookupError naming the name and the alternatives."""
    with pytest.raises(
        BackendNotFoundError,
        match=r"^No registered parallel backend found for 'lokyy'. Registered: 'dask', 'loky'",
    ) as info:
        ParallelBackendRegistry().get("lokyy")
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, ValueError)  # what pytask-parallel raises


def test_builder_that_raises() -> None:
    """A failing builder is reported with the backend's name and the cause."""

    def broken(n_workers: int) -> Executor:
        raise OSError("no cluster here")

    registry = ParallelBackendRegistry()
    registry.register_parallel_backend("broken", broken)
    with pytest.raises(
        BackendBuildError,
        match=r"^Could not instantiate parallel backend 'broken'. Its builder raised OSError: no",
    ) as info:
        registry.get_parallel_backend("broken", n_workers=2)
    assert isinstance(info.value, ValueError)  # what pytask-parallel raises


def test_builder_that_returns_no_executor() -> None:
    """A builder must return a concurrent.futures.Executor."""
    registry = ParallelBackendRegistry()
    registry.register_parallel_backend("odd", lambda n_workers: "pool")
    with pytest.raises(
        BackendBuildError,
        match=r"^Could not instantiate parallel backend 'odd'. Its builder returned 'pool', which",
    ):
        registry.get_parallel_backend("odd", n_workers=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "bad name!"}, "parallel_backend='bad name!' is invalid"),
        ({"kind": "none"}, "kind='none' is invalid. Expected any backend name except"),
        ({"kind": "x", "builder": 3}, "builder=3 is invalid. Expected a callable"),
        ({"kind": "x", "worker_type": "fibers"}, "worker_type='fibers' is invalid"),
    ],
)
def test_bad_registrations(kwargs: dict, match: str) -> None:
    """Bad arguments name the parameter, the value and the accepted form."""
    arguments = {"kind": "x", "builder": _threads, **kwargs}
    kind, builder = arguments.pop("kind"), arguments.pop("builder")
    with pytest.raises(InvalidOptionError, match=match):
        ParallelBackendRegistry().register_parallel_backend(kind, builder, **arguments)


def test_public_names_match_pytask_parallel() -> None:
    """The names a pytask-parallel project imports exist on taskcloud."""
    for name in ("ParallelBackend", "ParallelBackendRegistry", "WorkerType", "registry"):
        assert name in taskcloud.__all__
    assert {member.value for member in ParallelBackend} == {
        "none",
        "custom",
        "dask",
        "loky",
        "processes",
        "threads",
    }
