"""Tiny tasks share submissions to the backend; each keeps its own outcome."""

from __future__ import annotations

import pickle
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cloudpickle
import pytest
from pytask import ExitCode
from pytask import TaskOutcome
from pytask import build

from taskcloud import worker
from taskcloud.call import TaskCall
from taskcloud.plugin.batches import MOST

#: A backend that hands every submission to a built-in one and logs the task names
#: each submission carries, one line per submission.
COUNTING = """
import pickle
from concurrent.futures import Executor
from pathlib import Path
from taskcloud import registry

LOG = Path(__file__).parent / "submissions.log"

class Counting(Executor):
    def __init__(self, inner):
        self.inner = inner

    def submit(self, fn, /, *args, **kwargs):
        blobs = pickle.loads(args[0]) if fn.__name__ == "run_batch" else [args[0]]
        names = [pickle.loads(blob).name.split("::")[-1] for blob in blobs]
        with LOG.open("a") as log:
            log.write(" ".join(names) + "\\n")
        return self.inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.inner.shutdown(wait=wait)

registry.register_parallel_backend(
    "custom",
    lambda n_workers: Counting(registry.get_parallel_backend("{inner}", n_workers)),
    worker_type="processes",
)
"""


def _submissions(tmp_path) -> list[list[str]]:
    lines = (tmp_path / "submissions.log").read_text().splitlines()
    return [line.split() for line in lines]


@pytest.mark.parametrize(
    "inner", ["loky", pytest.param("dask", marks=pytest.mark.slow)], ids=["loky", "dask"]
)
@pytest.mark.usefixtures("controlled_batches")
def test_tiny_tasks_share_submissions_and_keep_their_outcomes(inner, tmp_path, write) -> None:
    """60 tiny tasks travel in batches; output, failure and product stay per task."""
    write("task_counting.py", COUNTING.replace("{inner}", inner))
    write(
        "task_tiny.py",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, task

        for i in range(60):
            @task(id=str(i))
            def task_tiny(i: int = i, path: Annotated[Path, Product] = Path(f"out/{i}.txt")):
                print(f"stdout of {i}")
                if i == 45:
                    raise ValueError(f"failure of {i}")
                path.write_text(str(i * i))
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend="custom")

    assert session.exit_code == ExitCode.FAILED
    submissions = _submissions(tmp_path)
    # A batch may give back calls it had no time for (here: after rendering the
    # failure's traceback); those are sent again, so a name may appear twice.
    assert {name for names in submissions for name in names} == {
        f"task_tiny[{i}]" for i in range(60)
    }
    assert max(len(names) for names in submissions) == MOST
    assert len(session.execution_reports) == 60
    for report in session.execution_reports:
        i = int(re.search(r"\[(\d+)\]", report.task.name).group(1))
        sections = {(when, kind): text for when, kind, text in report.sections}
        assert sections[("call", "stdout")] == f"stdout of {i}\n"
        if i == 45:
            assert report.outcome == TaskOutcome.FAIL
            assert str(report.exc_info[1]) == "failure of 45"
        else:
            assert report.outcome == TaskOutcome.SUCCESS
            assert (tmp_path / "out" / f"{i}.txt").read_text() == str(i * i)


def _touch(path: Path, seconds: float = 0.0) -> None:
    time.sleep(seconds)
    path.write_text("ran")


def test_a_batch_starts_no_call_after_its_budget(tmp_path) -> None:
    """On a worker, a batch whose budget a slow call used up gives the rest back."""
    paths = [tmp_path / name for name in ("tiny", "slow", "after")]
    calls = [
        TaskCall(name=path.name, function=_touch, kwargs={"path": path, "seconds": seconds})
        for path, seconds in zip(paths, [0.0, 0.2, 0.0], strict=True)
    ]
    payload = pickle.dumps([cloudpickle.dumps(call) for call in calls])
    with ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(worker.warm_up).result()
        short = pickle.loads(pool.submit(worker.run_batch, payload, 0.1).result())
        assert [path.exists() for path in paths] == [True, True, False]
        full = pickle.loads(pool.submit(worker.run_batch, payload, 10.0).result())

    assert len(short) == 2
    assert len(full) == 3
    assert all(cloudpickle.loads(blob).exc_info is None for blob in short + full)
    assert paths[2].exists()


@pytest.mark.usefixtures("controlled_batches")
def test_calls_given_back_by_a_batch_run_once(tmp_path, write) -> None:
    """A slow call inside a batch sends the calls after it out again; all run once.

    With one worker, calls run in the order they are sent: two alone while their
    function is new, then batches of eight; the twentieth call to run is the second
    of a batch, and it is slow.
    """
    write("task_counting.py", COUNTING.replace("{inner}", "loky"))
    write(
        "task_mixed.py",
        """
        import time
        from pathlib import Path
        from pytask import task

        HERE = Path(__file__).parent

        for i in range(60):
            @task(id=str(i))
            def task_mostly_tiny(i: int = i):
                ran = HERE / "ran.log"
                if ran.exists() and len(ran.read_text().split()) == 19:
                    (HERE / "slow.txt").write_text(f"task_mostly_tiny[{i}]")
                    time.sleep(1.2)
                with ran.open("a") as log:
                    log.write(f"{i}\\n")
        """,
    )
    session = build(paths=tmp_path, n_workers=1, parallel_backend="custom")

    assert session.exit_code == ExitCode.OK
    assert len(session.execution_reports) == 60
    assert sorted(map(int, (tmp_path / "ran.log").read_text().split())) == list(range(60))
    submissions = _submissions(tmp_path)
    slow = (tmp_path / "slow.txt").read_text()
    (batch,) = [names for names in submissions if slow in names]
    rest = batch[batch.index(slow) + 1 :]
    assert rest, submissions
    assert rest in submissions
    assert sum(len(names) for names in submissions) == 60 + len(rest)


def test_no_batches_when_failures_stop_the_session(tmp_path, write) -> None:
    """With --max-failures every call travels alone, so no batch runs on after the stop."""
    write("task_counting.py", COUNTING.replace("{inner}", "loky"))
    write(
        "task_fail.py",
        """
        from pytask import task

        for i in range(30):
            @task(id=str(i))
            def task_fail(i: int = i):
                if i % 10 == 9:
                    raise ValueError(i)
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend="custom", max_failures=3)

    assert session.exit_code == ExitCode.FAILED
    assert {len(names) for names in _submissions(tmp_path)} == {1}
