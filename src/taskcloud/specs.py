"""What a heavy task asks for: the shape of its workers and how calls behave.

:class:`FunctionSpec` holds every option of ``@taskcloud.function``, validated in one
place; :class:`PoolSpec` is the part that decides which pool of workers a call joins.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import ParamSpec
from typing import TypeVar

from attrs import asdict
from attrs import field
from attrs import frozen

from taskcloud.errors import InvalidOptionError
from taskcloud.errors import UnknownOptionError
from taskcloud.units import format_bytes
from taskcloud.units import parse_duration
from taskcloud.units import parse_memory

__all__ = [
    "ClusterSpec",
    "FunctionSpec",
    "PoolSpec",
    "check_name",
    "environ_hidden",
    # Re-exported for the modules that still import it from here (pools, providers/local).
    "format_bytes",
    "options_checked",
    "unknown_option",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

#: Names become directory names, which most file systems cap at 255 bytes.
MAX_NAME = 64


def check_name(name: Any) -> str:
    """A saved thing's name: letters, digits, '_', '-' or '.', not starting with a mark."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME:
        raise InvalidOptionError(
            "name",
            name,
            f"a name of at most {MAX_NAME} letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
        )
    return name


#: What other libraries (dask, Coiled) call an option, and the names it may have here.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("cores", "cpus", "ncores", "worker_cores"), ("cpu", "worker_cpu")),
    **dict.fromkeys(("memory_limit", "mem"), ("memory", "worker_memory")),
    **dict.fromkeys(("gpus", "worker_gpus"), ("gpu", "worker_gpu")),
    **dict.fromkeys(("nthreads", "threads"), ("threads_per_worker",)),
    "cpu": ("worker_cpu",),
    "memory": ("worker_memory",),
    "gpu": ("worker_gpu",),
    "env": ("environ",),
    "workers": ("n_workers",),
    "idle_timeout": ("keepalive",),
    "keepalive": ("idle_timeout",),
}


def unknown_option(
    where: str, given: Iterable[str], accepted: Iterable[str]
) -> UnknownOptionError | None:
    """The error for the first of ``given`` not ``accepted``, to raise; None if none is.

    It suggests the option the name most likely meant: the one it stands for
    elsewhere (``cores`` for ``cpu``), else the closest spelling.
    """
    options = list(accepted)
    for option in given:
        if option in options:
            continue
        likely = [name for name in _SYNONYMS.get(option, ()) if name in options]
        likely += difflib.get_close_matches(option, options, n=1)
        return UnknownOptionError(where, option, options, likely[0] if likely else None)
    return None


P = ParamSpec("P")
R = TypeVar("R")


def options_checked(
    where: str, unlisted: tuple[str, ...] = ()
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Check a callable's keyword arguments before the call.

    An unknown one is an :class:`UnknownOptionError` (see :func:`unknown_option`) that
    lists the options but ``unlisted``, instead of Python's bare ``TypeError``.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        parameters = inspect.signature(function).parameters
        listed = [name for name in parameters if name not in ("self", *unlisted)]

        @functools.wraps(function)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            __tracebackhide__ = True  # pytask, pytest and rich show the caller's line
            _rich_traceback_omit = True
            error = unknown_option(where, [key for key in kwargs if key not in parameters], listed)
            if error is not None:
                raise error
            return function(*args, **kwargs)

        return checked

    return decorate


def _positive_int(parameter: str, minimum: int) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidOptionError(parameter, value, f"an int >= {minimum}")

    return check


def parse_n_workers(value: Any, parameter: str = "n_workers") -> tuple[int, int] | None:
    """The one reading of ``n_workers``: ``N`` (a fixed size) or ``[min, max]``.

    A string from the command line, ``"4"`` or ``"0,4"``, reads the same. None stays
    None (the provider's default).
    """
    form = (
        "an int >= 0 for a fixed size, or [min, max] with 0 <= min <= max "
        "(on the command line N or MIN,MAX)"
    )
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if not all(part.isdigit() for part in parts):
            raise InvalidOptionError(parameter, given, form)
        value = [int(part) for part in parts]
        value = value[0] if len(value) == 1 else value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value) and (
            0 <= low <= high and (high >= 1 or low == high)
        ):
            return (low, high)
    raise InvalidOptionError(parameter, given, form)


_ENVIRON_FORM = "a dict of str to str"


