"""The exceptions taskcloud raises.

Each error subclasses :class:`TaskcloudError` and the builtin it naturally is, keeps
its parts as attributes and renders them in ``__str__``. This module imports nothing
else from the package.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "BackendBuildError",
    "BackendNotFoundError",
    "BreakpointError",
    "ClusterNotFoundError",
    "ClusterStartError",
    "ConfigurationNotFoundError",
    "EnvironmentBuildError",
    "EnvironmentNotSupportedError",
    "EnvironmentToolNotFoundError",
    "HostUnreachableError",
    "InvalidOptionError",
    "JobFailedError",
    "JobPendingError",
    "MemoryLimitError",
    "NameNotFoundError",
    "ProviderLoadError",
    "ProviderNotFoundError",
    "RemoteTaskError",
    "ResourceUnavailableError",
    "SerializationError",
    "SlurmUnreachableError",
    "SoftwareEnvironmentNotFoundError",
    "StoreError",
    "TaskTimeoutError",
    "TaskcloudError",
    "UnknownOptionError",
    "WorkerLostError",
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


class UnknownOptionError(TaskcloudError, TypeError):
    """An option that ``where`` does not take, e.g. ``cores=`` for ``cpu=``.

    A ``TypeError``, as Python's own for an unexpected keyword argument. ``suggestion``
    is the accepted option the name most likely meant, or None.
    """

    def __init__(
        self, where: str, option: str, accepted: Iterable[str], suggestion: str | None
    ) -> None:
        self.accepted = tuple(accepted)
        super().__init__(where, option, self.accepted, suggestion)
        self.where = where
        self.option = option
        self.suggestion = suggestion

    def __str__(self) -> str:
        hint = f" Did you mean {self.suggestion!r}?" if self.suggestion else ""
        return (
            f"{self.where} got an unknown option {self.option!r}.{hint} "
            f"Its options are {', '.join(self.accepted)}."
        )


class ProviderNotFoundError(InvalidOptionError, LookupError):
    """A provider name that is neither a registered kind nor a profile."""

    def __init__(self, name: object, kinds: Iterable[str], profiles: Iterable[str]) -> None:
        self.kinds = tuple(sorted(kinds))
        self.profiles = tuple(sorted(profiles))
        kinds_text = ", ".join(repr(kind) for kind in self.kinds) or "none"
        profiles_text = ", ".join(repr(profile) for profile in self.profiles) or "none defined"
        super().__init__(
            "provider",
            name,
            f"a provider kind ({kinds_text}) or a profile ({profiles_text}) of "
            "[tool.taskcloud.providers] in pyproject.toml or [providers] in "
            "$TASKCLOUD_HOME/providers.toml",
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.value, self.kinds, self.profiles)


class ProviderLoadError(TaskcloudError, ImportError):
    """A registered provider kind whose class could not be imported."""

    def __init__(self, kind: str, target: str, reason: str) -> None:
        super().__init__(kind, target, reason)
        self.kind = kind
        self.target = target
        self.reason = reason

    def __str__(self) -> str:
        return f"Provider kind {self.kind!r} ({self.target}) could not be loaded: {self.reason}"


class NameNotFoundError(TaskcloudError, LookupError):
    """A name that nothing saved, registered or runs; the message lists those that do."""

    #: What the name was looked up as, and the word for the names that exist.
    what = "thing"
    listing = "Known"
    message = "No {what} named {name!r}. {listing}: {names}."

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(name, self.known)

    def __str__(self) -> str:
        names = ", ".join(repr(name) for name in self.known) or "none"
        return self.message.format(
            what=self.what, name=self.name, listing=self.listing, names=names
        )


class BackendNotFoundError(NameNotFoundError, ValueError):
    """A parallel backend name that nothing registered.

    Also a ``ValueError``, which pytask-parallel raises here, and opens with its words.
    """

    what = "parallel backend"
    listing = "Registered"
    message = "No registered {what} found for {name!r}. {listing}: {names}."

    def __str__(self) -> str:
        if self.name == "custom":
            return (
                f"{super().__str__()} Register 'custom' by the time the tasks run: "
                "registry.register_parallel_backend(ParallelBackend.CUSTOM, build_executor) "
                "in a task module, a hook module, or before pytask.build()."
            )
        return (
            f"{super().__str__()} Also accepted: 'none' (every task in pytask's process) "
            "and 'custom' (a backend your code registers)."
        )


class BackendBuildError(TaskcloudError, RuntimeError, ValueError):
    """A registered builder raised or returned something that is not an Executor.

    Also a ``ValueError``, which pytask-parallel raises here, and opens with its words.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"Could not instantiate parallel backend {self.name!r}. {self.reason}"


