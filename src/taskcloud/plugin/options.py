"""The ``-n`` and ``--parallel-backend`` options, their configuration keys and checks.

When parallel execution is on, :func:`pytask_parse_config` registers a
:class:`~taskcloud.plugin.execution.ParallelExecution` for this session only, and
:func:`pytask_post_parse` makes sure its backend exists; for a build without it, a
:class:`~taskcloud.plugin.serial.SerialExecution`. Backends registered during a
session are forgotten when it ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from attrs import frozen
from pluggy import PluginManager
from pytask import hookimpl

from taskcloud.backends import Backend
from taskcloud.backends import ParallelBackend
from taskcloud.backends import backend_kind
from taskcloud.backends import backend_name
from taskcloud.backends import is_auto
from taskcloud.backends import parse_n_workers
from taskcloud.backends import parse_parallel_options
from taskcloud.backends import registry
from taskcloud.errors import BackendNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.extensions import load_extensions
from taskcloud.plugin import early
from taskcloud.plugin.execution import ParallelExecution
from taskcloud.plugin.serial import SerialExecution

_EXECUTION = "taskcloud-parallel"
_SCOPE = "taskcloud-registry-scope"


class _NWorkers(click.ParamType):
    name = "n_workers"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        """An integer >= 1, or ``"auto"`` as given: auto turns parallel execution on."""
        try:
            count = parse_n_workers(value)
        except InvalidOptionError as exc:
            self.fail(str(exc), param, ctx)
        return "auto" if is_auto(value) else count


class _BackendName(click.ParamType):
    name = "backend"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return backend_name(value)
        except InvalidOptionError as exc:
            self.fail(str(exc), param, ctx)


@frozen
class _RegistryScope:
    """The backends registered before this session; the registry returns to them
    when it ends, as pytask-parallel forgets those that task modules registered."""

    saved: Mapping[ParallelBackend | str, Backend]

    @hookimpl
    def pytask_unconfigure(self) -> None:
        registry.restore(self.saved)


@hookimpl
def pytask_add_hooks(pm: PluginManager) -> None:
    """Note the registered backends as the session starts, before hook modules load."""
    pm.register(_RegistryScope(registry.checkpoint()), name=_SCOPE)


@hookimpl
def pytask_extend_command_line_interface(cli: click.Group) -> None:
    """Add ``-n/--n-workers`` and ``--parallel-backend`` to ``pytask build``."""
    cli.commands["build"].params.extend(
        [
            click.Option(
                ["-n", "--n-workers"],
                type=_NWorkers(),
                default=1,
                metavar="[INTEGER|auto]",
                help=(
                    "How many tasks run at once. 'auto' is the number of cores - 1, at "
                    "least 1, and always runs tasks in parallel."
                ),
            ),
            click.Option(
                ["--parallel-backend"],
                type=_BackendName(),
                default=None,
                show_default=False,
                metavar="NAME",
                help=(
                    "Where tasks run: none, loky, processes, threads, dask, custom or "
                    "any registered name. Without it: loky when -n is above 1 or auto, "
                    "else none."
                ),
            ),
        ]
    )


@hookimpl(trylast=True)
def pytask_parse_config(config: dict[str, Any]) -> None:
    """Validate ``n_workers`` and ``parallel_backend`` from any source; for a build
    with parallel execution, register it and start its workers.

    The workers start here, the first moment the configuration is known, so that
    they boot while pytask finishes configuring and collects the tasks; a loky pool
    that :mod:`~taskcloud.plugin.early` started from the command line is kept for
    the build or stopped.
    """
    __tracebackhide__ = True
    n_workers, name = parse_parallel_options(
        config.get("n_workers"), config.get("parallel_backend")
    )
    # As pytask-parallel: the member where there is one, which equals its name.
    config["n_workers"], config["parallel_backend"] = n_workers, backend_kind(name)
    parallel = _runs_in_parallel(config)
    started = early.take(config, parallel)
    if parallel:
        execution = ParallelExecution(name, n_workers)
        config["pm"].register(execution, name=_EXECUTION)
        # A built-in backend's workers start before the extensions load (scanning
        # the installed packages takes tens of milliseconds); an extension that
        # replaces a built-in name gets its own executor built at execution instead.
        execution.start(ready=started)
        load_extensions(registry)
    elif config.get("command") == "build":
        config["pm"].register(SerialExecution(), name="taskcloud-serial")


@hookimpl(trylast=True)
def pytask_post_parse(config: dict[str, Any]) -> None:
    """Fail the configuration for a backend name that nothing registered.

    By now the installed extensions, the hook modules and whatever ran before
    ``pytask.build`` had their chance. ``custom`` and the other ``ParallelBackend``
    names may still be registered by a task module, as pytask-parallel documents.
    """
    __tracebackhide__ = True
    execution = config["pm"].get_plugin(_EXECUTION)
    if execution is None or execution.backend in registry:
        return
    if isinstance(backend_kind(execution.backend), ParallelBackend):
        return
    error = BackendNotFoundError(execution.backend, registry.names())
    # pytask skips pytask_unconfigure after a failed configuration.
    scope = config["pm"].get_plugin(_SCOPE)
    if scope is not None:
        scope.pytask_unconfigure()
    raise error


def _runs_in_parallel(config: dict[str, Any]) -> bool:
    """Parallel execution is on for builds, unless off or a debugger needs one process.

    ``pytask collect``, ``clean``, ``markers`` and ``dag`` read the same configuration
    but run no task.
    """
    if config.get("command") != "build":
        return False
    if config["parallel_backend"] == ParallelBackend.NONE:
        return False
    return not any(config.get(key) for key in ("pdb", "trace", "dry_run", "explain"))
