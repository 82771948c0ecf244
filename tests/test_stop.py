"""-x and --max-failures end a parallel run at once, keeping what finished."""

from __future__ import annotations

import pytest
from pytask import ExitCode
from pytask import TaskOutcome
from pytask import build

from tests.conftest import wait_for
from tests.helpers import gone

TASKS = """
import os
import time
from pathlib import Path
from typing import Annotated
import pytask
from pytask import Product, task

@pytask.mark.try_first
def task_quick(path: Annotated[Path, Product] = Path("quick.txt")) -> None:
    path.write_text("done")

@pytask.mark.try_first
def task_fails() -> None:
    time.sleep(0.5)
    raise ValueError("the failure that stops the run")

for i in range(6):
    @task(id=str(i))
    def task_long(i: int = i, path: Annotated[Path, Product] = Path(f"long-{i}.txt")) -> None:
        Path(f"started-{i}").write_text(str(os.getpid()))
        time.sleep(60)
        path.write_text("never")
"""


@pytest.mark.parametrize(
    "backend", ["loky", "processes", pytest.param("dask", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("option", [{"stop_after_first_failure": True}, {"max_failures": 1}])
def test_stop_cancels_what_runs_and_starts_nothing(backend, option, tmp_path, write) -> None:
    """Once the limit is reached nothing starts, running tasks are killed and not
    reported, and what finished before is kept."""
    write("task_stop.py", TASKS)
    session = build(paths=tmp_path, n_workers=2, parallel_backend=backend, **option)

    assert session.exit_code == ExitCode.FAILED
    outcomes = {r.task.name.split("::")[-1]: r.outcome for r in session.execution_reports}
    assert outcomes == {"task_quick": TaskOutcome.SUCCESS, "task_fails": TaskOutcome.FAIL}
    assert (tmp_path / "quick.txt").read_text() == "done"
    # The build returned long before a long task could finish: they were stopped.
    assert not list(tmp_path.glob("long-*.txt"))
    started = list(tmp_path.glob("started-*"))
    assert len(started) <= 2
    for marker in started:
        pid = int(marker.read_text())
        wait_for(lambda pid=pid: gone(pid), 10, f"the worker {pid} of a stopped task ending")


def test_stop_on_threads_starts_nothing_more(tmp_path, write) -> None:
    """Threads cannot be killed; still, nothing new starts once -x is reached."""
    write(
        "task_threads.py",
        """
        import time
        from pathlib import Path
        import pytask
        from pytask import task

        @pytask.mark.try_first
        def task_fails():
            time.sleep(0.2)
            raise ValueError("stop")

        for i in range(6):
            @task(id=str(i))
            def task_short(i: int = i):
                Path(f"started-{i}").touch()
                time.sleep(1)
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend="threads", max_failures=1)

    assert session.exit_code == ExitCode.FAILED
    assert [r.outcome for r in session.execution_reports] == [TaskOutcome.FAIL]
    assert len(list(tmp_path.glob("started-*"))) <= 3
