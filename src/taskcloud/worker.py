"""What runs inside a worker: a ``@taskcloud.function`` call, or a pytask task's call.

:func:`invoke` runs one call of a decorated function on a pool's worker. A
function's ``environ`` is no concern of a call: its pool's workers start with it set
(see :class:`~taskcloud.specs.PoolSpec`), so that no other function's call, on any
thread, sees it. :func:`environ_set` is for serial pytask runs, which call one task
at a time in pytask's own process.

:func:`run_call` (and :func:`run_serialized`, :func:`run_batch`) run one
:class:`~taskcloud.call.TaskCall`. A worker is a thread of pytask's own process (the
threads backend) or a thread of another process (loky, processes, dask). In both
cases several calls may run at once in one process, so output, warnings and
breakpoints are routed per thread instead of swapping ``sys.stdout`` or entering
``warnings.catch_warnings``, which are global.

Workers import this module to unpickle their work, so it stays light: pytask is never
imported here and rich only when a traceback has to be rendered.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from typing import TextIO

import cloudpickle

from taskcloud.call import CallOutcome
from taskcloud.call import RemoteFile
from taskcloud.call import RenderedTraceback
from taskcloud.call import RenderOptions
from taskcloud.call import TaskCall
from taskcloud.call import WarningFilter
from taskcloud.errors import BreakpointError
from taskcloud.errors import RemoteTaskError
from taskcloud.errors import SerializationError
from taskcloud.frames import visible

__all__ = [
    "environ_set",
    "interceptor",
    "invoke",
    "run_batch",
    "run_call",
    "run_serialized",
    "warm",
    "warm_up",
]

_BREAKPOINT_ADVICE = "Run pytask without -n, or with --pdb or --trace, to debug this task."


class _ThreadStream(io.TextIOBase):
    """Writes to the buffer of the call the current thread runs, else to the stream."""

    def __init__(self, fallback: TextIO, local: threading.local, attr: str) -> None:
        self._fallback = fallback
        self._local = local
        self._attr = attr

    def _target(self) -> TextIO:
        return getattr(self._local, self._attr, None) or self._fallback

    def write(self, text: str) -> int:
        buffer = getattr(self._local, self._attr, None)
        if buffer is not None:
            buffer.write(text)
        if buffer is None or getattr(self._local, "live", False):
            self._fallback.write(text)
            if getattr(self._local, "live", False):
                # Shown as the task runs, as with pytask -s, not when a buffer fills.
                self._fallback.flush()
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "encoding", "utf-8")


class _Record:
    """What one call wrote and warned."""

    def __init__(self, capture: bool) -> None:
        self.stdout = io.StringIO() if capture else None
        self.stderr = io.StringIO() if capture else None
        self.warnings: list[tuple[str, str, int]] = []


class _Interceptor:
    """Routes each thread's output, warnings and breakpoints to the call it runs.

    One instance per process, because what it patches (``sys.stdout``,
    ``warnings.showwarning``, ``sys.breakpointhook``) is one per process.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._saved: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def install(self) -> None:
        import pdb

        with self._lock:
            if self._saved is not None:
                return
            self._saved = {
                "stdout": sys.stdout,
                "stderr": sys.stderr,
                "showwarning": warnings.showwarning,
                "filters": list(warnings.filters),
                "breakpointhook": sys.breakpointhook,
                "set_trace": pdb.set_trace,
            }
            sys.stdout = _ThreadStream(sys.stdout, self._local, "stdout")
            sys.stderr = _ThreadStream(sys.stderr, self._local, "stderr")
            warnings.showwarning = self._showwarning
            # Every warning reaches _showwarning, which applies each call's filters.
            warnings.simplefilter("always")
            sys.breakpointhook = self._breakpoint
            pdb.set_trace = self._set_trace

    def uninstall(self) -> None:
        import pdb

        with self._lock:
            if self._saved is None:
                return
            saved, self._saved = self._saved, None
            sys.stdout, sys.stderr = saved["stdout"], saved["stderr"]
            warnings.showwarning = saved["showwarning"]
            warnings.filters[:] = saved["filters"]  # type: ignore[index]
            warnings._filters_mutated()  # type: ignore[attr-defined]
            sys.breakpointhook = saved["breakpointhook"]
            pdb.set_trace = saved["set_trace"]

    @contextmanager
    def capturing(self, call: TaskCall) -> Iterator[_Record]:
        record = _Record(call.capture)
        local = self._local
        saved = self._saved or {}
        local.stdout, local.stderr = record.stdout, record.stderr
        local.live = call.live
        local.warnings = record.warnings
        local.filters = _compile(call.filters) + tuple(saved.get("filters", ()))
        try:
            yield record
        finally:
            local.stdout = local.stderr = local.warnings = None
            local.live = False

    def _showwarning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        record = getattr(self._local, "warnings", None)
        if record is None:
            saved = self._saved or {}
            fallback = saved.get("showwarning") or warnings._showwarning_orig  # type: ignore[attr-defined]
            fallback(message, category, filename, lineno, file, line)
            return
        action = _action(self._local.filters, message, category, filename, lineno)
        if action == "ignore":
            return
        if action == "error":
            raise message if isinstance(message, Warning) else category(message)
        text = warnings.formatwarning(message, category, filename, lineno, line)
        record.append((text, filename, lineno))

    def _in_call(self) -> bool:
        return getattr(self._local, "warnings", None) is not None

    def _breakpoint(self, *args: Any, **kwargs: Any) -> Any:
        if self._in_call():
            raise BreakpointError(_BREAKPOINT_ADVICE)
        return (self._saved or {})["breakpointhook"](*args, **kwargs)

    def _set_trace(self, *args: Any, **kwargs: Any) -> Any:
        if self._in_call():
            raise BreakpointError(_BREAKPOINT_ADVICE)
        return (self._saved or {})["set_trace"](*args, **kwargs)


