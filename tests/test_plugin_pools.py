"""Decorated tasks in a pytask run: they go to their pools, everything else stays local."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap

import psutil
import pytest
from pytask import ExitCode
from pytask import TaskOutcome
from pytask import build

from taskcloud.capacity import HostCapacity
from taskcloud.pools import pools
from tests.conftest import INTERNALS
from tests.conftest import run_cli
from tests.conftest import run_subprocess
from tests.conftest import shows_frame
from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools")]

TASKS = """
import os
from pathlib import Path
from typing import Annotated

import pytask
from pytask import Product, task

import taskcloud


def where() -> str:
    try:
        from distributed import get_worker
        return f"dask {get_worker().address}"
    except (ImportError, ValueError):
        return f"process {os.getpid()}"


@taskcloud.function(memory="400 MiB", n_workers=[0, 2], keepalive="5 s")
@task
def task_heavy_below() -> Annotated[str, Path("below.txt")]:
    print("output of the heavy task")
    return where()


@task
@taskcloud.function(memory="400 MiB", n_workers=[0, 2], keepalive="5 s")
def task_heavy_above(path: Annotated[Path, Product] = Path("above.txt")) -> None:
    path.write_text(where())


def task_light(path: Annotated[Path, Product] = Path("light.txt")) -> None:
    path.write_text(where())
"""


def test_decorated_tasks_run_on_their_pool(tmp_path, write, runner) -> None:
    """With -n, decorated tasks (either decorator order) go to the pool, others to loky."""
    write("task_mixed.py", TASKS)
    result = run_cli(runner, tmp_path, "-n", "2")

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "below.txt").read_text().startswith("dask tls://127.0.0.1:")
    assert (tmp_path / "above.txt").read_text().startswith("dask tls://127.0.0.1:")
    light = (tmp_path / "light.txt").read_text()
    assert light.startswith("process ")
    assert light != f"process {os.getpid()}"
    assert "Where tasks ran" in result.output
    assert "loky backend" in result.output
    pool_row = next(line for line in result.output.splitlines() if "memory=400 MiB" in line)
    tasks, started, peak = (cell.strip() for cell in pool_row.split("│")[1:4])
    assert tasks == "2"
    assert int(started) >= 1
    assert int(peak) >= 1


CALLS_A_HELPER = """
from pathlib import Path
from typing import Annotated

from pytask import Product

import taskcloud


@taskcloud.function(n_workers=[0, 1], keepalive="5 s")
def helper(x):
    from distributed import get_worker

    return f"{x} on dask {get_worker().address}"


def task_calls_a_helper(path: Annotated[Path, Product] = Path("helper.txt")) -> None:
    print("the task's own output")
    path.write_text(helper(1))
"""


@pytest.mark.parametrize("backend", ["loky", "processes", "threads"])
def test_a_task_that_calls_a_decorated_function_runs(tmp_path, write, runner, backend) -> None:
    """An ordinary task that calls a decorated function cannot travel to a worker
    process (the function's pool is pytask's): it runs on a thread of pytask's process,
    its calls on the pool, and reports like any task."""
    write("task_helper.py", CALLS_A_HELPER)
    result = run_cli(runner, tmp_path, "-n", "2", "--parallel-backend", backend, "-s")

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "helper.txt").read_text().startswith("1 on dask tls://127.0.0.1:")
    assert "the task's own output" in result.output


def test_a_decorated_function_says_why_it_cannot_be_pickled() -> None:
    """Pickled to go to another process, a decorated function names itself and why."""
    import pickle

    import taskcloud
    from taskcloud.functions import StaysInProcess

    def heavy(x):
        return x

    fn = taskcloud.function(n_workers=[0, 1])(heavy)
    with pytest.raises(StaysInProcess, match=r"taskcloud.function 'heavy' cannot be pickled"):
        pickle.dumps(fn)


def test_without_parallelism_everything_runs_in_process(tmp_path, write) -> None:
    """Without -n, decorated tasks run in pytask's process, where a debugger works."""
    write("task_mixed.py", TASKS)
    session = build(paths=tmp_path)

    assert session.exit_code == ExitCode.OK
    for name in ("below.txt", "above.txt", "light.txt"):
        assert (tmp_path / name).read_text() == f"process {os.getpid()}"
    assert not pools.active()


def test_decorated_task_reports_like_a_local_one(tmp_path, write) -> None:
    """Output, failures and products of decorated tasks arrive as for other tasks."""
    write(
        "task_pool_report.py",
        """
        from pathlib import Path
        from typing import Annotated
        import taskcloud

        @taskcloud.function(keepalive="5 s")
        def task_ok() -> Annotated[str, Path("ok.txt")]:
            print("hello from the pool")
            return "ok"

        @taskcloud.function(keepalive="5 s")
        def task_fails():
            print("about to fail on the pool")
            raise ArithmeticError("failed on the pool")
        """,
    )
    session = build(paths=tmp_path, n_workers=2)

    reports = {r.task.name.split("::")[-1]: r for r in session.execution_reports}
    assert reports["task_ok"].outcome == TaskOutcome.SUCCESS
    assert (tmp_path / "ok.txt").read_text() == "ok"
    assert ("call", "stdout", "hello from the pool\n") in reports["task_ok"].sections
    failed = reports["task_fails"]
    assert failed.outcome == TaskOutcome.FAIL
    assert isinstance(failed.exc_info[1], ArithmeticError)
    assert "raise ArithmeticError" in failed.exc_info[2]
    assert ("call", "stdout", "about to fail on the pool\n") in failed.sections


