"""The values that travel between pytask's process and a worker.

A :class:`TaskCall` goes out, a :class:`CallOutcome` comes back. This module is
imported by every worker, so it imports nothing heavy: no pytask, no rich, and
dataclasses rather than attrs, which a fresh worker would otherwise import first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

__all__ = [
    "CallOutcome",
    "RemoteFile",
    "RenderOptions",
    "RenderedTraceback",
    "TaskCall",
    "WarningFilter",
]

#: ``(action, message, category, module, lineno)``, as ``warnings.filterwarnings`` takes.
WarningFilter = tuple[str, str, type, str, int]


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A local file that travels to a worker that cannot see this file system.

    ``content`` is the file's bytes for a dependency and ``None`` for a product, whose
    bytes travel back in :attr:`CallOutcome.files` under ``key``.
    """

    key: int
    name: str
    content: bytes | None


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How the worker renders a traceback so it looks like pytask's own."""

    width: int = 100
    color_system: str | None = None
    show_locals: bool = False


class RenderedTraceback(str):
    """A traceback rendered in a worker, with ANSI styles, shown as rich text."""

    __slots__ = ()

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text.from_ansi(str(self))


@dataclass(frozen=True, slots=True)
class TaskCall:
    """One execution of a task function, with its arguments already loaded."""

    name: str
    function: Callable[..., Any]
    kwargs: dict[str, Any]
    capture: bool = True
    #: Whether output also reaches the worker's own streams as it is written.
    live: bool = False
    filters: tuple[WarningFilter, ...] = ()
    render: RenderOptions = RenderOptions()
    wants_return: bool = False
    has_files: bool = False
    #: Product nodes the function may ``save`` into, whose values travel back.
    carried: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What a worker reports about one :class:`TaskCall`.

    ``exc_info`` is ``(type, exception, traceback)``; after crossing a process boundary
    the traceback is a :class:`RenderedTraceback`.
    """

    value: Any = None
    exc_info: tuple[type[BaseException], BaseException, Any] | None = None
    stdout: str = ""
    stderr: str = ""
    warnings: tuple[tuple[str, str, int], ...] = ()
    files: dict[int, bytes] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0
    where: str = ""
    #: The values of :attr:`TaskCall.carried` after the call, in that order.
    carried: tuple[Any, ...] = ()
