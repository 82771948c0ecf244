"""The exceptions taskcloud raises.

Each error subclasses :class:`TaskcloudError` and the builtin it naturally is, keeps
its parts as attributes and renders them in ``__str__``. This module imports nothing
else from the package.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BackendBuildError",
    "BackendNotFoundError",
    "InvalidOptionError",
    "RemoteTaskError",
    "TaskcloudError",
]


class TaskcloudError(Exception):
    """The base of every error taskcloud raises."""


class InvalidOptionError(TaskcloudError, ValueError):
    """An option got a value outside its accepted form."""

    def __init__(self, parameter: str, value: object, accepted: str) -> None:
        super().__init__(parameter, value, accepted)
        self.parameter = parameter
        self.value = value
        self.accepted = accepted

    def __str__(self) -> str:
        return f"{self.parameter}={self.value!r} is invalid. Expected {self.accepted}."


class BackendNotFoundError(TaskcloudError, LookupError):
    """A parallel backend name that nothing registered."""

    def __init__(self, name: str, registered: Iterable[str]) -> None:
        self.name = name
        self.registered = tuple(registered)
        super().__init__(name, self.registered)

    def __str__(self) -> str:
        names = ", ".join(repr(name) for name in self.registered)
        return f"Unknown parallel backend {self.name!r}. Registered: {names}."


class BackendBuildError(TaskcloudError, RuntimeError):
    """A registered builder raised or returned something that is not an Executor."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"Could not build the parallel backend {self.name!r}: {self.reason}"


class RemoteTaskError(TaskcloudError, RuntimeError):
    """Stands in for a worker's exception that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"
