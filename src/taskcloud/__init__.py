"""taskcloud: run pytask workflows in parallel, and heavy tasks on dask workers."""

from __future__ import annotations

from taskcloud.backends import ParallelBackend
from taskcloud.backends import ParallelBackendRegistry
from taskcloud.backends import WorkerType
from taskcloud.backends import registry
from taskcloud.errors import BackendBuildError
from taskcloud.errors import BackendNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import RemoteTaskError
from taskcloud.errors import TaskcloudError
from taskcloud.extensions import hookimpl

__version__ = "0.1.0"

__all__ = [
    "BackendBuildError",
    "BackendNotFoundError",
    "InvalidOptionError",
    "ParallelBackend",
    "ParallelBackendRegistry",
    "RemoteTaskError",
    "TaskcloudError",
    "WorkerType",
    "__version__",
    "hookimpl",
    "registry",
]