class RemoteTaskError(TaskcloudError, RuntimeError):
    """Stands in for a worker's exception that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class BreakpointError(TaskcloudError, RuntimeError):
    """``breakpoint()`` or ``pdb.set_trace()`` on a worker, where no debugger can attach."""

    opening = (
        "You cannot use 'breakpoint()' or 'pdb.set_trace()' while parallelizing the "
        "execution of tasks."
    )

    def __init__(self, advice: str) -> None:
        super().__init__(advice)
        self.advice = advice

    def __str__(self) -> str:
        return f"{self.opening} {self.advice}"


class ResourceUnavailableError(TaskcloudError, RuntimeError):
    """A worker shape the provider can never start, e.g. more cores than the host has."""

    def __init__(
        self, request: str, capacity: str, provider: str = "local", *, where: str = ""
    ) -> None:
        super().__init__(request, capacity, provider)
        self.request = request
        self.capacity = capacity
        self.provider = provider
        #: What has the capacity, in words (``lab has 127.0.0.1 (2 cores, ...)``);
        #: by default ``the local provider``.
        self.where = where or f"the {provider} provider"

    def __str__(self) -> str:
        return (
            f"{self.request} cannot be satisfied: {self.where} has "
            f"{self.capacity}. Ask for less, or use a provider with bigger workers."
        )


class HostUnreachableError(TaskcloudError, ConnectionError):
    """A provider's host that could not be reached, or none of them: each named, with why."""

    def __init__(self, reasons: dict[str, str], provider: str = "") -> None:
        super().__init__(reasons, provider)
        self.reasons = dict(reasons)
        self.provider = provider

    def __str__(self) -> str:
        hosts = "; ".join(f"{host}: {reason}" for host, reason in self.reasons.items())
        who = "Could not reach"
        if self.provider:
            who = f"The {self.provider} provider could not reach"
        return f"{who} {hosts}."


class WorkerLostError(TaskcloudError, RuntimeError):
    """The workers running a call died more often than ``retries`` allows."""

    def __init__(self, name: str, attempts: int, worker: str = "") -> None:
        super().__init__(name, attempts, worker)
        self.name = name
        self.attempts = attempts
        self.worker = worker

    def __str__(self) -> str:
        runs = "1 attempt" if self.attempts == 1 else f"{self.attempts} attempts"
        last = f" (last on {self.worker})" if self.worker else ""
        return f"The worker running {self.name!r} died in each of {runs}{last}."


class WorkerStartError(TaskcloudError, RuntimeError):
    """No worker of a pool could start: several starts in a row failed, none running."""

    def __init__(self, pool: str, attempts: int, error: str) -> None:
        super().__init__(pool, attempts, error)
        self.pool = pool
        self.attempts = attempts
        self.error = error

    def __str__(self) -> str:
        return (
            f"No worker of {self.pool} could start: {self.attempts} starts in a row "
            f"failed, the last with {self.error}. Fix what it names (the provider's "
            "options, the software environment), then call again."
        )


class MemoryLimitError(WorkerLostError, MemoryError):
    """A call used more memory than its workers may have, so its worker was replaced."""

    def __init__(self, name: str, limit: str, used: str, worker: str = "") -> None:
        TaskcloudError.__init__(self, name, limit, used, worker)
        self.name = name
        self.limit = limit
        self.used = used
        self.worker = worker
        self.attempts = 1

    def __str__(self) -> str:
        return (
            f"{self.name!r} exceeded its memory limit of {self.limit} (its worker used "
            f"{self.used}) and the worker was replaced. Raise memory=, or use less."
        )


