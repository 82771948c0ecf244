"""How functions and their arguments travel to workers.

pytask imports task modules from their paths, often outside any package, under names
that a worker cannot import, or can import only with pytask's changes to
``sys.path``. Such modules are pickled by value with cloudpickle, and a function
travels as a bare copy, without the attributes (pytask's metadata, annotations) a
worker does not need. Pickling happens here rather than in dask, which would pickle a
function by reference.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import types
from collections import ChainMap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from taskcloud.errors import SerializationError

__all__ = ["dumps", "dumps_arguments", "dumps_function", "ship"]

_BY_VALUE: set[str] = set()


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
    """Pickle ``value`` with cloudpickle; code pickled by value keeps its file name."""
    with io.BytesIO() as file:
        _Pickler(file).dump(value)
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
        return cloudpickle.dumps((args, kwargs))
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