_CompiledFilter = tuple[str, Any, type, Any, int]


def _compile(filters: tuple[WarningFilter, ...]) -> tuple[_CompiledFilter, ...]:
    """Compile filters like ``warnings.filterwarnings``; later ones take precedence."""
    compiled = [
        (
            action,
            re.compile(message, re.I) if message else None,
            category,
            re.compile(module) if module else None,
            lineno,
        )
        for action, message, category, module, lineno in filters
    ]
    return tuple(reversed(compiled))


def _action(
    filters: tuple[_CompiledFilter, ...],
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
) -> str:
    text = str(message)
    module = Path(filename).stem
    for action, msg, cat, mod, line in filters:
        if (
            (msg is None or msg.match(text))
            and issubclass(category, cat)
            and (mod is None or mod.match(module))
            and line in (0, lineno)
        ):
            return str(action)
    return "default"


#: Process-wide, like the streams and hooks it patches.
_INTERCEPTOR = _Interceptor()


def interceptor() -> _Interceptor:
    """Return this process's interceptor."""
    return _INTERCEPTOR


def _materialize(value: Any, workdir: str, products: dict[int, Path]) -> Any:
    """Write travelling files into ``workdir`` and replace them by their paths."""
    if isinstance(value, RemoteFile):
        path = Path(workdir, str(value.key), value.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if value.content is None:
            products[value.key] = path
        else:
            path.write_bytes(value.content)
        return path
    if isinstance(value, dict):
        return {k: _materialize(v, workdir, products) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_materialize(v, workdir, products) for v in value)
    return value


def run_call(call: TaskCall) -> CallOutcome:
    """Run ``call`` in this thread and report what happened; never raises."""
    _INTERCEPTOR.install()
    workdir = tempfile.mkdtemp(prefix="taskcloud-") if call.has_files else None
    products: dict[int, Path] = {}
    kwargs = _materialize(call.kwargs, workdir, products) if workdir else call.kwargs
    value = exc_info = None
    with _INTERCEPTOR.capturing(call) as record:
        start = time.time()
        try:
            value = call.function(**kwargs)
        except (Exception, SystemExit) as exc:
            exc_info = (type(exc), exc, visible(exc.__traceback__))
        end = time.time()
    files = {key: path.read_bytes() for key, path in products.items() if path.is_file()}
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return CallOutcome(
        value=value if call.wants_return else None,
        exc_info=exc_info,
        stdout=record.stdout.getvalue() if record.stdout else "",
        stderr=record.stderr.getvalue() if record.stderr else "",
        warnings=tuple(record.warnings),
        files=files,
        start=start,
        end=end,
        where=f"pid {os.getpid()}",
        carried=tuple(getattr(node, "value", None) for node in call.carried),
    )


def run_serialized(blob: bytes) -> bytes:
    """Run a cloudpickled call in this process and return its cloudpickled outcome.

    Pickling happens here and in the dispatcher rather than in the executor, so
    functions from task modules outside any package travel by value on every
    backend, dask included (dask would pickle them by reference).
    """
    call: TaskCall = pickle.loads(blob)
    outcome = run_call(call)
    if outcome.exc_info is not None:
        outcome = _with_rendered_traceback(outcome, call.render)
    return _dumps(outcome, call.name)


def run_batch(blob: bytes, budget: float) -> bytes:
    """Run several cloudpickled calls one after another; return their outcomes.

    Once the batch has run for ``budget`` seconds it starts no further call: the
    outcomes list is then shorter than the calls, and the dispatcher sends the rest
    again. Each call and each outcome is pickled on its own, so a return value that
    cannot be pickled fails only its own task.
    """
    calls: list[bytes] = pickle.loads(blob)
    outcomes = []
    start = time.monotonic()
    for call in calls:
        outcomes.append(run_serialized(call))
        if time.monotonic() - start >= budget:
            break
    return pickle.dumps(outcomes)


def warm_up() -> int:
    """Run in a fresh worker so its first real call finds everything imported."""
    _INTERCEPTOR.install()
    return os.getpid()


def warm(executor: Executor, n_workers: int) -> None:
    """Have each of the ``n_workers`` workers of a process pool run :func:`warm_up`."""
    for _ in range(n_workers):
        executor.submit(warm_up)


def _with_rendered_traceback(outcome: CallOutcome, options: RenderOptions) -> CallOutcome:
    etype, exc, tb = outcome.exc_info  # type: ignore[misc]
    text = _render(etype, exc, tb, options)
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:
        exc = RemoteTaskError(etype.__qualname__, str(exc))
        etype = RemoteTaskError
    return replace(outcome, exc_info=(etype, exc, text))


def _render(
    etype: type[BaseException], exc: BaseException, tb: Any, options: RenderOptions
) -> RenderedTraceback:
    from rich.console import Console
    from rich.traceback import Traceback

    console = Console(
        file=io.StringIO(),
        width=options.width,
        color_system=options.color_system,  # type: ignore[arg-type]
        force_terminal=options.color_system is not None,
        highlight=False,
    )
    console.print(Traceback.from_exception(etype, exc, tb, show_locals=options.show_locals))
    return RenderedTraceback(console.file.getvalue())  # type: ignore[attr-defined]


def _dumps(outcome: CallOutcome, name: str) -> bytes:
    try:
        return cloudpickle.dumps(outcome)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    error = RemoteTaskError(
        "PicklingError",
        f"the return value of task {name!r} cannot be sent back from the worker ({reason}).",
    )
    failed = replace(outcome, value=None, exc_info=(RemoteTaskError, error, None))
    return cloudpickle.dumps(failed)


@contextmanager
def environ_set(environ: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Set ``environ`` in ``os.environ`` for the block, then restore what was there.

    The whole process sees the change: use it only where nothing else runs meanwhile.
    """
    saved = {key: os.environ.get(key) for key, _ in environ}
    os.environ.update(dict(environ))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _no_debugger(*args: Any, **kwargs: Any) -> None:
    raise BreakpointError("Call the function's .local() to run it in this process and debug it.")


@functools.cache
def _guard_debuggers() -> None:
    """A worker has no terminal for a debugger: breakpoint() fails, saying so.

    Once per worker process; pytask's calls add their own advice on top.
    """
    import pdb

    sys.breakpointhook = _no_debugger
    pdb.set_trace = _no_debugger


@functools.lru_cache(maxsize=32)
def _load_function(blob: bytes) -> tuple[str, Any]:
    # A map sends one function with many arguments; unpickle it once per worker.
    return pickle.loads(blob)


def _dumps_result(value: Any) -> bytes:
    # The C pickler is several times faster; cloudpickle handles what it cannot,
    # such as instances of classes defined in a task module that travelled by value.
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value)


def invoke(function_blob: bytes, arguments_blob: bytes) -> bytes:
    """Run a pickled call; return its pickled result."""
    _guard_debuggers()
    name, function = _load_function(function_blob)
    args, kwargs = pickle.loads(arguments_blob)
    result = function(*args, **kwargs)
    try:
        return _dumps_result(result)
    except Exception as exc:
        raise SerializationError("return value", name, f"{type(exc).__name__}: {exc}") from None
