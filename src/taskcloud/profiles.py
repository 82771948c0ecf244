"""Provider profiles: named sets of provider options, from the project and the user.

A profile is a table ``[tool.taskcloud.providers.NAME]`` in the project's
``pyproject.toml`` (found from the working directory upwards), or ``[providers.NAME]``
in the user's ``$TASKCLOUD_HOME/providers.toml``. Its ``kind`` names the provider; the
other keys are that provider's options. ``provider = "NAME"`` at the top of either
file is the default for decorated tasks; the project's file wins over the user's.
``pytask --provider NAME`` overrides the default for one run (:func:`overriding`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import field
from attrs import frozen

from taskcloud.errors import InvalidOptionError
from taskcloud.store import home

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BUILT_IN_DEFAULT",
    "COMMAND_LINE",
    "USER_FILE",
    "Profile",
    "Profiles",
    "default_choice",
    "default_provider",
    "is_secret",
    "load",
    "overriding",
    "secrets_hidden",
]

#: The user's own profiles, under ``$TASKCLOUD_HOME``.
USER_FILE = "providers.toml"
#: The provider of a project and user that name none.
BUILT_IN_DEFAULT = "local"
#: Where :func:`default_provider`'s answer came from when ``pytask --provider`` gave it.
COMMAND_LINE = "--provider"

_SECRET_WORDS = ("password", "token", "secret")


@frozen
class Profile:
    """A named provider kind and its options, and the file it was read from."""

    name: str
    kind: str
    options: dict[str, Any] = field(factory=dict)
    source: str = ""
    #: Its table, for messages: ``tool.taskcloud.providers.lab``.
    table: str = ""

    def public_options(self) -> dict[str, Any]:
        """The options with every secret's value shown as ``***``."""
        return secrets_hidden(self.options)


@frozen
class Profiles:
    """Every profile the project and the user define, and the default provider."""

    profiles: dict[str, Profile] = field(factory=dict)
    #: ``provider = ...`` of the project, else of the user's file; None for neither.
    default: str | None = None
    #: Where the default was set.
    default_source: str = ""


def is_secret(option: str) -> bool:
    """Whether an option's value is a secret: a password, token, secret or key (an SSH
    ``identity`` file's path is not)."""
    name = option.lower()
    if any(word in name for word in _SECRET_WORDS):
        return True
    return "key" in name and "identity" not in name


def secrets_hidden(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the values of secrets as ``***``, in nested tables too."""
    shown: dict[str, Any] = {}
    for option, value in options.items():
        if is_secret(str(option)):
            shown[option] = "***"
        elif isinstance(value, dict):
            shown[option] = secrets_hidden(value)
        else:
            shown[option] = value
    return shown


def _project_file(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidOptionError(
            "provider profiles", str(path), f"a readable TOML file ({exc})"
        ) from None


def _table(data: dict[str, Any], key: str, source: Path, where: str) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise InvalidOptionError(where, table, f"a table in {source}")
    return table


def _profile(name: str, options: Any, source: Path, table: str) -> Profile:
    if not isinstance(options, dict):
        raise InvalidOptionError(table, options, f"a table of provider options in {source}")
    kind = options.get("kind")
    if not isinstance(kind, str) or not kind:
        raise InvalidOptionError(
            f"{table}.kind", kind, f'the provider kind it uses, e.g. kind = "ssh", in {source}'
        )
    rest = {key: value for key, value in options.items() if key != "kind"}
    return Profile(name, kind, rest, str(source), table)


def _profiles_of(table: dict[str, Any], source: Path, where: str) -> dict[str, Profile]:
    return {
        name: _profile(name, options, source, f"{where}.{name}") for name, options in table.items()
    }


def _default_of(data: dict[str, Any], source: Path, where: str) -> str | None:
    default = data.get("provider")
    if default is not None and (not isinstance(default, str) or not default):
        raise InvalidOptionError(where, default, f"a provider kind or profile name in {source}")
    return default


def _layer(
    data: dict[str, Any], source: Path, prefix: str
) -> tuple[dict[str, Profile], str | None]:
    """The profiles and the default of one file's table (``prefix`` is its path)."""
    where = f"{prefix}.providers" if prefix else "providers"
    found = _profiles_of(_table(data, "providers", source, where), source, where)
    return found, _default_of(data, source, f"{prefix}.provider" if prefix else "provider")


def _project_table(project: Path) -> dict[str, Any]:
    tool = _table(_read(project), "tool", project, "tool")
    return _table(tool, "taskcloud", project, "tool.taskcloud")


def load(start: Path | None = None) -> Profiles:
    """The profiles of the project around ``start`` and the user's.

    ``start`` defaults to the project root of the innermost :func:`overriding` that
    gives one (a pytask run's), else the working directory.
    """
    user = home() / USER_FILE
    project = _project_file(start or _overrides.root())
    key = (_stamp(user), _stamp(project))
    cached = _loaded.get(key)
    if cached is None:
        cached = _load(user, project)
        _loaded.clear()  # one entry: the files as they are now
        _loaded[key] = cached
    return cached


#: The profiles last read, by the files' paths and modification stamps.
_loaded: dict[Any, Profiles] = {}


def _stamp(path: Path | None) -> tuple[str, int, int] | None:
    """A file's path and modification stamp, None when there is no such file."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


def _load(user: Path, project: Path | None) -> Profiles:
    profiles: dict[str, Profile] = {}
    default, default_source = None, ""
    if user.is_file():
        found, user_default = _layer(_read(user), user, "")
        profiles.update(found)
        if user_default is not None:
            default, default_source = user_default, str(user)
    if project is not None:
        found, project_default = _layer(_project_table(project), project, "tool.taskcloud")
        profiles.update(found)
        if project_default is not None:
            default, default_source = project_default, str(project)
    return Profiles(profiles, default, default_source)


class _Overrides:
    """The ``pytask --provider`` names and project roots in force, innermost last.

    Shared by every thread: a pool resolves its provider wherever it starts.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[str | None, Path | None]] = []
        self._lock = threading.Lock()

    def push(self, name: str | None, root: Path | None) -> None:
        with self._lock:
            self._stack.append((name, root))

    def pop(self) -> None:
        with self._lock:
            self._stack.pop()

    def name(self) -> str | None:
        with self._lock:
            return next((name for name, _ in reversed(self._stack) if name), None)

    def root(self) -> Path | None:
        with self._lock:
            return next((root for _, root in reversed(self._stack) if root), None)


_overrides = _Overrides()


@contextmanager
def overriding(name: str | None, root: Path | None = None) -> Iterator[None]:
    """In this block, make ``name`` the default provider (``pytask --provider``) and
    ``root`` the project whose ``pyproject.toml`` is read; None leaves either as is."""
    _overrides.push(name, root)
    try:
        yield
    finally:
        _overrides.pop()


def default_choice(start: Path | None = None) -> tuple[str, str]:
    """The default provider and where it was chosen: ``--provider``, the file that
    says ``provider =``, or ``built-in``."""
    name = _overrides.name()
    if name is not None:
        return name, COMMAND_LINE
    found = load(start)
    if found.default is not None:
        return found.default, found.default_source
    return BUILT_IN_DEFAULT, "built-in"


def default_provider(start: Path | None = None) -> str:
    """The provider of a decorated task that names none: ``--provider``, the project's
    or the user's ``provider =``, else ``local``."""
    return default_choice(start)[0]
