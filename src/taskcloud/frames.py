"""Which frames of a traceback a user sees.

A failure shows the user's code and taskcloud's one-line reason. The frames in
between (taskcloud's own, ``concurrent.futures``', dask's and loky's) say how a call
travelled, not why it failed, and are left out. ``TASKCLOUD_TRACEBACK=full`` keeps
every frame, for both pytask and scripts. Workers import this module, so it imports
nothing heavy.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["ENV", "hide_internals", "visible"]

#: The environment variable that keeps every frame when set to ``full``.
ENV = "TASKCLOUD_TRACEBACK"

_OWN = (
    str(Path(__file__).parent) + os.sep,
    str(Path(concurrent.futures.__file__).parent) + os.sep,
)
#: Packages whose frames are hidden once they are imported; before, none can show.
_PACKAGES = ("distributed", "loky")
#: The file name attrs gives the methods it writes, e.g. a validating ``__init__``;
#: those of taskcloud's classes name the class, ``taskcloud.specs.FunctionSpec``.
_GENERATED = "<attrs generated "


def _hidden_roots() -> tuple[str, ...]:
    roots = list(_OWN)
    for name in _PACKAGES:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            roots.append(str(Path(file).parent) + os.sep)
    return tuple(roots)


def visible(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without the frames of taskcloud and the machinery calls travel by.

    With ``TASKCLOUD_TRACEBACK=full`` in the environment, ``tb`` as it is.
    """
    if tb is None or os.environ.get(ENV) == "full":
        return tb
    roots = _hidden_roots()
    kept: list[TracebackType] = []
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        if not (file.startswith(roots) or (file.startswith(_GENERATED) and " taskcloud." in file)):
            kept.append(tb)
        tb = tb.tb_next
    shown = None
    for entry in reversed(kept):
        shown = TracebackType(shown, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return shown


def hide_internals(exc: BaseException) -> None:
    """Give ``exc`` the traceback :func:`visible` leaves, to raise it again."""
    exc.__traceback__ = visible(exc.__traceback__)
