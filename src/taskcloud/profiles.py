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
    "USER_FILE",
    "Profile",
    "Profiles",
    "default_provider",
    "load",
    "overriding",
]

#: The user's own profiles, under ``$TASKCLOUD_HOME``.
USER_FILE = "providers.toml"


@frozen
class Profile:
    """A named provider kind and its options, and the file it was read from."""

    name: str
    kind: str
    options: dict[str, Any] = field(factory=dict)
    source: str = ""


@frozen
class Profiles:
    """Every profile the project and the user define, and the default provider."""

    profiles: dict[str, Profile] = field(factory=dict)
    #: ``provider = ...`` of the project, else of the user's file; None for neither.
    default: str | None = None
    #: Where the default was set.
    default_source: str = ""


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


def _profiles_of(table: Any, source: Path, where: str) -> dict[str, Profile]:
    if not isinstance(table, dict):
        raise InvalidOptionError(where, table, f"a table of profiles in {source}")
    found = {}
    for name, options in table.items():
        if not isinstance(options, dict):
            raise InvalidOptionError(f"{where}.{name}", options, f"a table in {source}")
        kind = options.get("kind")
        if not isinstance(kind, str) or not kind:
            raise InvalidOptionError(
                f"{where}.{name}.kind",
                kind,
                f'the provider it uses, e.g. kind = "ssh", in {source}',
            )
        rest = {key: value for key, value in options.items() if key != "kind"}
        found[name] = Profile(name, kind, rest, str(source))
    return found


def load(start: Path | None = None) -> Profiles:
    """The profiles of the project around ``start`` (the working directory) and the user."""
    profiles: dict[str, Profile] = {}
    default, default_source = None, ""
    user = home() / USER_FILE
    if user.is_file():
        data = _read(user)
        profiles.update(_profiles_of(data.get("providers", {}), user, "providers"))
        if data.get("provider") is not None:
            default, default_source = data["provider"], str(user)
    project = _project_file(start)
    if project is not None:
        data = _read(project).get("tool", {}).get("taskcloud", {})
        where = "tool.taskcloud.providers"
        profiles.update(_profiles_of(data.get("providers", {}), project, where))
        if data.get("provider") is not None:
            default, default_source = data["provider"], str(project)
    if default is not None and (not isinstance(default, str) or not default):
        raise InvalidOptionError(
            "provider", default, f"a provider or profile name in {default_source}"
        )
    return Profiles(profiles, default, default_source)


_override_all: list[str] = []


@contextmanager
def overriding(name: str | None) -> Iterator[None]:
    """Make ``name`` the default provider in this block (``pytask --provider``)."""
    if name is None:
        yield
        return
    _override_all.append(name)
    try:
        yield
    finally:
        _override_all.pop()


def default_provider(start: Path | None = None) -> str:
    """The provider of a decorated task that names none: ``--provider``, the project's
    or the user's ``provider =``, else ``local``."""
    if _override_all:
        return _override_all[-1]
    return load(start).default or "local"
