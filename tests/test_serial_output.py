"""A serial pytask run prints what pytask alone prints: installing taskcloud changes
nothing of it but the header's plugin line.

Each project runs twice, written anew, once under pytask with taskcloud and once
under the same pytask with taskcloud's entry point blocked, and the two outputs are
compared line by line.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taskcloud.environments import create_software_environment
from tests.test_environments import PACKAGE
from tests.test_environments import make_wheel

#: pytask with taskcloud's entry point blocked: what a user without taskcloud sees.
PLAIN_PYTASK = """
import pluggy

load = pluggy.PluginManager.load_setuptools_entrypoints


def without_taskcloud(self, group, name=None):
    self.set_blocked("taskcloud")
    return load(self, group, name)


pluggy.PluginManager.load_setuptools_entrypoints = without_taskcloud
from pytask import cli

cli()
"""

FAILING = {
    "task_x.py": """
        def helper():
            return 1 / 0


        def task_x():
            helper()
    """,
}

MIXED = {
    "task_a.py": """
        import warnings
        from pathlib import Path
        from typing import Annotated

        import pytask
        from pytask import Product


        def task_prints(path: Annotated[Path, Product] = Path("out.txt")) -> None:
            print("hello from a task")
            warnings.warn("a warning of the task's", UserWarning, stacklevel=1)
            path.write_text("x")


        @pytask.mark.skip
        def task_skipped() -> None:
            pass


        def task_depends(path: Path = Path("out.txt")) -> None:
            raise ValueError(f"cannot use {path.name}")
    """,
    "task_b.py": """
        def task_locals():
            numbers = [1, 2, 3]
            numbers["x"]
    """,
}


def _run(project: Path, command: list[str], *args: str) -> str:
    # pytask orders tasks that do not depend on each other by set iteration: one
    # hash seed, and one path for the project, give both runs one order.
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "PYTHONHASHSEED": "0"}
    env.pop("TASKCLOUD_TRACEBACK", None)
    done = subprocess.run(
        [*command, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = done.stdout + done.stderr
    text = text.replace(project.as_posix(), "<project>")
    lines = [
        line
        for line in text.splitlines()
        if not line.startswith(("Plugins:", "Root:"))  # pytask's header names plugins
    ]
    # The footer's duration is the one thing two runs never share, and its rule's
    # length follows the duration's digits.
    return re.sub(r"─* (\w+) in [\d.]+ seconds ─*", r"\1 in N seconds", "\n".join(lines))


def _fresh(tmp_path: Path, files: dict[str, str]) -> Path:
    """The project in ``tmp_path/project``, written anew: both runs see one path, as
    pytask orders independent tasks by signatures made from their paths."""
    project = tmp_path / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    for name, source in files.items():
        (project / name).write_text(textwrap.dedent(source))
    return project


@pytest.mark.parametrize(
    ("files", "args"),
    [
        pytest.param(FAILING, (), id="failure"),
        pytest.param(MIXED, (), id="mixed"),
        pytest.param(MIXED, ("--show-locals",), id="show-locals"),
        pytest.param(MIXED, ("-x",), id="stop-after-first"),
        pytest.param(MIXED, ("-s",), id="no-capture"),
    ],
)
@pytest.mark.parametrize(
    "ours",
    [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2", "--parallel-backend", "none"), id="none"),
    ],
)
def test_serial_output_is_pytasks_own(tmp_path, files, args, ours) -> None:
    """A plain run, and ``-n 2 --parallel-backend none``, print what pytask prints."""
    plain = _run(_fresh(tmp_path, files), [sys.executable, "-c", PLAIN_PYTASK], *args)
    ran = _run(_fresh(tmp_path, files), [sys.executable, "-m", "pytask"], *ours, *args)
    assert "Traceback" in plain
    assert ran == plain, "\n".join(
        difflib.unified_diff(plain.splitlines(), ran.splitlines(), "pytask alone", "with taskcloud")
    )


def test_a_failure_shows_the_users_frame_first(tmp_path) -> None:
    """The failure box opens on the task's own frame, as serial pytask's does."""
    ran = _run(_fresh(tmp_path, FAILING), [sys.executable, "-m", "pytask"])
    box = ran.split("Traceback (most recent call last)", 1)[1]
    first_frame = re.search(r"│ (\S+:\d+) in (\w+)", box)
    assert first_frame is not None
    assert first_frame.groups() == ("<project>/task_x.py:7", "task_x")
    assert "taskcloud" not in box.split("ZeroDivisionError")[0]


DECORATED = f"""
    import taskcloud


    def helper():
        return 1 / 0


    @taskcloud.function(environ={{"TOKEN": "x"}})
    def task_environ():
        helper()


    @taskcloud.function(software="probe", n_workers=[0, 1], keepalive="2 s")
    def task_software():
        import {PACKAGE}

        helper()
"""


def _frames(report: str, task: str) -> list[str]:
    """The ``file:line in function`` frames of one task's failure box, in order."""
    section = report.split(f"Task task_d.py::{task} failed", 1)[1].split("Error:", 1)[0]
    return [f"{path} in {name}" for path, name in re.findall(r"│ (\S+:\d+) in[│\s]+(\w+)", section)]


@pytest.mark.slow
def test_a_decorated_tasks_failure_shows_only_the_users_frames(tmp_path, monkeypatch) -> None:
    """A serial run of a task with ``environ=`` (in pytask's process) and of one with
    ``software=`` (on its pool) shows the user's frames and none of taskcloud's."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    create_software_environment("probe", pip=[str(make_wheel(wheels))], progress=False)
    ran = _run(_fresh(tmp_path, {"task_d.py": DECORATED}), [sys.executable, "-m", "pytask"])

    for task, line in [("task_environ", 11), ("task_software", 18)]:
        assert _frames(ran, task) == [
            f"<project>/task_d.py:{line} in {task}",
            "<project>/task_d.py:6 in helper",
        ], ran
