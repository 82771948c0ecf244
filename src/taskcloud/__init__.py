"""taskcloud: run pytask workflows in parallel, and heavy tasks on dask workers.

The public names are listed in ``__all__``; each is imported from its module on first
use, so that a worker process importing one small module of the package does not pay
for all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

__version__ = "0.1.0"


__all__ = [
    "BackendBuildError",
    "BackendNotFoundError",
    "BreakpointError",
    "Cluster",
    "ClusterNotFoundError",
    "ClusterStartError",
    "ConfigurationNotFoundError",
    "EnvironmentBuildError",
    "EnvironmentNotSupportedError",
    "EnvironmentToolNotFoundError",
    "Function",
    "HostUnreachableError",
    "InvalidOptionError",
    "MemoryLimitError",
    "NameNotFoundError",
    "ParallelBackend",
    "ParallelBackendRegistry",
    "RemoteTaskError",
    "ResourceUnavailableError",
    "SerializationError",
    "SoftwareEnvironmentNotFoundError",
    "StoreError",
    "TaskTimeoutError",
    "TaskcloudError",
    "UnknownOptionError",
    "WorkerLostError",
    "WorkerType",
    "__version__",
    "create_cluster_configuration",
    "create_software_environment",
    "delete_cluster",
    "delete_cluster_configuration",
    "delete_software_environment",
    "function",
    "hookimpl",
    "list_cluster_configurations",
    "list_clusters",
    "list_software_environments",
    "registry",
]

#: Where each public name lives.
_EXPORTS = {
    "BackendBuildError": "taskcloud.errors",
    "BackendNotFoundError": "taskcloud.errors",
    "BreakpointError": "taskcloud.errors",
    "Cluster": "taskcloud.clusters",
    "ClusterNotFoundError": "taskcloud.errors",
    "ClusterStartError": "taskcloud.errors",
    "ConfigurationNotFoundError": "taskcloud.errors",
    "EnvironmentBuildError": "taskcloud.errors",
    "EnvironmentNotSupportedError": "taskcloud.errors",
    "EnvironmentToolNotFoundError": "taskcloud.errors",
    "Function": "taskcloud.functions",
    "HostUnreachableError": "taskcloud.errors",
    "InvalidOptionError": "taskcloud.errors",
    "MemoryLimitError": "taskcloud.errors",
    "NameNotFoundError": "taskcloud.errors",
    "ParallelBackend": "taskcloud.backends",
    "ParallelBackendRegistry": "taskcloud.backends",
    "RemoteTaskError": "taskcloud.errors",
    "ResourceUnavailableError": "taskcloud.errors",
    "SerializationError": "taskcloud.errors",
    "SoftwareEnvironmentNotFoundError": "taskcloud.errors",
    "StoreError": "taskcloud.errors",
    "TaskTimeoutError": "taskcloud.errors",
    "TaskcloudError": "taskcloud.errors",
    "UnknownOptionError": "taskcloud.errors",
    "WorkerLostError": "taskcloud.errors",
    "WorkerType": "taskcloud.backends",
    "create_cluster_configuration": "taskcloud.configurations",
    "create_software_environment": "taskcloud.environments",
    "delete_cluster": "taskcloud.clusters",
    "delete_cluster_configuration": "taskcloud.configurations",
    "delete_software_environment": "taskcloud.environments",
    "function": "taskcloud.functions",
    "hookimpl": "taskcloud.extensions",
    "list_cluster_configurations": "taskcloud.configurations",
    "list_clusters": "taskcloud.clusters",
    "list_software_environments": "taskcloud.environments",
    "registry": "taskcloud.backends",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskcloud' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from taskcloud.backends import ParallelBackend
    from taskcloud.backends import ParallelBackendRegistry
    from taskcloud.backends import WorkerType
    from taskcloud.backends import registry
    from taskcloud.clusters import Cluster
    from taskcloud.clusters import delete_cluster
    from taskcloud.clusters import list_clusters
    from taskcloud.configurations import create_cluster_configuration
    from taskcloud.configurations import delete_cluster_configuration
    from taskcloud.configurations import list_cluster_configurations
    from taskcloud.environments import create_software_environment
    from taskcloud.environments import delete_software_environment
    from taskcloud.environments import list_software_environments
    from taskcloud.errors import BackendBuildError
    from taskcloud.errors import BackendNotFoundError
    from taskcloud.errors import BreakpointError
    from taskcloud.errors import ClusterNotFoundError
    from taskcloud.errors import ClusterStartError
    from taskcloud.errors import ConfigurationNotFoundError
    from taskcloud.errors import EnvironmentBuildError
    from taskcloud.errors import EnvironmentNotSupportedError
    from taskcloud.errors import EnvironmentToolNotFoundError
    from taskcloud.errors import HostUnreachableError
    from taskcloud.errors import InvalidOptionError
    from taskcloud.errors import MemoryLimitError
    from taskcloud.errors import NameNotFoundError
    from taskcloud.errors import RemoteTaskError
    from taskcloud.errors import ResourceUnavailableError
    from taskcloud.errors import SerializationError
    from taskcloud.errors import SoftwareEnvironmentNotFoundError
    from taskcloud.errors import StoreError
    from taskcloud.errors import TaskcloudError
    from taskcloud.errors import TaskTimeoutError
    from taskcloud.errors import UnknownOptionError
    from taskcloud.errors import WorkerLostError
    from taskcloud.extensions import hookimpl
    from taskcloud.functions import Function
    from taskcloud.functions import function
