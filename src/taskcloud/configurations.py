"""Saved cluster configurations: named worker shapes to start calls and clusters from.

``@taskcloud.function(configuration="big")`` takes its defaults from the saved
configuration ``big``; options given to the decorator win.
"""

from __future__ import annotations

from typing import Any

from taskcloud.environments import list_software_environments
from taskcloud.errors import ConfigurationNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import SoftwareEnvironmentNotFoundError
from taskcloud.providers import kinds
from taskcloud.specs import FunctionSpec
from taskcloud.specs import check_name
from taskcloud.specs import environ_hidden
from taskcloud.specs import options_checked
from taskcloud.store import Store

__all__ = [
    "cluster_defaults",
    "create_cluster_configuration",
    "delete_cluster_configuration",
    "function_defaults",
    "list_cluster_configurations",
]

_TABLE = "configurations"

#: Configuration options, by the decorator option each one sets.
_TO_FUNCTION = {
    "worker_cpu": "cpu",
    "worker_memory": "memory",
    "worker_gpu": "gpu",
    "software": "software",
    "n_workers": "n_workers",
    "keepalive": "keepalive",
    "threads_per_worker": "threads_per_worker",
    "environ": "environ",
    "provider": "provider",
    "dashboard": "dashboard",
}
_FROM_FUNCTION = {value: key for key, value in _TO_FUNCTION.items()}


@options_checked("taskcloud.create_cluster_configuration", unlisted=("name", "store"))
def create_cluster_configuration(
    name: str,
    *,
    worker_cpu: int | None = None,
    worker_memory: int | str | None = None,
    worker_gpu: int | None = None,
    software: str | None = None,
    n_workers: int | list[int] | str | None = None,
    keepalive: float | str | None = None,
    threads_per_worker: int | None = None,
    environ: dict[str, str] | None = None,
    provider: str | None = None,
    dashboard: bool | None = None,
    store: Store | None = None,
) -> dict[str, Any]:
    """Save (or replace) the configuration ``name``; return what was saved.

    Values are checked like the decorator's options, and saved normalised: memory in
    bytes, durations in seconds. ``software`` must name a saved software environment.
    """
    given = {
        "worker_cpu": worker_cpu,
        "worker_memory": worker_memory,
        "worker_gpu": worker_gpu,
        "software": software,
        "n_workers": n_workers,
        "keepalive": keepalive,
        "threads_per_worker": threads_per_worker,
        "environ": environ,
        "provider": provider,
        "dashboard": dashboard,
    }
    options = {key: value for key, value in given.items() if value is not None}
    check_name(name)
    saved = _normalise(options)
    store = store or Store()
    if software is not None:
        known = list_software_environments(store)
        if software not in known:
            raise SoftwareEnvironmentNotFoundError(software, known)
    store.put(_TABLE, name, saved)
    return saved


def _normalise(options: dict[str, Any]) -> dict[str, Any]:
    arguments = {_TO_FUNCTION[key]: value for key, value in options.items()}
    try:
        spec = FunctionSpec(**arguments)
        if spec.provider is not None:  # an unknown one is refused when saved
            kinds.resolve(spec.provider)
    except InvalidOptionError as exc:
        raise InvalidOptionError(
            _FROM_FUNCTION.get(exc.parameter, exc.parameter), exc.value, exc.accepted
        ) from None
    normalised = {}
    for key in options:
        value = getattr(spec, _TO_FUNCTION[key])
        normalised[key] = dict(value) if key == "environ" else value
        if key == "n_workers":
            normalised[key] = list(value)
    return normalised


def list_cluster_configurations(store: Store | None = None) -> dict[str, dict[str, Any]]:
    """Every saved configuration, by name; ``environ`` values show as ``"***"``."""
    saved = (store or Store()).all(_TABLE)
    for options in saved.values():
        if "environ" in options:
            options["environ"] = environ_hidden(options["environ"])
    return saved


def delete_cluster_configuration(name: str, store: Store | None = None) -> None:
    """Remove the configuration ``name``."""
    store = store or Store()
    if not store.delete(_TABLE, name):
        raise ConfigurationNotFoundError(name, store.all(_TABLE))


def function_defaults(name: str, store: Store | None = None) -> dict[str, Any]:
    """The decorator options that the configuration ``name`` sets."""
    store = store or Store()
    saved = store.get(_TABLE, name)
    if saved is None:
        raise ConfigurationNotFoundError(name, store.all(_TABLE))
    return {_TO_FUNCTION[key]: value for key, value in saved.items()}


def cluster_defaults(name: str, store: Store | None = None) -> dict[str, Any]:
    """The ``taskcloud.Cluster`` options that the configuration ``name`` sets."""
    store = store or Store()
    saved = store.get(_TABLE, name)
    if saved is None:
        raise ConfigurationNotFoundError(name, store.all(_TABLE))
    options = {key: saved[key] for key in _CLUSTER_KEYS if key in saved}
    worker_options = {}
    if "threads_per_worker" in saved:
        worker_options["nthreads"] = saved["threads_per_worker"]
    if saved.get("environ"):
        worker_options["env"] = saved["environ"]
    if worker_options:
        options["worker_options"] = worker_options
    return options


#: Configuration options that ``taskcloud.Cluster`` takes as they are.
_CLUSTER_KEYS = ("worker_cpu", "worker_memory", "worker_gpu", "software", "n_workers", "provider")
