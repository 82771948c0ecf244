"""The ``-n``, ``--parallel-backend`` and ``--provider`` options, their configuration
keys and checks.

When parallel execution is on, :func:`pytask_parse_config` registers a
:class:`~taskcloud.plugin.execution.ParallelExecution` for this session only, and
:func:`pytask_post_parse` makes sure its backend exists; for a build without it, a
:class:`~taskcloud.plugin.serial.SerialExecution`. Backends registered during a
session are forgotten when it ends.

``--provider NAME`` (a provider kind or profile; the command line only, since a
project's default lives in ``[tool.taskcloud]``) is checked with the configuration and
is the default provider from :func:`pytask_post_parse` until the session ends; so is
pytask's project root the project whose ``pyproject.toml`` profiles are read from.
"""

from __future__ import annotations

from collections.abc import Generator
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from _pytask.config_utils import read_config
from attrs import frozen
from pluggy import PluginManager
from pytask import hookimpl
from rich.markup import escape

from taskcloud import profiles
from taskcloud.backends import Backend
from taskcloud.backends import ParallelBackend
from taskcloud.backends import backend_kind
from taskcloud.backends import backend_name
from taskcloud.backends import is_auto
from taskcloud.backends import parse_parallel_options
from taskcloud.backends import registry
from taskcloud.backends import workers_for_n
from taskcloud.errors import BackendNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.extensions import load_extensions
from taskcloud.plugin import early
from taskcloud.plugin.execution import ParallelExecution
from taskcloud.plugin.serial import SerialExecution
from taskcloud.providers import kinds as providers

_EXECUTION = "taskcloud-parallel"
_SCOPE = "taskcloud-registry-scope"
_PROVIDER = "taskcloud-provider"


class _NWorkers(click.ParamType):
    name = "n_workers"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        """An integer >= 1, or ``"auto"`` as given: auto turns parallel execution on."""
        try:
            count = workers_for_n(value)
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


class _ProviderChoice:
    """``--provider`` and the project root, in force from the end of the configuration
    until the session ends."""

    def __init__(self, name: str | None, root: Path | None) -> None:
        self._scope = ExitStack()
        self._scope.enter_context(profiles.overriding(name, root))

    @hookimpl
    def pytask_unconfigure(self) -> None:
        self._scope.close()


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
            click.Option(
                ["--provider"],
                default=None,
                metavar="NAME",
                help=(
                    # pytask renders help as rich markup: the table's brackets are escaped.
                    "Where decorated tasks that name no provider run, for this run: a "
                    'provider kind or a profile. Without it: provider = "NAME" of '
                    f"{escape('[tool.taskcloud]')} in pyproject.toml, else local."
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
    _check_provider(config)
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
    if execution is not None and not _backend_known(execution.backend):
        error = BackendNotFoundError(execution.backend, registry.names())
        # pytask skips pytask_unconfigure after a failed configuration: what it would
        # end there ends here, its capture (which its own post_parse started) too.
        _forget_registrations(config)
        capture = config["pm"].get_plugin("capturemanager")
        if capture is not None:
            capture.stop_capturing()
        raise error
    if config.get("command") == "build":
        choice = _ProviderChoice(config.get("provider"), config.get("root"))
        config["pm"].register(choice, name=_PROVIDER)


@hookimpl(wrapper=True)
def pytask_configure(pm: PluginManager) -> Generator[None, dict[str, Any], dict[str, Any]]:
    """End ``--provider``'s choice when a later part of the configuration fails: pytask
    skips pytask_unconfigure then."""
    __tracebackhide__ = True  # a configuration error is its message alone
    try:
        return (yield)
    except BaseException:
        choice = pm.get_plugin(_PROVIDER)
        if choice is not None:
            choice.pytask_unconfigure()
        raise


def _backend_known(backend: str) -> bool:
    return backend in registry or isinstance(backend_kind(backend), ParallelBackend)


def _forget_registrations(config: dict[str, Any]) -> None:
    scope = config["pm"].get_plugin(_SCOPE)
    if scope is not None:
        scope.pytask_unconfigure()


def _check_provider(config: dict[str, Any]) -> None:
    """Fail the configuration for a ``--provider`` that is no kind or profile, or that
    pytask's configuration file sets; stop an early pool first."""
    __tracebackhide__ = True
    name = config.get("provider")
    if name is None:
        return
    try:
        _refuse_in_configuration_file(config, name)
        providers.resolve(name, start=config.get("root"))
    except InvalidOptionError as exc:
        early.take(config, parallel=False)
        _forget_registrations(config)
        # The message says it all; the frames that found it are taskcloud's.
        raise exc.with_traceback(None) from None


def _refuse_in_configuration_file(config: dict[str, Any], name: str) -> None:
    path = config.get("config")
    if path is None or "provider" not in read_config(Path(path)):
        return
    raise InvalidOptionError(
        "provider",
        name,
        f"given on the command line only (--provider NAME), not in {path}; a project's "
        'default provider is provider = "NAME" in [tool.taskcloud] of pyproject.toml',
    )


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
