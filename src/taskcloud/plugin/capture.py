"""pytask's output capture while tasks run in threads of pytask's own process.

pytask's capture manager swaps ``sys.stdout`` for the whole process around each
setup and teardown in the dispatching thread; with tasks running in other threads of
this process that would mix their output. For a build on the threads backend, the
capture manager gets a capture that does nothing, and each worker thread captures its
own task's output through :func:`taskcloud.worker.interceptor`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pytask import Session

from taskcloud import worker

__all__ = ["threads_capture"]


@contextmanager
def threads_capture(session: Session) -> Iterator[None]:
    """Let worker threads capture per task while pytask's global capture rests."""
    manager = session.config["pm"].get_plugin("capturemanager")
    saved = getattr(manager, "_capturing", None)
    idle = _idle_capture() if saved is not None else None
    if idle is None:
        saved = None  # pytask's capture changed: it goes on as it is (output may mix)
    else:
        manager._capturing = idle
    interceptor = worker.interceptor()
    interceptor.install()
    try:
        yield
    finally:
        interceptor.uninstall()
        if saved is not None:
            manager._capturing = saved


def _idle_capture() -> Any:
    """A started capture of pytask's that captures nothing (``--capture=no``), or None.

    ``_pytask.capture`` offers no public way to build one; ``tests/test_private_names.py``
    fails loudly should these names change, and without them this returns None.
    """
    try:
        from _pytask.capture import CaptureMethod
        from _pytask.capture import _get_multicapture
    except ImportError:
        return None

    idle = _get_multicapture(CaptureMethod.NO)
    idle.start_capturing()
    return idle
