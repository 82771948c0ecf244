"""How functions and their arguments travel to workers.

pytask imports task modules from their paths, often outside any package, under names
that a worker cannot import, or can import only with pytask's changes to
``sys.path``. Such modules are pickled by value with cloudpickle, and a function
travels as a bare copy, without the attributes (pytask's metadata, annotations) a
worker does not need. Pickling happens here rather than in dask, which would pickle a
function by reference.

What travels by reference (installed packages, and modules that a task module imports
through ``sys.path``, such as a ``helpers.py`` next to it whose folder it put on
``sys.path``) is imported by the worker as it unpickles. A worker gets its parent's
``sys.path`` as it starts, and may have started before the entries that make such a
module importable were added: each pickle made here therefore carries the entries
added to ``sys.path`` since start, and puts them on the worker's ``sys.path`` before
anything else in it is unpickled. The worker imports such modules as the parent did,
by name, from the same files.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import sys
import types
from collections import ChainMap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from taskcloud.errors import SerializationError

__all__ = ["dumps", "dumps_arguments", "dumps_function", "ship"]

_BY_VALUE: set[str] = set()


def _entry(path: str) -> str:
    return os.path.abspath(path or os.curdir)


#: ``sys.path`` as this module was imported, before taskcloud starts any worker:
#: loky, multiprocessing and dask's nannies give a process its parent's ``sys.path``
#: as it starts, so every worker has at least these entries.
_STARTUP_PATH = frozenset(_entry(path) for path in sys.path)


#: The last ``sys.path`` (and working directory, which relative entries name) seen and
#: what it added: every call's pickle asks.
_ADDED: tuple[tuple[str, ...], tuple[tuple[int, str], ...]] = ((), ())


def _added_path() -> tuple[tuple[int, str], ...]:
    """The entries added to ``sys.path`` since start, each with its index, absolute."""
    global _ADDED
    now = (os.getcwd(), *sys.path)
    seen, added = _ADDED
    if now != seen:
        entries = ((index, _entry(path)) for index, path in enumerate(sys.path))
        added = tuple((index, entry) for index, entry in entries if entry not in _STARTUP_PATH)
        _ADDED = (now, added)
    return added


def _on_path(entries: tuple[tuple[int, str], ...]) -> None:
    """Put each of ``entries`` this process's ``sys.path`` lacks at its index there."""
    for index, entry in entries:
        if entry not in sys.path:
            sys.path.insert(index, entry)


class _OnPath:
    """Unpickles as None, having put its entries on ``sys.path``."""

    def __init__(self, entries: tuple[tuple[int, str], ...]) -> None:
        self.entries = entries

    def __reduce__(self) -> tuple[Any, ...]:
        return _on_path, (self.entries,)


def _second(_: None, value: Any) -> Any:
    return value


class _AfterPath:
    """Unpickles as ``value``, loaded once ``entries`` are on ``sys.path``.

    Pickle builds a call's arguments in order: the first puts the entries on
    ``sys.path``, then the second, the value, is unpickled, importing what it needs.
    """

    def __init__(self, entries: tuple[tuple[int, str], ...], value: Any) -> None:
        self.entries = entries
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return _second, (_OnPath(self.entries), self.value)


def _carrying_path(value: Any) -> Any:
    """``value``, to pickle with the entries added to ``sys.path`` since start, if any."""
    entries = _added_path()
    return _AfterPath(entries, value) if entries else value


def ship(function: Callable[..., Any], source: Path | None = None) -> Callable[..., Any]:
    """Return a copy of ``function`` that pickles small, its module by value if needed.

    ``source`` is the file the caller knows the function from (a pytask task module);
    that module always travels by value.
    """
    module = inspect.getmodule(function)
    if (
        module is not None
        and module.__name__ not in _BY_VALUE
        and (_is_file(module, source) or not _importable(module))
    ):
        cloudpickle.register_pickle_by_value(module)
        _BY_VALUE.add(module.__name__)
    return _bare(function) if isinstance(function, types.FunctionType) else function


def _code_at(rebuild: Callable[..., types.CodeType], args: tuple[Any, ...], filename: str) -> Any:
    """Unpickle a code object as cloudpickle does, then give it back its file name."""
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    # Code objects nested in co_consts (inner functions, comprehensions) come through
    # here as well. Restoring costs one code.replace per code object on arrival;
    # a worker caches the functions it unpickled for a pool's calls.
    rebuild, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)[:2]
    return _code_at, (rebuild, args, code.co_filename)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, except that code keeps its file name."""

    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)


def dumps(value: Any) -> bytes:
    """Pickle ``value`` with cloudpickle; code pickled by value keeps its file name.

    The pickle carries the entries added to ``sys.path`` since start (see above).
    """
    with io.BytesIO() as file:
        _Pickler(file).dump(_carrying_path(value))
        return file.getvalue()


def dumps_function(name: str, function: Callable[..., Any]) -> bytes:
    """Pickle a function (and its name, for messages) to send to workers."""
    try:
        return dumps((name, ship(function)))
    except Exception as exc:
        raise SerializationError("function", name, f"{type(exc).__name__}: {exc}") from None


def dumps_arguments(
    name: str, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """Pickle a call's arguments; one that cannot be pickled is named in the error."""
    try:
        return cloudpickle.dumps(_carrying_path((args, kwargs)))
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    for label, value in _labelled(function, args, kwargs):
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            raise SerializationError(label, name, f"{type(exc).__name__}: {exc}") from None
    raise SerializationError("arguments", name, failure)


def _labelled(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[str, Any]]:
    try:
        bound = inspect.signature(function).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"#{i}": value for i, value in enumerate(args)} | kwargs
    return [(f"argument {key!r}", value) for key, value in bound.items()]


def _bare(function: types.FunctionType) -> types.FunctionType:
    copy = types.FunctionType(
        function.__code__,
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__module__ = function.__module__
    return copy


def _is_file(module: types.ModuleType, source: Path | None) -> bool:
    file = getattr(module, "__file__", None)
    return source is not None and file is not None and Path(file) == Path(source)


def _importable(module: types.ModuleType) -> bool:
    """Whether a worker importing ``module.__name__`` gets this very file."""
    name, file = module.__name__, getattr(module, "__file__", None)
    if name == "__main__" or file is None:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return False
    if spec is None or spec.origin is None:
        return False
    return Path(spec.origin).resolve() == Path(file).resolve()
