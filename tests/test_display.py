"""What a user sees during and after a parallel run: live output with -s, the live
table, and the summary of where tasks ran."""

from __future__ import annotations

import re

import pytest
from pytask import ExitCode
from pytask import TaskOutcome
from pytask import build

from tests.conftest import BACKENDS
from tests.conftest import run_cli
from tests.conftest import run_subprocess

TALKING = """
import time
from pathlib import Path
{decorator_import}

{decorator}
def task_talk():
    print("hello from the task", flush=False)
    deadline = time.monotonic() + 60
    while not Path("{release}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    Path("{out}").write_text("released")
"""


@pytest.mark.parametrize(
    "decorated",
    [pytest.param(False, id="backend"), pytest.param(True, id="pool", marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_output_shows_while_the_task_runs_with_s(backend, decorated, tmp_path, write) -> None:
    """With -s a task's print reaches the terminal before the task finishes."""
    release, out = tmp_path / "release", tmp_path / "out.txt"
    write(
        "task_talk.py",
        TALKING.format(
            decorator_import="import taskcloud" if decorated else "",
            decorator="@taskcloud.function(n_workers=[0, 1])" if decorated else "",
            release=release.as_posix(),
            out=out.as_posix(),
        ),
    )
    pytask = run_subprocess(tmp_path, "-n", "2", "-s", "--parallel-backend", backend)
    lines: list[str] = []
    try:
        assert pytask.stdout is not None
        for line in pytask.stdout:
            lines.append(line)
            if "hello from the task" in line:
                break
        # The task is still waiting for the release: its output came live.
        assert not out.exists(), "".join(lines)
        release.touch()
        rest, _ = pytask.communicate(timeout=120)
    finally:
        if pytask.poll() is None:
            pytask.kill()
    assert any("hello from the task" in line for line in lines), "".join(lines)
    assert pytask.returncode == 0, "".join(lines) + rest
    assert out.read_text() == "released"


HOOKS = """
from pathlib import Path
from pytask import TaskExecutionStatus, hookimpl

LOG = Path(__file__).parent / "running.log"

def _count(session, finished):
    live = session.config["pm"].get_plugin("live_execution")
    entries = live._running_tasks.values()
    return sum(
        entry.status == TaskExecutionStatus.RUNNING and entry.task is not finished
        for entry in entries
    )

@hookimpl(tryfirst=True)
def pytask_execute_task_log_end(session, report):
    # Before pytask takes the finished task off the table: what else shows running.
    with LOG.open("a") as log:
        log.write(f"{_count(session, report.task)}\\n")
"""


@pytest.mark.parametrize("backend", ["loky", "threads"])
def test_live_table_shows_only_running_tasks_as_running(backend, tmp_path, write, runner):
    """Tasks queued behind busy workers show as pending, never more running than -n."""
    hooks = write(f"hooks_{backend}.py", HOOKS)
    write(
        "task_many.py",
        """
        import time
        from pytask import task

        for i in range(8):
            @task(id=str(i))
            def task_sleep(i=i):
                time.sleep(0.3)
        """,
    )
    options = ["-n", "2", "--parallel-backend", backend, "--hook-module", str(hooks)]
    result = run_cli(runner, tmp_path, *options)

    assert result.exit_code == ExitCode.OK, result.output
    counts = [int(line) for line in (tmp_path / "running.log").read_text().split()]
    assert len(counts) == 8
    # While one task ends, at most one other runs; more would be a queued task.
    assert max(counts) == 1


def test_summary_says_where_tasks_ran_and_on_how_many_workers(tmp_path, write, runner):
    """The backend's row of the summary gives its number of workers."""
    write("task_one.py", "def task_one():\n    pass\n")
    result = run_cli(runner, tmp_path, "-n", "2", "--parallel-backend", "threads")

    assert result.exit_code == ExitCode.OK, result.output
    (row,) = [line for line in result.output.splitlines() if "threads backend" in line]
    assert re.search(r"threads backend\s*│\s*1\s*│\s*2\s", row), row


def test_impossible_shape_fails_only_its_task(tmp_path, write, runner):
    """cpu=64 on this host is one failed task with a one-line reason; the others run."""
    write(
        "task_shape.py",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product
        import taskcloud

        @taskcloud.function(cpu=64)
        def task_huge(path: Annotated[Path, Product] = Path("huge.txt")):
            path.write_text("never")

        def task_after(src: Path = Path("huge.txt"), path: Annotated[Path, Product] = Path("after.txt")):
            path.write_text("never")

        def task_other(path: Annotated[Path, Product] = Path("other.txt")):
            path.write_text("ran")
        """,
    )
    result = run_cli(runner, tmp_path, "-n", "2")

    assert result.exit_code == ExitCode.FAILED, result.output
    assert "cpu=64 cannot be satisfied: the local provider has" in result.output
    assert "Traceback" not in result.output, result.output
    assert "Skipped because previous failed" in result.output
    assert (tmp_path / "other.txt").read_text() == "ran"
    session = build(paths=tmp_path, n_workers=2)
    outcomes = {r.task.name.split("::")[-1]: r.outcome for r in session.execution_reports}
    assert outcomes["task_huge"] == TaskOutcome.FAIL
    assert outcomes["task_after"] == TaskOutcome.SKIP_PREVIOUS_FAILED


def test_a_pool_waiting_for_capacity_says_so_in_the_run(tmp_path, write, runner):
    """Two decorated shapes that cannot run side by side: the second pool's wait is
    printed in the run, and the summary says it waited."""
    from taskcloud.capacity import HostCapacity

    cores = HostCapacity().cores
    write(
        "task_shapes.py",
        f"""
        import time
        import taskcloud

        @taskcloud.function(cpu={cores}, memory="400 MiB", keepalive="120 s")
        def task_whole():
            time.sleep(0.5)

        @taskcloud.function(cpu=1, memory="401 MiB", keepalive="5 s")
        def task_single():
            time.sleep(0.5)
        """,
    )
    result = run_cli(runner, tmp_path, "-n", "2")

    assert result.exit_code == ExitCode.OK, result.output
    assert "waits for capacity" in result.output
    assert "Waited for capacity" in result.output
