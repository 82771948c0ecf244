"""What runs inside a pool's worker for one call of a ``@taskcloud.function``.

Workers import this module to run calls, so it imports nothing heavy. A function's
``environ`` is no concern of a call: its pool's workers start with it set (see
:class:`~taskcloud.specs.PoolSpec`), so that no other function's call, on any thread,
sees it. :func:`environ_set` is for serial pytask runs, which call one task at a time
in pytask's own process.
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

__all__ = ["environ_set", "invoke"]


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


def _dumps(value: Any) -> bytes:
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
        return _dumps(result)
    except Exception as exc:
        raise SerializationError("return value", name, f"{type(exc).__name__}: {exc}") from None
