"""The early start: a ``pytask -n 2`` command line starts loky's workers at import."""

from __future__ import annotations

import uuid

import psutil
import pytest

from taskcloud.backends import default_n_workers
from taskcloud.plugin.early import requested_workers
from tests.conftest import run_subprocess
from tests.conftest import wait_for

PYTASK = "/venv/bin/pytask"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([PYTASK, "-n", "2"], 2),
        ([PYTASK, "build", "--n-workers=3"], 3),
        ([PYTASK, "-n3", "--parallel-backend", "loky"], 3),
        (["/lib/python3.12/site-packages/pytask/__main__.py", "-n", "2"], 2),
        ([PYTASK, "-n", "auto"], default_n_workers()),
        ([PYTASK, "-n", "1", "--parallel-backend", "loky"], 1),
        ([PYTASK, "-n", "2", "--parallel-backend", "none"], None),
        ([PYTASK, "-n", "auto", "--parallel-backend=none"], None),
        ([PYTASK], None),
        ([PYTASK, "-n", "1"], None),
        ([PYTASK, "-n", "2", "--parallel-backend", "threads"], None),
        ([PYTASK, "-n", "2", "--pdb"], None),
        ([PYTASK, "-n", "2", "--dry-run"], None),
        ([PYTASK, "-n", "2", "--help"], None),
        ([PYTASK, "collect", "-n", "2"], None),
        ([PYTASK, "-n", "many"], None),
        (["/usr/bin/python", "analysis.py", "-n", "2"], None),
    ],
)
def test_command_lines(argv, expected, tmp_path, monkeypatch) -> None:
    """Only a ``pytask`` build on loky starts early: -n above one or auto, or loky
    named; an explicit none never."""
    monkeypatch.chdir(tmp_path)
    assert requested_workers(argv) == expected


@pytest.mark.parametrize(
    ("options", "argv", "expected"),
    [
        ('n_workers = 3\nparallel_backend = "loky"', [PYTASK], 3),
        ("n_workers = 2", [PYTASK, "-n", "4"], 4),
        ('parallel_backend = "dask"', [PYTASK, "-n", "2"], None),
        ('parallel_backend = "dask"', [PYTASK, "-n", "2", "--parallel-backend", "loky"], 2),
        ("n_workers = 2\npdb = true", [PYTASK], None),
        ('n_workers = 2\nparallel_backend = "none"', [PYTASK], None),
        ('parallel_backend = "none"', [PYTASK, "-n", "2"], None),
        ('n_workers = "auto"', [PYTASK], default_n_workers()),
    ],
)
def test_configuration_file(options, argv, expected, tmp_path, monkeypatch) -> None:
    """The configuration file counts as pytask counts it: under the command line."""
    tmp_path.joinpath("pyproject.toml").write_text(f"[tool.pytask.ini_options]\n{options}\n")
    monkeypatch.chdir(tmp_path)
    assert requested_workers(argv) == expected


def test_another_configuration_file(tmp_path, monkeypatch) -> None:
    """``-c`` names the file to read instead of the one pytask would find."""
    tmp_path.joinpath("pyproject.toml").write_text("[tool.pytask.ini_options]\nn_workers = 2\n")
    other = tmp_path / "serial.toml"
    other.write_text("[tool.pytask.ini_options]\nn_workers = 1\n")
    monkeypatch.chdir(tmp_path)
    assert requested_workers([PYTASK]) == 2
    assert requested_workers([PYTASK, "-c", str(other)]) is None


# The hook module is imported while pytask parses its command line, after the plugins
# loaded and before any configuration hook runs: the workers it sees started early.
HOOKS = """
from pathlib import Path
import psutil

children = psutil.Process().children(recursive=True)
Path("before-configuration.txt").write_text(" ".join(str(child.pid) for child in children))
"""

TASKS = """
import os
from pathlib import Path
from typing import Annotated
from pytask import Product, task

for i in range(4):
    @task(id=str(i))
    def task_pid(path: Annotated[Path, Product] = Path(f"pid-{i}.txt")) -> None:
        path.write_text(str(os.getpid()))
"""


def _run(tmp_path, *args: str) -> tuple[str, str, int]:
    """Run ``python -m pytask`` with a mark in its environment; return its output, the
    mark and its process id."""
    mark = uuid.uuid4().hex
    env = {"TASKCLOUD_TEST_MARK": mark}
    hooks = str(tmp_path / "hooks.py")
    pytask = run_subprocess(tmp_path, "--hook-module", hooks, *args, env=env)
    output, _ = pytask.communicate(timeout=120)
    return output, mark, pytask.pid


def _processes_marked(mark: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TASKCLOUD_TEST_MARK") == mark:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def test_the_build_runs_on_the_workers_started_early(tmp_path, write) -> None:
    """Every task runs on a worker that existed before pytask read its configuration."""
    write("hooks.py", HOOKS)
    write("task_pid.py", TASKS)
    output, mark, _ = _run(tmp_path, "-n", "2")

    assert "4  Succeeded" in output, output
    early = set((tmp_path / "before-configuration.txt").read_text().split())
    used = {(tmp_path / f"pid-{i}.txt").read_text() for i in range(4)}
    assert early, "nothing started early"
    assert used <= early, (used, early)
    wait_for(lambda: not _processes_marked(mark), 30, "the workers exiting")


# Runs in pytask's process (threads): how many loky workers are alive, once none is
# left or after a deadline.
LOKY_WORKERS = """
import time
import psutil

def _loky_workers():
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "popen_loky" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found

def task_count(path: Annotated[Path, Product] = Path("loky-workers.txt")) -> None:
    deadline = time.monotonic() + 30
    while _loky_workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    path.write_text(str(len(_loky_workers())))
"""


def test_a_pool_started_early_stops_when_pytask_parses_another_backend(tmp_path, write) -> None:
    """Where the configuration pytask finds differs from the guess, the pool stops
    while the build runs on the backend pytask parsed."""
    write("hooks.py", HOOKS)
    write("project/pyproject.toml", '[tool.pytask.ini_options]\nparallel_backend = "threads"\n')
    write("project/task_pid.py", TASKS + LOKY_WORKERS)
    output, mark, pid = _run(tmp_path, "-n", "2", "project")

    assert "5  Succeeded" in output, output
    assert (tmp_path / "before-configuration.txt").read_text().split(), "nothing started early"
    assert (tmp_path / "project" / "loky-workers.txt").read_text() == "0"
    used = {(tmp_path / "project" / f"pid-{i}.txt").read_text() for i in range(4)}
    assert used == {str(pid)}  # threads: every task ran in pytask's own process
    wait_for(lambda: not _processes_marked(mark), 30, "the early workers exiting")


def test_a_usage_error_after_an_early_start_leaves_no_worker(tmp_path, write) -> None:
    """pytask stops at a bad option after the workers started; none of them stays."""
    write("hooks.py", HOOKS)
    write("task_pid.py", TASKS)
    output, mark, _ = _run(tmp_path, "-n", "2", "--max-failures", "abc")

    assert "abc" in output, output
    assert (tmp_path / "before-configuration.txt").read_text().split(), "nothing started early"
    assert not list(tmp_path.glob("pid-*.txt"))
    wait_for(lambda: not _processes_marked(mark), 30, "the early workers exiting")
