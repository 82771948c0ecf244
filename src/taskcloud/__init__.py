"""taskcloud: run pytask workflows in parallel, and heavy tasks on dask workers."""

from __future__ import annotations

from taskcloud.backends import ParallelBackend
from taskcloud.backends import ParallelBackendRegistry
from taskcloud.backends import WorkerType
from taskcloud.backends import registry
from taskcloud.errors import BackendBuildError
from taskcloud.errors import BackendNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import MemoryLimitError
from taskcloud.errors import RemoteTaskError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.errors import SerializationError
from taskcloud.errors import TaskcloudError
from taskcloud.errors import TaskTimeoutError
from taskcloud.errors import WorkerLostError
from taskcloud.extensions import hookimpl
from taskcloud.function import Function
from taskcloud.function import function

__version__ = "0.1.0"

__all__ = [
    "BackendBuildError",
    "BackendNotFoundError",
    "Function",
    "InvalidOptionError",
    "MemoryLimitError",
    "ParallelBackend",
    "ParallelBackendRegistry",
    "RemoteTaskError",
    "ResourceUnavailableError",
    "SerializationError",
    "TaskTimeoutError",
    "TaskcloudError",
    "WorkerLostError",
    "WorkerType",
    "__version__",
    "function",
    "hookimpl",
    "registry",
]
