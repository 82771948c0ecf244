"""Where pools of workers come from: one module per provider, and what they share."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["main_module_hidden"]


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """Keep spawned workers from re-running ``__main__``, e.g. pytask's console script.

    multiprocessing's spawn re-imports the parent's main script in every child, which
    for ``pytask`` costs a second per worker. taskcloud sends all work cloudpickled by
    value, so workers never need the main module.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
