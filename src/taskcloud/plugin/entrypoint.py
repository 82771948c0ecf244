"""The module pytask loads through the ``pytask`` entry point."""

from __future__ import annotations

from pluggy import PluginManager
from pytask import hookimpl

from taskcloud.plugin import early

# First of all, so that loky's workers boot while pytask loads the rest. The build
# takes the pool from the plugin manager, where pytask_add_hooks puts it.
_EARLY = early.start()

from taskcloud.plugin import options  # noqa: E402

#: pytask-parallel's plugins, which add the same options; taskcloud replaces them.
_REPLACED = ("pytask_parallel", "pytask_parallel.build", "pytask_parallel.config")


@hookimpl
def pytask_add_hooks(pm: PluginManager) -> None:
    """Register taskcloud's options, taking over from pytask-parallel if present."""
    for name in _REPLACED:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        pm.set_blocked(name)
    pm.register(options)
    if _EARLY is not None and _EARLY.executor is not None:
        pm.register(_EARLY, name=early.PLUGIN)
