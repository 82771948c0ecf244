"""Plain helpers the test modules share (fixtures live in ``tests/conftest.py``).

Import them as ``from tests.helpers import ...``. :func:`pid` runs on workers: a
local worker imports this module to find it, as it would a test module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

import psutil


def pid() -> int:
    """The id of the process this runs in: a worker's, called through a pool."""
    return os.getpid()


def sleep_and_record(path: str, seconds: float) -> int:
    """Write this worker's pid to ``path``, then sleep: a call to kill its worker."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def allocate(megabytes: int, hold: float) -> int:
    """Touch ``megabytes`` of memory and hold it: a call beyond its memory limit."""
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    return len(block)


def toml_value(value: object) -> str:
    """``value`` (a bool, number, string or list of them) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    # A JSON string is a TOML basic string: the same escapes.
    return json.dumps(str(value))


def profile_toml(name: str, options: Mapping[str, object], prefix: str = "tool.taskcloud.") -> str:
    """The ``[tool.taskcloud.providers.NAME]`` table of a provider profile."""
    lines = [f"[{prefix}providers.{name}]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def gone(*pids: int) -> bool:
    """Whether every process of ``pids`` has ended (a zombie has)."""
    for number in pids:
        try:
            if psutil.Process(number).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def run_script(
    tmp_path: Path, source: str, *args: str, cwd: Path | None = None
) -> subprocess.Popen:
    """Start the dedented Python ``source``, written to ``tmp_path/script.py``, with
    ``args``, as a process of its own whose output is piped and unbuffered."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
