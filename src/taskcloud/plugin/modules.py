"""Decides how a task function travels to a worker process.

pytask imports task modules from their paths, often outside any package, under names
that a worker cannot import, or can import only with pytask's changes to
``sys.path``. Task modules are therefore pickled by value, as is any module a worker
could not import by name. The function
itself travels as a bare copy, without pytask's metadata and annotations, so that a
worker neither receives pytask's collection state nor has to import pytask.
"""

from __future__ import annotations

import importlib.util
import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
from pytask import PTask

__all__ = ["ship_function"]

_BY_VALUE: set[str] = set()


def ship_function(task: PTask) -> Callable[..., Any]:
    """Return a copy of the task's function that pickles small and by value."""
    function = task.function
    module = inspect.getmodule(function)
    if (
        module is not None
        and module.__name__ not in _BY_VALUE
        and (_is_task_module(module, task) or not _importable(module))
    ):
        cloudpickle.register_pickle_by_value(module)
        _BY_VALUE.add(module.__name__)
    return _bare(function) if isinstance(function, types.FunctionType) else function


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


def _is_task_module(module: types.ModuleType, task: PTask) -> bool:
    path, file = getattr(task, "path", None), getattr(module, "__file__", None)
    return path is not None and file is not None and Path(file) == Path(path)


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