class TaskTimeoutError(TaskcloudError, TimeoutError):
    """A call ran longer than its ``timeout``; its worker was restarted."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(name, timeout)
        self.name = name
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"{self.name!r} did not finish within its timeout of {self.timeout:g} s; its "
            "worker was restarted."
        )


class SerializationError(TaskcloudError, TypeError):
    """An argument or a result that cannot be pickled to cross to or from a worker."""

    def __init__(self, what: str, name: str, reason: str) -> None:
        super().__init__(what, name, reason)
        self.what = what
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"The {self.what} of {self.name!r} cannot be pickled: {self.reason}"


class StoreError(TaskcloudError, RuntimeError):
    """The state file or its directory cannot be read or written, e.g. it is damaged.

    ``what`` is ``"file"`` or ``"directory"``; ``hint`` says what to do, where the
    usual advice for a damaged file does not fit.
    """

    def __init__(self, path: Path, reason: str, what: str = "file", hint: str = "") -> None:
        super().__init__(path, reason, what, hint)
        self.path = path
        self.reason = reason
        self.what = what
        self.hint = hint

    def __str__(self) -> str:
        hint = self.hint or (
            f"If the file is damaged, move it away (e.g. to {self.path}.broken) and "
            "taskcloud starts a new one; or set TASKCLOUD_HOME to use another directory."
        )
        return (
            f"taskcloud's state {self.what} {self.path} cannot be used: {self.reason}. "
            f"Nothing was changed. {hint}"
        )


class ConfigurationNotFoundError(NameNotFoundError):
    """A cluster configuration name that nothing saved."""

    what = "cluster configuration"
    listing = "Saved"


class SoftwareEnvironmentNotFoundError(NameNotFoundError):
    """A software environment name that nothing saved."""

    what = "software environment"
    listing = "Saved"


class EnvironmentBuildError(TaskcloudError, RuntimeError):
    """A software environment could not be built; nothing of it was kept."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"Could not build the software environment {self.name!r}: {self.reason}"


class EnvironmentToolNotFoundError(TaskcloudError, RuntimeError):
    """A conda or container spec, but none of the tools that build it is on PATH."""

    def __init__(self, kind: str, tools: str) -> None:
        super().__init__(kind, tools)
        self.kind = kind
        self.tools = tools

    def __str__(self) -> str:
        return (
            f"{self.kind} environments need {self.tools} on PATH; none was found. "
            "Install one of them, or build the environment with pip=."
        )


class EnvironmentNotSupportedError(TaskcloudError, NotImplementedError):
    """A software environment of a kind that the provider cannot start workers in."""

    def __init__(self, name: str, kind: str, provider: str) -> None:
        super().__init__(name, kind, provider)
        self.name = name
        self.kind = kind
        self.provider = provider

    def __str__(self) -> str:
        return (
            f"The software environment {self.name!r} is a {self.kind} environment, and the "
            f"{self.provider} provider cannot start {self.kind} workers yet. Use a pip or "
            "conda environment."
        )


class ClusterNotFoundError(NameNotFoundError):
    """A cluster name with no running cluster behind it."""

    what = "running cluster"
    listing = "Running"


class ClusterStartError(TaskcloudError, RuntimeError):
    """A cluster's process could not start; carries the reason and its log's end."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"Cluster {self.name!r} did not start: {self.reason}"


class SlurmUnreachableError(TaskcloudError, ConnectionError):
    """A Slurm command could not reach the controller (``slurmctld``)."""

    def __init__(self, provider: str, command: str, output: str) -> None:
        super().__init__(provider, command, output)
        self.provider = provider
        self.command = command
        self.output = output

    def __str__(self) -> str:
        return (
            f"Slurm could not be reached by the {self.provider} provider: {self.command!r} "
            f"said: {self.output.strip() or 'nothing'}. Is slurmctld running, and is "
            "SLURM_CONF the cluster's?"
        )


class JobPendingError(TaskcloudError, TimeoutError):
    """A worker job stayed pending past ``pending_timeout`` and was cancelled."""

    def __init__(self, job: str, state: str, reason: str, timeout: float) -> None:
        super().__init__(job, state, reason, timeout)
        self.job = job
        self.state = state
        self.reason = reason
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"Slurm job {self.job} was still {self.state} (reason: {self.reason}) after "
            f"pending_timeout={self.timeout:g} s and was cancelled. Ask for less, another "
            "queue, or a longer pending_timeout."
        )


class JobFailedError(TaskcloudError, RuntimeError):
    """A worker job ended before its worker connected; carries the job's stderr."""

    def __init__(self, job: str, state: str, stderr: str) -> None:
        super().__init__(job, state, stderr)
        self.job = job
        self.state = state
        self.stderr = stderr

    def __str__(self) -> str:
        err = self.stderr.strip() or "(empty)"
        if self.state == "REJECTED":
            return f"sbatch refused the worker job: {err}"
        return (
            f"Slurm job {self.job} ended ({self.state}) before its worker connected. "
            f"Its stderr:\n{err}"
        )
