"""What runs inside a pool's worker for one call of a ``@taskcloud.function``.

Workers import this module to run calls, so it imports nothing heavy.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle

from taskcloud.errors import BreakpointError
from taskcloud.errors import SerializationError

__all__ = ["invoke"]


@contextmanager
def _environ(environ: tuple[tuple[str, str], ...]) -> Iterator[None]:
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


def _dumps(value: Any) -> bytes:
    # The C pickler is several times faster; cloudpickle handles what it cannot,
    # such as instances of classes defined in a task module that travelled by value.
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value)


def invoke(
    function_blob: bytes, arguments_blob: bytes, environ: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """Run a pickled call with ``environ`` set; return its pickled result."""
    _guard_debuggers()
    name, function = _load_function(function_blob)
    args, kwargs = pickle.loads(arguments_blob)
    if environ:
        with _environ(environ):
            result = function(*args, **kwargs)
    else:
        result = function(*args, **kwargs)
    try:
        return _dumps(result)
    except Exception as exc:
        raise SerializationError("return value", name, f"{type(exc).__name__}: {exc}") from None
