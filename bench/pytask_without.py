"""Run pytask's command line with one ``pytask`` entry-point plugin blocked.

The benchmark runs taskcloud and pytask-parallel from one environment; both add
``-n``, so each run blocks the other: ``python pytask_without.py taskcloud -n 2``.
"""

from __future__ import annotations

import sys

import pluggy

_blocked = sys.argv[1]
_load = pluggy.PluginManager.load_setuptools_entrypoints


def _load_without(self: pluggy.PluginManager, group: str, name: str | None = None) -> int:
    if group == "pytask" and _blocked != "none":
        self.set_blocked(_blocked)
    return _load(self, group, name)


pluggy.PluginManager.load_setuptools_entrypoints = _load_without  # type: ignore[method-assign]

if __name__ == "__main__":
    # The command line the plugins see as pytask imports them is the one ``pytask``
    # would have: taskcloud starts a loky pool from it.
    sys.argv = ["pytask", *sys.argv[2:]]
    from pytask import cli

    cli()