def _environ(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None or value == ():
        return ()
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidOptionError("environ", _shown(value), _ENVIRON_FORM)
    for key, item in value.items():
        problem = _environ_problem(key, item)
        if problem:
            raise InvalidOptionError("environ", _shown(value), f"{_ENVIRON_FORM}; {problem}")
    return tuple(sorted(value.items()))


def _shown(value: Any) -> Any:
    # Values may be secrets: an error names the keys, and values only when not str.
    if not isinstance(value, Mapping):
        return value
    return {key: "***" if isinstance(item, str) else item for key, item in value.items()}


def _environ_problem(key: str, value: str) -> str:
    """Why the OS cannot hold ``key=value`` as an environment variable, or ''."""
    if not key:
        return "a name must not be empty"
    if "=" in key or "\0" in key:
        mark = "'='" if "=" in key else "NUL"
        return f"the name {key!r} holds {mark}, which names cannot"
    if "\0" in value:
        return f"the value of {key!r} holds NUL, which values cannot"
    return ""


def environ_hidden(environ: Mapping[str, Any] | tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Environment variables with their values hidden, for listings, reprs and messages."""
    return {key: "***" for key in dict(environ)}


def _redacted_repr(environ: tuple[tuple[str, str], ...]) -> str:
    return repr(tuple((key, "***") for key, _ in environ))


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    form = "None for no limit, or seconds > 0 as a number or a string like '30 s' or '500 ms'"
    try:
        seconds = parse_duration(value, "timeout")
    except InvalidOptionError:
        raise InvalidOptionError("timeout", value, form) from None
    if seconds <= 0:  # every call would time out
        raise InvalidOptionError("timeout", value, form)
    return seconds


def _optional_name(parameter: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidOptionError(parameter, value, "None or a non-empty name")

    return check


def _flag(parameter: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, bool):
            raise InvalidOptionError(parameter, value, "True or False")

    return check


@frozen(kw_only=True)
class PoolSpec:
    """The shape of a pool's workers and its scaling; equal specs share a pool."""

    #: A provider kind or profile; None is the default provider of the project.
    provider: str | None = None
    cpu: int = 1
    memory: int | None = None
    gpu: int = 0
    software: str | None = None
    threads_per_worker: int = 1
    n_workers: tuple[int, int] | None = None
    keepalive: float = 30.0
    #: The workers start with these variables set; only this pool's calls see them.
    environ: tuple[tuple[str, str], ...] = field(default=(), repr=_redacted_repr)
    dashboard: bool = False

    def describe(self) -> str:
        """A short label for summaries: ``cpu=1 memory=512 MiB n_workers=[0, 2]``."""
        parts = [f"cpu={self.cpu}"]
        if self.memory is not None:
            parts.append(f"memory={format_bytes(self.memory)}")
        if self.gpu:
            parts.append(f"gpu={self.gpu}")
        if self.software:
            parts.append(f"software={self.software}")
        if self.threads_per_worker != 1:
            parts.append(f"threads={self.threads_per_worker}")
        if self.n_workers is not None:
            parts.append(f"n_workers=[{self.n_workers[0]}, {self.n_workers[1]}]")
        if self.environ:
            parts.append(f"environ={','.join(key for key, _ in self.environ)}")
        if self.dashboard:
            parts.append("dashboard")
        return " ".join(parts)


@frozen(kw_only=True)
class FunctionSpec:
    """Every option of ``@taskcloud.function``, checked when the decorator is applied."""

    cpu: int = field(default=1, validator=_positive_int("cpu", 1))
    memory: int | None = field(
        default=None, converter=lambda v: None if v is None else parse_memory(v)
    )
    gpu: int = field(default=0, validator=_positive_int("gpu", 0))
    software: str | None = field(default=None, validator=_optional_name("software"))
    n_workers: tuple[int, int] | None = field(default=None, converter=parse_n_workers)
    keepalive: float = field(default=30.0, converter=lambda v: parse_duration(v, "keepalive"))
    environ: tuple[tuple[str, str], ...] = field(
        default=(), converter=_environ, repr=_redacted_repr
    )
    threads_per_worker: int = field(default=1, validator=_positive_int("threads_per_worker", 1))
    retries: int = field(default=1, validator=_positive_int("retries", 0))
    timeout: float | None = field(default=None, converter=_timeout)
    #: A kind or profile: its form is checked here, whether it exists where the
    #: decorator is applied (``taskcloud.function``) and where its pool starts.
    provider: str | None = field(default=None, validator=_optional_name("provider"))
    configuration: str | None = field(default=None, validator=_optional_name("configuration"))
    dashboard: bool = field(default=False, validator=_flag("dashboard"))
    cluster: str | None = field(default=None, validator=_optional_name("cluster"))

    def __attrs_post_init__(self) -> None:
        if self.cluster is None:
            return
        # The workers of a named cluster have the cluster's shape.
        if self.environ:
            raise InvalidOptionError(
                "environ",
                ", ".join(key for key, _ in self.environ),
                f"to be left out with cluster={self.cluster!r}: that cluster's workers "
                "are shared; set worker_options={'env': {...}} on the cluster instead",
            )
        for name, default in _SHAPE_DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                raise InvalidOptionError(
                    name,
                    value,
                    f"to be left out with cluster={self.cluster!r}: that cluster's "
                    "workers have its shape; set it on the cluster or its configuration",
                )

    def pool(self) -> PoolSpec:
        """The part of this spec that selects a pool."""
        return PoolSpec(
            provider=self.provider,
            cpu=self.cpu,
            memory=self.memory,
            gpu=self.gpu,
            software=self.software,
            threads_per_worker=self.threads_per_worker,
            n_workers=self.n_workers,
            keepalive=self.keepalive,
            environ=self.environ,
            dashboard=self.dashboard,
        )


#: The options that shape a pool, and their defaults: with ``cluster=``, none is given.
_SHAPE_DEFAULTS: dict[str, Any] = {
    "cpu": 1,
    "memory": None,
    "gpu": 0,
    "software": None,
    "n_workers": None,
    "keepalive": 30.0,
    "threads_per_worker": 1,
    "provider": None,
}


def _json_options(parameter: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    form = "a dict with str keys and JSON values (they travel to the cluster's process)"
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidOptionError(parameter, value, form)
    try:
        return dict(json.loads(json.dumps(dict(value))))
    except (TypeError, ValueError):
        raise InvalidOptionError(parameter, value, form) from None


def _class_path(value: Any) -> str:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, str) and _DOTTED.match(value):
        return value
    raise InvalidOptionError(
        "worker_class", value, "a class or its import path, e.g. 'distributed.Nanny'"
    )


_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


@frozen(kw_only=True)
class ClusterSpec:
    """Every option of ``taskcloud.Cluster`` that shapes its workers and scheduler.

    ``n_workers`` None means as many workers of the shape as the host fits.
    """

    n_workers: tuple[int, int] | None = field(default=None, converter=parse_n_workers)
    worker_cpu: int = field(default=1, validator=_positive_int("worker_cpu", 1))
    worker_memory: int | None = field(
        default=None, converter=lambda v: None if v is None else parse_memory(v, "worker_memory")
    )
    worker_gpu: int = field(default=0, validator=_positive_int("worker_gpu", 0))
    scheduler_cpu: int = field(default=1, validator=_positive_int("scheduler_cpu", 1))
    scheduler_memory: int | None = field(
        default=None,
        converter=lambda v: None if v is None else parse_memory(v, "scheduler_memory"),
    )
    software: str | None = field(default=None, validator=_optional_name("software"))
    worker_class: str = field(default="distributed.Nanny", converter=_class_path)
    worker_options: dict[str, Any] = field(
        factory=dict, converter=lambda v: _json_options("worker_options", v)
    )
    scheduler_options: dict[str, Any] = field(
        factory=dict, converter=lambda v: _json_options("scheduler_options", v)
    )
    idle_timeout: float = field(
        default=1200.0, converter=lambda v: parse_duration(v, "idle_timeout")
    )
    #: A kind or profile, resolved where the cluster is created (``Cluster``): a
    #: saved spec read in another directory keeps the name it was given.
    provider: str | None = field(default=None, validator=_optional_name("provider"))
    provider_options: dict[str, Any] = field(
        factory=dict, converter=lambda v: _json_options("provider_options", v)
    )

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON values, for the store and the cluster's process."""
        data = asdict(self)
        if self.n_workers is not None:
            low, high = self.n_workers
            data["n_workers"] = low if low == high else [low, high]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterSpec:
        return cls(**data)
