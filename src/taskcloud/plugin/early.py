"""The early start: loky's workers boot while pytask itself is still starting.

loky's workers are fresh interpreters; each needs a few tenths of a second of CPU
before it runs a first task. pytask imports this plugin well before it parses its
command line, so when the ``pytask`` command line and the configuration file ask for a
build on loky, :func:`start` starts that pool at import. Once pytask has parsed the
options, :meth:`EarlyPool.take` hands the pool to the build, or stops it when
pytask parsed something else.

Only the ``pytask`` command itself starts early: called from Python, or with any
option read here that this cannot make sense of, pytask starts its workers as it
always does, once the configuration is known.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from attrs import define

from taskcloud import worker
from taskcloud.backends import ParallelBackend
from taskcloud.backends import build_loky_executor
from taskcloud.backends import parse_parallel_options
from taskcloud.errors import InvalidOptionError

__all__ = ["PLUGIN", "EarlyPool", "requested_workers", "start", "take"]

#: Options read from the command line, by each of their spellings.
_OPTIONS = {
    "-n": "n_workers",
    "--n-workers": "n_workers",
    "--parallel-backend": "parallel_backend",
    "-c": "config",
    "--config": "config",
}
#: Configuration keys, and below flags, that make pytask run no task, or run them one
#: by one in this process.
_SERIAL = ("pdb", "trace", "dry_run", "explain")
_NO_BUILD = {"-h", "--help", "--version", "--pdb", "--trace", "--dry-run", "--explain"}

#: The name under which the early pool is registered with pytask's plugin manager.
PLUGIN = "taskcloud-early-pool"


@define
class EarlyPool:
    """The loky pool started as pytask loaded the plugin, until the build takes it."""

    n_workers: int
    executor: Executor | None

    def take(self, config: dict[str, Any], parallel: bool) -> Executor | None:
        """The pool, for a build on as many loky workers as it has; else stop it.

        Either way it is handed out once only.
        """
        executor, self.executor = self.executor, None
        if executor is None:
            return None
        wanted = parallel and config["parallel_backend"] == ParallelBackend.LOKY.value
        if wanted and config["n_workers"] == self.n_workers:
            return executor
        executor.shutdown(wait=False, kill_workers=True)  # type: ignore[call-arg]
        return None


def start(argv: Sequence[str] | None = None) -> EarlyPool | None:
    """Start the loky pool that the command line ``argv`` asks for, if it asks for one.

    Anything that goes wrong here is left for the regular start to report.
    """
    try:
        n_workers = requested_workers(_command_line() if argv is None else argv)
        if n_workers is None:
            return None
        executor = build_loky_executor(n_workers)
        worker.warm(executor, n_workers)
    except Exception:
        return None
    return EarlyPool(n_workers, executor)


def take(config: dict[str, Any], parallel: bool) -> Executor | None:
    """The early pool registered with this session's plugin manager, for this build."""
    pool = config["pm"].get_plugin(PLUGIN)
    return pool.take(config, parallel) if isinstance(pool, EarlyPool) else None


def requested_workers(argv: Sequence[str]) -> int | None:
    """The number of loky workers that a ``pytask`` command line asks for.

    None unless ``argv`` runs the ``pytask`` command for a build on loky (``-n`` above
    one or ``auto`` and no other backend, or loky named, from the command line or the
    configuration file), with no flag that makes pytask run tasks serially or not at
    all. An explicit ``none`` starts nothing.
    """
    if not argv or not _is_pytask(argv[0]):
        return None
    args = list(argv[1:])
    if args and args[0] == "build":
        args = args[1:]
    elif args and not args[0].startswith("-") and not Path(args[0]).exists():
        return None  # another command, such as ``pytask collect``
    given = _read_options(args)
    if given is None:
        return None
    from_file = _configuration(given.get("config"))
    if from_file is None or any(from_file.get(key) for key in _SERIAL):
        return None
    values = from_file | given
    try:
        n_workers, backend = parse_parallel_options(
            values.get("n_workers"), values.get("parallel_backend")
        )
    except InvalidOptionError:
        return None
    return n_workers if backend == ParallelBackend.LOKY else None


def _command_line() -> list[str]:
    """``sys.argv``, also while ``python -m pytask`` imports the pytask package.

    Until the package is imported, ``sys.argv[0]`` is ``-m``; the interpreter's own
    command line says which module runs.
    """
    if sys.argv[:1] != ["-m"]:
        return sys.argv
    original = sys.orig_argv
    runs = [original[i + 1] for i, arg in enumerate(original[:-1]) if arg == "-m"]
    return ["pytask", *sys.argv[1:]] if runs[:1] == ["pytask"] else []


def _is_pytask(program: str) -> bool:
    path = Path(program)
    return path.stem == "pytask" or path.parts[-2:] == ("pytask", "__main__.py")


def _read_options(args: list[str]) -> dict[str, str] | None:
    """The options of :data:`_OPTIONS` in ``args``; None for a flag of ``_NO_BUILD``."""
    given: dict[str, str] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        if token in _NO_BUILD:
            return None
        name, equals, value = token.partition("=")
        if name in _OPTIONS:
            given[_OPTIONS[name]] = value if equals else next(tokens, "")
        elif token.startswith("-n") and not token.startswith("--"):
            given["n_workers"] = token[2:]
    return given


def _configuration(path: str | None) -> dict[str, Any] | None:
    """What pytask will read from its configuration file; None if that is unreadable."""
    try:
        from _pytask.config_utils import find_project_root_and_config
        from _pytask.config_utils import read_config

        if path:
            found: Path | None = Path(path)
        else:
            _, found = find_project_root_and_config([Path.cwd()])
        return dict(read_config(found)) if found else {}
    except Exception:
        return None
