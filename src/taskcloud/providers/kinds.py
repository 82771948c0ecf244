"""Provider kinds by name, and the providers this process built.

Built-in kinds are ``local``, ``ssh`` and ``slurm``. A third-party package adds a kind through an
entry point in the group :data:`ENTRY_POINTS`, whose value is the provider class::

    [project.entry-points."taskcloud.providers"]
    mine = "mypackage.provider:MyProvider"

A class is called as ``cls(name, options)`` and follows
:class:`~taskcloud.providers.protocol.Provider`. :func:`register` adds one at run time.

:func:`resolve` turns what a user wrote (a kind, or a profile of
:mod:`taskcloud.profiles`) into a kind and its options; :func:`get` builds that
provider once per process and keeps it until :func:`close_all`.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
from importlib import import_module
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from attrs import frozen

from taskcloud import profiles
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import ProviderLoadError
from taskcloud.errors import ProviderNotFoundError
from taskcloud.providers.protocol import Provider

__all__ = [
    "ENTRY_POINTS",
    "Resolved",
    "build",
    "close_all",
    "describe",
    "get",
    "kinds",
    "register",
    "resolve",
]

#: The entry point group of third-party providers.
ENTRY_POINTS = "taskcloud.providers"

_BUILT_IN = {
    "local": "taskcloud.providers.local:LocalProvider",
    "ssh": "taskcloud.providers.ssh:SSHProvider",
    "slurm": "taskcloud.providers.slurm:SlurmProvider",
}

_registered: dict[str, Any] = {}
_built: dict[tuple[str, str], Provider] = {}
_lock = threading.RLock()
_exit_hook = False


def register(kind: str, provider: Any) -> None:
    """Make ``kind`` name ``provider``: a class, or its ``module:Class`` path."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise InvalidOptionError("kind", kind, "a provider name such as 'ssh'")
    if not callable(provider) and not _is_path(provider):
        raise InvalidOptionError(
            "provider", provider, "a provider class or its 'module:Class' path"
        )
    _registered[kind] = provider


def _is_path(target: Any) -> bool:
    if not isinstance(target, str):
        return False
    module, colon, attribute = target.partition(":")
    return bool(module and colon and attribute)


def kinds() -> dict[str, Any]:
    """Every registered kind and its class (or import path): built-in, entry points,
    then :func:`register`'s, each later one winning."""
    found: dict[str, Any] = dict(_BUILT_IN)
    found.update(_entry_points())
    found.update(_registered)
    return found


_scanned: dict[tuple[str, ...], dict[str, Any]] = {}


def _entry_points() -> dict[str, Any]:
    """The kinds installed packages give, scanned once per ``sys.path``: scanning
    every installed distribution costs milliseconds, and pools resolve their
    provider on every call."""
    key = tuple(sys.path)
    found = _scanned.get(key)
    if found is None:
        found = {point.name: point for point in entry_points(group=ENTRY_POINTS)}
        _scanned.clear()
        _scanned[key] = found
    return found


def _is_entry_point(target: Any) -> bool:
    """Whether ``target`` is an entry point: the standard library's, or the
    ``importlib_metadata`` backport's, which that package makes the standard library's
    ``entry_points()`` return once anything imports it."""
    backport = sys.modules.get("importlib_metadata")
    types = (EntryPoint,) if backport is None else (EntryPoint, backport.EntryPoint)
    return isinstance(target, types)


def describe(target: Any) -> str:
    """Where a kind's class comes from, in words: ``module:Class``."""
    if _is_entry_point(target):
        return target.value
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"


def _load(kind: str, target: Any) -> Any:
    try:
        if _is_entry_point(target):
            return target.load()
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            return getattr(import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ProviderLoadError(kind, describe(target), f"{type(exc).__name__}: {exc}") from exc
    return target


@frozen
class Resolved:
    """A provider name as the user wrote it, made into a kind and its options."""

    name: str
    kind: str
    options: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return self.name, json.dumps(self.options, sort_keys=True, default=str)


def resolve(
    name: str | None, options: dict[str, Any] | None = None, start: Path | None = None
) -> Resolved:
    """What provider ``name`` means here: a profile of that name, else a kind.

    ``None`` is the default provider (:func:`taskcloud.profiles.default_provider`).
    ``options`` are laid over the profile's.
    """
    if name is None:
        name = profiles.default_provider(start)
    known = profiles.load(start).profiles
    registered = kinds()
    if not isinstance(name, str) or not (name in known or name in registered):
        raise ProviderNotFoundError(name, registered, known)
    options = dict(options or {})
    profile = known.get(name)
    if profile is None:
        return Resolved(name, name, options)
    if profile.kind not in registered:
        names = ", ".join(repr(kind) for kind in sorted(registered))
        raise InvalidOptionError(
            f"{profile.table}.kind",
            profile.kind,
            f"a registered provider kind ({names}) in {profile.source}",
        )
    return Resolved(name, profile.kind, {**profile.options, **options})


def build(resolved: Resolved) -> Provider:
    """A new provider for ``resolved``; its options are checked as it is made."""
    cls = _load(resolved.kind, kinds()[resolved.kind])
    return cls(resolved.name, dict(resolved.options))


def get(resolved: Resolved) -> Provider:
    """This process's provider for ``resolved``, built on first use."""
    global _exit_hook
    with _lock:
        provider = _built.get(resolved.key)
        if provider is None:
            provider = _built[resolved.key] = build(resolved)
            if not _exit_hook:
                atexit.register(close_all)
                _exit_hook = True
        return provider


def close_all() -> None:
    """Close every provider this process built."""
    with _lock:
        built = list(_built.values())
        _built.clear()
    for provider in built:
        try:
            provider.close()
        except Exception:  # closing at exit: what is gone is gone
            continue
