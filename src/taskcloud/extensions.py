"""The hooks through which other packages extend taskcloud, found by entry points.

A package adds backends by exposing a module or object with ``@taskcloud.hookimpl``
implementations under the ``taskcloud`` entry-point group::

    [project.entry-points.taskcloud]
    mybackends = "mypackage.taskcloud_hooks"

The pytask plugin loads them for each parallel build, before it checks the backend
name the build asks for; what they register is forgotten when the session ends.
"""

from __future__ import annotations

import pluggy

from taskcloud.backends import ParallelBackendRegistry

__all__ = ["hookimpl", "hookspec", "load_extensions"]

hookspec = pluggy.HookspecMarker("taskcloud")
hookimpl = pluggy.HookimplMarker("taskcloud")

ENTRY_POINT_GROUP = "taskcloud"


class _Specs:
    """The hooks an extension may implement."""

    @staticmethod
    @hookspec
    def taskcloud_add_parallel_backends(registry: ParallelBackendRegistry) -> None:
        """Register parallel backends with ``registry.register_parallel_backend``."""


def load_extensions(registry: ParallelBackendRegistry) -> pluggy.PluginManager:
    """Load every installed extension and let it register its backends."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(_Specs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    manager.hook.taskcloud_add_parallel_backends(registry=registry)
    return manager
