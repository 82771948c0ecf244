"""The ``-n`` and ``--parallel-backend`` options, their configuration keys and checks.

When parallel execution is on, :func:`pytask_parse_config` registers a
:class:`~taskcloud.plugin.dispatch.ParallelExecution` for this session only; for a
build without it, a :class:`~taskcloud.plugin.serial.SerialExecution`.
"""

from __future__ import annotations

from typing import Any

import click
from pytask import hookimpl

from taskcloud.backends import ParallelBackend
from taskcloud.backends import backend_name
from taskcloud.backends import parse_n_workers
from taskcloud.backends import registry
from taskcloud.errors import InvalidOptionError
from taskcloud.extensions import load_extensions
from taskcloud.plugin import early
from taskcloud.plugin.dispatch import ParallelExecution
from taskcloud.plugin.serial import SerialExecution


class _NWorkers(click.ParamType):
    name = "n_workers"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            return parse_n_workers(value)
        except InvalidOptionError as exc:
            self.fail(str(exc), param, ctx)


class _BackendName(click.ParamType):
    name = "backend"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return backend_name(value)
        except InvalidOptionError as exc:
            self.fail(str(exc), param, ctx)


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
                help="How many tasks run at once. 'auto' is the number of cores - 1.",
            ),
            click.Option(
                ["--parallel-backend"],
                type=_BackendName(),
                default=ParallelBackend.NONE.value,
                metavar="NAME",
                help=(
                    "Where tasks run: none, loky, processes, threads, dask, custom or "
                    "any registered name. Defaults to loky when -n is above 1."
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
    config["n_workers"] = parse_n_workers(config.get("n_workers", 1))
    backend = config.get("parallel_backend") or ParallelBackend.NONE
    config["parallel_backend"] = backend_name(backend)
    if config["n_workers"] > 1 and config["parallel_backend"] == "none":
        config["parallel_backend"] = ParallelBackend.LOKY.value
    parallel = _runs_in_parallel(config)
    started = early.settle(config, parallel)
    if parallel:
        execution = ParallelExecution(config["parallel_backend"], config["n_workers"])
        config["pm"].register(execution, name="taskcloud-parallel")
        # A built-in backend's workers start before the extensions load (scanning
        # the installed packages takes tens of milliseconds); an extension that
        # replaces a built-in name gets its own executor built at execution instead.
        execution.start(ready=started)
        load_extensions(registry)
    elif config.get("command") == "build":
        config["pm"].register(SerialExecution(), name="taskcloud-serial")


def _runs_in_parallel(config: dict[str, Any]) -> bool:
    """Parallel execution is on for builds, unless off or a debugger needs one process.

    ``pytask collect``, ``clean``, ``markers`` and ``dag`` read the same configuration
    but run no task.
    """
    if config.get("command") != "build":
        return False
    if config["parallel_backend"] == ParallelBackend.NONE.value:
        return False
    return not any(config.get(key) for key in ("pdb", "trace", "dry_run", "explain"))


@hookimpl
def pytask_unconfigure() -> None:
    """Forget backends registered during this session, as pytask-parallel does."""
    registry.reset()
