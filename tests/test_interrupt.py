"""Ctrl-C during a parallel run stops every worker and keeps finished work."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.conftest import run_subprocess
from tests.conftest import wait_for
from tests.helpers import gone

TASKS = """
import time
from pathlib import Path
from typing import Annotated
from pytask import Product, task

def task_quick(path: Annotated[Path, Product] = Path("quick.txt")) -> None:
    path.write_text("done")

for i in range(4):
    @task(id=str(i))
    def task_long(i: int = i, src: Path = Path("quick.txt"), path: Annotated[Path, Product] = Path(f"long-{i}.txt")) -> None:
        Path(f"started-{i}").touch()
        time.sleep(120)
        path.write_text("never")
"""


@pytest.mark.parametrize(
    "backend",
    ["loky", "processes", pytest.param("dask", marks=pytest.mark.slow)],
)
def test_ctrl_c_stops_workers_and_keeps_results(backend, tmp_path, write) -> None:
    """SIGINT to pytask's process group ends the run and all its worker processes."""
    write("task_interrupt.py", TASKS)
    pytask = run_subprocess(tmp_path, "-n", "2", "--parallel-backend", backend)
    try:
        wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2, 90, "two long tasks starting")
        workers = psutil.Process(pytask.pid).children(recursive=True)
        assert workers, "the backend started no worker processes"

        os.killpg(pytask.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        output, _ = pytask.communicate(timeout=60)
    finally:
        if pytask.poll() is None:
            os.killpg(pytask.pid, signal.SIGKILL)

    assert pytask.returncode != 0
    assert "KeyboardInterrupt" in output or "Interrupted" in output, output
    # The two tasks that were running say so; nothing of the backend's own shutdown
    # (a scheduler already gone, a worker that would not stop) reaches the user.
    assert output.count("Ctrl-C stopped the run before this task finished.") >= 2, output
    assert "Traceback" not in output, output
    assert "WARNING" not in output, output
    assert "ERROR" not in output, output
    wait_for(lambda: gone(*(w.pid for w in workers)), 10, "every worker process exiting")
    assert (tmp_path / "quick.txt").read_text() == "done"
    assert not list(tmp_path.glob("long-*.txt"))
