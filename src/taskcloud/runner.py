"""What runs inside a pool's worker for one call of a ``@taskcloud.function``.

Workers import this module to run calls, so it imports nothing heavy.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import cloudpickle

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


def invoke(blob: bytes, environ: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Run a pickled call with ``environ`` set; return its pickled result."""
    name, function, args, kwargs = pickle.loads(blob)
    with _environ(environ):
        result = function(*args, **kwargs)
    try:
        return cloudpickle.dumps(result)
    except Exception as exc:
        raise SerializationError("return value", name, f"{type(exc).__name__}: {exc}") from None