def test_decorated_failures_show_the_users_frame_and_reason(tmp_path, write, runner) -> None:
    """An error, a timeout or a breakpoint on a pool shows the task file and one reason."""
    path = write(
        "task_pool_faults.py",
        """
        import time
        import taskcloud

        @taskcloud.function(keepalive="5 s")
        def task_raises():
            raise ArithmeticError("failed on the pool")

        @taskcloud.function(timeout="1 s", keepalive="5 s")
        def task_slow():
            time.sleep(60)

        @taskcloud.function(keepalive="5 s")
        def task_debug():
            breakpoint()
        """,
    )
    result = run_cli(runner, tmp_path, "-n", "2")

    assert result.exit_code == ExitCode.FAILED
    assert shows_frame(result.output, path, 7, "task_raises")
    assert 'raise ArithmeticError("failed on the pool")' in result.output
    assert (
        "TaskTimeoutError: 'task_pool_faults.py::task_slow' did not finish within its "
        "timeout of 1 s" in result.output
    )
    assert shows_frame(result.output, path, 15, "task_debug")
    assert "BreakpointError: You cannot use 'breakpoint()'" in result.output
    assert not [root for root in INTERNALS if root in result.output]


def test_ctrl_c_with_busy_pools_leaves_no_worker(tmp_path, write) -> None:
    """SIGINT during a run with busy pool workers ends every worker process."""
    write(
        "task_busy.py",
        """
        import time
        from pathlib import Path
        from pytask import task
        import taskcloud

        for i in range(3):
            @task(id=str(i))
            @taskcloud.function(memory="300 MiB", n_workers=[0, 2], keepalive="30 s")
            def task_busy(i: int = i) -> None:
                Path(f"busy-{i}").touch()
                time.sleep(120)
        """,
    )
    pytask = run_subprocess(tmp_path, "-n", "2")
    try:
        wait_for(lambda: len(list(tmp_path.glob("busy-*"))) >= 2, 90, "two pool tasks starting")
        workers = psutil.Process(pytask.pid).children(recursive=True)
        assert len(workers) >= 2
        os.killpg(pytask.pid, signal.SIGINT)
        output, _ = pytask.communicate(timeout=60)
    finally:
        if pytask.poll() is None:
            os.killpg(pytask.pid, signal.SIGKILL)

    def gone(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(w) for w in workers), 15, "every pool worker exiting")
    assert pytask.returncode != 0
    # The two running calls are not reported as cancelled before they started, and no
    # nanny complains of a worker that would not stop.
    assert output.count("Ctrl-C stopped the run before this task finished.") >= 2, output
    assert "WARNING" not in output, output


ONE_POOL = """
import taskcloud


@taskcloud.function(memory="400 MiB", n_workers=[0, 1], keepalive="2 s")
def task_heavy():
    return None
"""


def test_each_runs_pools_are_numbered_from_one(tmp_path, write, runner) -> None:
    """Two builds in one process: the second run's only pool is pool 1 again, in its
    summary, however many pools ran before it in this process."""
    write("task_one.py", ONE_POOL)
    labels = []
    for _ in range(2):
        result = run_cli(runner, tmp_path, "-n", "2", "--force")
        assert result.exit_code == ExitCode.OK, result.output
        rows = [line for line in result.output.splitlines() if "memory=400 MiB" in line]
        labels.append([row.split("│")[0].strip() for row in rows])
    assert labels == [["pool 1: cpu=1 memory=400 MiB n_workers=[0, 1]"]] * 2


#: A line of dask's or tornado's logs (``distributed.worker - INFO - ...``), or a
#: traceback's first line.
DASK_LOG_LINE = re.compile(r"\b(?:distributed|tornado)\.[\w.]+ - |Traceback|Exception in callback")


def test_dask_logs_stay_out_of_the_terminal_while_a_pool_makes_room(tmp_path) -> None:
    """Two decorated shapes that do not fit side by side, run several times: the idle
    worker of the pool that ran first leaves for the waiting one, and no line of
    dask's or tornado's logs reaches the terminal, in any run.

    Its worker used to be closed while it still held its call's result: dask called
    the retirement off and set the worker running again while it closed, and the
    worker's second close logged a tornado traceback from its process (and the call
    ran again). A closing worker's last log lines came through too, once it had set
    its handler's level back. Either showed in about one run of three.
    """
    cores = HostCapacity().cores  # together they need one core more than the host has
    source = f"""
        import taskcloud

        @taskcloud.function(cpu=1)
        def task_single():
            pass

        @taskcloud.function(cpu={cores}, memory="1 GiB")
        def task_whole():
            pass
        """
    for run in range(6):
        project = tmp_path / f"run-{run}"
        project.mkdir()
        (project / "task_shapes.py").write_text(textwrap.dedent(source))
        pytask = run_subprocess(project, "-n", "2")
        try:
            output, _ = pytask.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(pytask.pid, signal.SIGKILL)
            raise
        assert pytask.returncode == ExitCode.OK, output
        assert "waits for capacity" in output, output  # the path that retires a worker
        leaked = [line for line in output.splitlines() if DASK_LOG_LINE.search(line)]
        assert not leaked, f"run {run + 1}:\n{output}"
        # Each pool's call ran once: no worker was closed before its result was fetched.
        rows = [line.split("│") for line in output.splitlines() if line.startswith(" pool ")]
        assert [row[1].strip() for row in rows] == ["1", "1"], output
        assert [row[2].strip() for row in rows] == ["1", "1"], output
