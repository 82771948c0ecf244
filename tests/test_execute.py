"""Per-task behaviour on every backend: output, warnings, tracebacks, products."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
from pytask import ExitCode
from pytask import TaskOutcome
from pytask import build

from tests.conftest import BACKENDS
from tests.conftest import INTERNALS
from tests.conftest import run_cli
from tests.conftest import run_subprocess
from tests.conftest import shows_frame


def _outcomes(session) -> dict[str, TaskOutcome]:
    return {
        report.task.name.split("::")[-1]: report.outcome for report in session.execution_reports
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_and_warnings_belong_to_their_task(backend, tmp_path, write) -> None:
    """Three tasks in flight that finish out of order keep their own output."""
    write(
        "task_out.py",
        """
        import sys
        import time
        import warnings
        from pytask import task

        for i, delay in enumerate([0.8, 0.4, 0.0]):
            @task(id=str(i))
            def task_print(i=i, delay=delay):
                print(f"stdout of {i}")
                print(f"stderr of {i}", file=sys.stderr)
                warnings.warn(f"warning of {i}")
                time.sleep(delay)
                if i != 1:
                    raise ValueError(f"failure of {i}")
        """,
    )
    session = build(paths=tmp_path, n_workers=3, parallel_backend=backend)

    assert session.exit_code == ExitCode.FAILED
    assert len(session.execution_reports) == 3
    for report in session.execution_reports:
        i = re.search(r"\[(\d)\]", report.task.name).group(1)
        sections = {(when, kind): text for when, kind, text in report.sections}
        assert sections[("call", "stdout")] == f"stdout of {i}\n"
        assert sections[("call", "stderr")] == f"stderr of {i}\n"
        if report.outcome == TaskOutcome.FAIL:
            assert str(report.exc_info[1]) == f"failure of {i}"
    ids = {warning.id_: warning.message for warning in session.warnings}
    assert len(ids) == 3
    for id_, message in ids.items():
        i = re.search(r"\[(\d)\]", id_).group(1)
        assert f"UserWarning: warning of {i}" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_products_arrive_in_the_main_process(backend, tmp_path, write) -> None:
    """Product paths, return annotations, PythonNodes and nested returns are stored."""
    write(
        "task_products.py",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, PythonNode

        NODE = PythonNode(name="shared", hash=True)
        FACTOR = 6

        def times(value):
            return value * FACTOR

        class Box:
            def __init__(self, value):
                self.value = value

        def task_path(path: Annotated[Path, Product] = Path("a.txt")) -> None:
            path.write_text("a")

        def task_return() -> Annotated[str, Path("b.txt")]:
            return "b"

        def task_python() -> Annotated[Box, NODE]:
            return Box(times(7))

        def task_consume(box: Annotated[Box, NODE], path: Annotated[Path, Product] = Path("c.txt")) -> None:
            path.write_text(str(box.value))

        def task_nested() -> Annotated[dict, {"x": Path("x.txt"), "y": [Path("y0.txt"), Path("y1.txt")]}]:
            return {"x": "X", "y": ["Y0", "Y1"]}
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend=backend)

    assert session.exit_code == ExitCode.OK, [r.exc_info for r in session.execution_reports]
    contents = {
        name: (tmp_path / name).read_text()
        for name in ("a.txt", "b.txt", "c.txt", "x.txt", "y0.txt", "y1.txt")
    }
    assert contents == {
        "a.txt": "a",
        "b.txt": "b",
        "c.txt": "42",
        "x.txt": "X",
        "y0.txt": "Y0",
        "y1.txt": "Y1",
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_shows_its_own_traceback(backend, tmp_path, write, runner) -> None:
    """A failing task is rendered like a local failure, locals included on request."""
    write(
        "task_fail.py",
        """
        def task_fail():
            secret_local = "value-of-the-local"
            raise ValueError("boom from the task")
        """,
    )
    result = run_cli(runner, tmp_path, "-n", "2", "--parallel-backend", backend, "--show-locals")

    assert result.exit_code == ExitCode.FAILED
    assert "Task task_fail.py::task_fail failed" in result.output
    assert 'raise ValueError("boom from the task")' in result.output
    assert "ValueError: boom from the task" in result.output
    assert "'value-of-the-local'" in result.output
    assert "worker.py" not in result.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_names_the_users_files_and_lines(backend, tmp_path, write, runner) -> None:
    """Each frame of the task module, helpers and nested code included, has its path and line."""
    path = write(
        "task_divide.py",
        """
        def inverses(values):
            return [1 / value for value in values]

        def task_divide():
            return inverses([1, 0])
        """,
    )
    result = run_cli(runner, tmp_path, "-n", "2", "--parallel-backend", backend)

    assert result.exit_code == ExitCode.FAILED
    assert shows_frame(result.output, path, 6, "task_divide")
    assert shows_frame(result.output, path, 3, "inverses")
    assert "return [1 / value for value in values]" in result.output
    assert "ZeroDivisionError: division by zero" in result.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_breakpoint_shows_the_users_line_and_the_reason(backend, tmp_path, write, runner) -> None:
    """The report shows the task's breakpoint() line and one reason, no taskcloud frame."""
    path = write(
        "task_debug.py",
        """
        def task_breakpoint():
            breakpoint()
        """,
    )
    result = run_cli(runner, tmp_path, "-n", "2", "--parallel-backend", backend)

    assert result.exit_code == ExitCode.FAILED
    assert shows_frame(result.output, path, 3, "task_breakpoint")
    assert "BreakpointError: You cannot use 'breakpoint()' or 'pdb.set_trace()'" in result.output
    assert not [root for root in INTERNALS if root in result.output]


def test_full_traceback_on_request(tmp_path, write, runner, monkeypatch) -> None:
    """TASKCLOUD_TRACEBACK=full keeps taskcloud's frames in the report."""
    write("task_fail.py", "def task_fail():\n    raise ValueError('boom')\n")
    monkeypatch.setenv("TASKCLOUD_TRACEBACK", "full")
    result = run_cli(runner, tmp_path, "-n", "2", "--parallel-backend", "threads")

    assert result.exit_code == ExitCode.FAILED
    assert "worker.py" in result.output
    assert "in run_call" in result.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_breakpoint_gives_a_clear_error(backend, tmp_path, write) -> None:
    """breakpoint() and pdb.set_trace() tell the user to run without parallelism."""
    write(
        "task_debug.py",
        """
        import pdb

        def task_breakpoint():
            breakpoint()

        def task_set_trace():
            pdb.set_trace()
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend=backend)

    assert len(session.execution_reports) == 2
    for report in session.execution_reports:
        assert report.outcome == TaskOutcome.FAIL
        assert str(report.exc_info[1]).startswith(
            "You cannot use 'breakpoint()' or 'pdb.set_trace()' while parallelizing the "
            "execution of tasks. "
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_filterwarnings_marks_and_options_apply(backend, tmp_path, write) -> None:
    """Warning filters from the mark and from the configuration are honoured."""
    write(
        "task_filters.py",
        """
        import warnings
        import pytask

        @pytask.mark.filterwarnings("ignore:hidden by the mark")
        def task_marked():
            warnings.warn("hidden by the mark")
            warnings.warn("shown despite the mark")

        def task_plain():
            warnings.warn("hidden by the mark")
            warnings.warn("hidden by the session")
        """,
    )
    session = build(
        paths=tmp_path,
        n_workers=2,
        parallel_backend=backend,
        filterwarnings=["ignore:hidden by the session"],
    )

    shown = sorted(
        (w.id_.split("::")[-1], w.message.split("UserWarning: ")[1].splitlines()[0])
        for w in session.warnings
    )
    assert shown == [
        ("task_marked", "shown despite the mark"),
        ("task_plain", "hidden by the mark"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_markers_behave_as_in_a_serial_run(backend, tmp_path, write) -> None:
    """skip, persist and skip-unchanged give the same outcomes as without -n."""
    source = """
        from pathlib import Path
        from typing import Annotated
        import pytask
        from pytask import Product

        @pytask.mark.skip
        def task_skipped(path: Annotated[Path, Product] = Path("skipped.txt")):
            path.write_text("no")

        @pytask.mark.persist
        def task_persisted(path: Annotated[Path, Product] = Path("persisted.txt")):
            path.write_text("new")

        def task_plain(path: Annotated[Path, Product] = Path("plain.txt")):
            path.write_text("plain")

        def task_after(src: Path = Path("plain.txt"), path: Annotated[Path, Product] = Path("after.txt")):
            path.write_text(src.read_text() + "!")
        """
    outcomes = []
    for mode, root in (("serial", tmp_path / "serial"), ("parallel", tmp_path / "parallel")):
        root.mkdir()
        (root / "task_markers.py").write_text(__import__("textwrap").dedent(source))
        (root / "persisted.txt").write_text("old")
        kwargs = {"n_workers": 2, "parallel_backend": backend} if mode == "parallel" else {}
        first = _outcomes(build(paths=root, **kwargs))
        second = _outcomes(build(paths=root, **kwargs))
        outcomes.append((first, second))
        assert (root / "after.txt").read_text() == "plain!"

    assert outcomes[0] == outcomes[1]
    first, second = outcomes[1]
    assert first["task_persisted"] == TaskOutcome.PERSISTENCE
    assert second["task_plain"] == TaskOutcome.SKIP_UNCHANGED


@pytest.mark.parametrize("backend", BACKENDS)
def test_chains_run_in_order_and_record_their_state(backend, tmp_path, write) -> None:
    """A chain's links start before pytask has recorded their predecessor; still each
    sees its predecessor's product, a failed link skips the rest of its chain, and a
    second run finds every finished link unchanged."""
    write(
        "task_chains.py",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, task

        for chain, length, broken in (("good", 8, None), ("bad", 4, 1)):
            for i in range(length):
                @task(id=f"{chain}{i}")
                def task_link(
                    i: int = i,
                    broken: int | None = broken,
                    src: Path = Path(f"{chain}{i - 1}.txt") if i else Path("seed.txt"),
                    path: Annotated[Path, Product] = Path(f"{chain}{i}.txt"),
                ) -> None:
                    if i == broken:
                        raise RuntimeError("this link breaks")
                    path.write_text(src.read_text() + str(i))
        """,
    )
    (tmp_path / "seed.txt").write_text("s")

    first = _outcomes(build(paths=tmp_path, n_workers=2, parallel_backend=backend))
    for name in [name for name in sys.modules if name.endswith("task_chains")]:
        del sys.modules[name]  # else pytask finds the module imported and no tasks in it
    second = _outcomes(build(paths=tmp_path, n_workers=2, parallel_backend=backend))

    assert (tmp_path / "good7.txt").read_text() == "s01234567"
    assert [first[f"task_link[good{i}]"] for i in range(8)] == [TaskOutcome.SUCCESS] * 8
    assert first["task_link[bad1]"] == TaskOutcome.FAIL
    assert first["task_link[bad2]"] == first["task_link[bad3]"] == TaskOutcome.SKIP_PREVIOUS_FAILED
    assert [second[f"task_link[good{i}]"] for i in range(8)] == [TaskOutcome.SKIP_UNCHANGED] * 8
    assert second["task_link[bad0]"] == TaskOutcome.SKIP_UNCHANGED


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_after_first_failure(backend, tmp_path, write) -> None:
    """-x stops submitting: most tasks never run, and nothing finished is lost."""
    write(
        "task_stop.py",
        """
        import time
        from pathlib import Path
        from typing import Annotated
        import pytask
        from pytask import Product, task

        @pytask.mark.try_first
        def task_fail():
            raise RuntimeError("first failure")

        for i in range(20):
            @task(id=str(i))
            def task_slow(path: Annotated[Path, Product] = Path(f"out/{i}.txt")):
                time.sleep(0.2)
                path.write_text("done")
        """,
    )
    session = build(
        paths=tmp_path, n_workers=2, parallel_backend=backend, stop_after_first_failure=True
    )

    written = list((tmp_path / "out").glob("*.txt")) if (tmp_path / "out").exists() else []
    succeeded = [r for r in session.execution_reports if r.outcome == TaskOutcome.SUCCESS]
    assert session.exit_code == ExitCode.FAILED
    assert len(written) < 10
    # Every reported success wrote its file; a task stopped right after writing its
    # file is dropped unreported, at most one per worker.
    assert len(succeeded) <= len(written) <= len(succeeded) + 2


def test_max_failures_stops_submission(tmp_path, write) -> None:
    """--max-failures 2 stops before all six failing tasks have run."""
    write(
        "task_failures.py",
        """
        from pytask import task

        for i in range(6):
            @task(id=str(i))
            def task_fail():
                raise RuntimeError("failure")
        """,
    )
    session = build(paths=tmp_path, n_workers=1, parallel_backend="loky", max_failures=2)

    failed = [r for r in session.execution_reports if r.outcome == TaskOutcome.FAIL]
    assert 2 <= len(failed) < 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_priorities_hold_with_two_workers(backend, tmp_path, write) -> None:
    """With two workers the first report is a try_first task, the last a try_last one."""
    write(
        "task_order.py",
        """
        import time
        import pytask

        @pytask.mark.try_first
        def task_0():
            time.sleep(0.1)

        def task_1():
            time.sleep(0.1)

        @pytask.mark.try_last
        def task_2():
            time.sleep(0.1)

        @pytask.mark.try_first
        def task_3():
            time.sleep(0.1)

        def task_4():
            time.sleep(0.1)

        @pytask.mark.try_last
        def task_5():
            time.sleep(0.1)
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend=backend)

    assert session.exit_code == ExitCode.OK
    names = [r.task.name.split("::")[-1] for r in session.execution_reports]
    assert names[0] in ("task_0", "task_3"), names
    assert names[-1] in ("task_2", "task_5"), names


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_node_saved_in_the_task_arrives(backend, tmp_path, write) -> None:
    """A PythonNode product that the task saves into reaches its dependents."""
    write(
        "task_node.py",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, PythonNode

        TEXT = PythonNode(name="text")

        def task_save(node: Annotated[PythonNode, Product] = TEXT) -> None:
            node.save("saved in a worker")

        def task_use(text: Annotated[str, TEXT], path: Annotated[Path, Product] = Path("out.txt")) -> None:
            path.write_text(text)
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend=backend)

    assert session.exit_code == ExitCode.OK, [r.exc_info for r in session.execution_reports]
    assert (tmp_path / "out.txt").read_text() == "saved in a worker"


@pytest.mark.parametrize("backend", ["loky", "threads"])
def test_priorities_hold(backend, tmp_path, write) -> None:
    """try_first tasks start first and try_last tasks last."""
    write(
        "task_order.py",
        """
        import pytask

        @pytask.mark.try_last
        def task_last():
            return None

        def task_middle():
            return None

        @pytask.mark.try_first
        def task_first():
            return None
        """,
    )
    session = build(paths=tmp_path, n_workers=1, parallel_backend=backend)

    starts = sorted(session.execution_reports, key=lambda r: r.task.attributes["duration"][0])
    assert [r.task.name.split("::")[-1] for r in starts] == [
        "task_first",
        "task_middle",
        "task_last",
    ]


HELPED_TASKS = """
    import sys
    from pathlib import Path
    from typing import Annotated

    sys.path.insert(0, str(Path(__file__).parent))

    import helpers
    from helperpkg.util import shout
    from pytask import Product

    import taskcloud


    def task_module(path: Annotated[Path, Product] = Path("module.txt")) -> None:
        path.write_text(helpers.answer())


    def task_package(path: Annotated[Path, Product] = Path("package.txt")) -> None:
        path.write_text(shout("package"))


    @taskcloud.function(keepalive="1 s")
    def task_decorated(path: Annotated[Path, Product] = Path("decorated.txt")) -> None:
        path.write_text(helpers.answer() + shout(" decorated"))
"""

HELPERS = """
    import threading

    from helperpkg import util

    #: Module state that cannot be pickled: the module is imported, not copied.
    LOCK = threading.Lock()


    def answer():
        with LOCK:
            return util.twice("21")
"""

HELPER_PACKAGE = """
    def shout(text):
        return text.upper()


    def twice(text):
        return text * 2
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_helpers_imported_through_sys_path_reach_the_workers(backend, tmp_path, write) -> None:
    """A helper module and a helper package that the task module finds through the
    folder it puts on sys.path import in the backend's workers, which started before
    that folder was on sys.path, and in a decorated task's pool."""
    write("project/task_helped.py", HELPED_TASKS)
    write("project/helpers.py", HELPERS)
    write("project/helperpkg/__init__.py", "")
    write("project/helperpkg/util.py", HELPER_PACKAGE)
    # From tmp_path, so that the project's folder is not on sys.path as pytask starts.
    pytask = run_subprocess(tmp_path, "project", "-n", "2", "--parallel-backend", backend)
    try:
        output, _ = pytask.communicate(timeout=180)
    finally:
        if pytask.poll() is None:
            os.killpg(pytask.pid, signal.SIGKILL)

    assert pytask.returncode == 0, output
    assert "ModuleNotFoundError" not in output, output
    texts = {
        name: (tmp_path / "project" / f"{name}.txt").read_text()
        for name in ("module", "package", "decorated")
    }
    assert texts == {"module": "2121", "package": "PACKAGE", "decorated": "2121 DECORATED"}


def test_custom_remote_backend_moves_files(tmp_path, write) -> None:
    """With remote=True, dependencies travel to the worker and products travel back."""
    write("in.txt", "hello")
    write(
        "task_remote.py",
        """
        from concurrent.futures import ProcessPoolExecutor
        from pathlib import Path
        from typing import Annotated
        from pytask import Product
        from taskcloud import ParallelBackend, registry

        def build_executor(n_workers):
            return ProcessPoolExecutor(max_workers=n_workers)

        registry.register_parallel_backend(
            ParallelBackend.CUSTOM, build_executor, worker_type="processes", remote=True
        )

        def task_copy(src: Path = Path("in.txt"), path: Annotated[Path, Product] = Path("out.txt")) -> None:
            path.write_text(f"{src.read_text().upper()}|{src}|{path}")
        """,
    )
    session = build(paths=tmp_path, n_workers=2, parallel_backend="custom")

    assert session.exit_code == ExitCode.OK
    text, src, dst = (tmp_path / "out.txt").read_text().split("|")
    assert text == "HELLO"
    assert Path(src) != tmp_path / "in.txt"
    assert Path(dst) != tmp_path / "out.txt"


def test_string_registered_backend_runs(tmp_path, write, runner) -> None:
    """A backend a hook module registers under a plain name is selectable on the
    command line."""
    # A name of its own: pytask imports a hook module once per process.
    hooks = write(
        "named_hooks.py",
        """
        from concurrent.futures import ThreadPoolExecutor
        from taskcloud import registry

        registry.register_parallel_backend(
            "mycluster",
            lambda n_workers: ThreadPoolExecutor(n_workers, thread_name_prefix="mycluster"),
            worker_type="threads",
        )
        """,
    )
    write(
        "task_named.py",
        """
        import threading
        from pathlib import Path
        from typing import Annotated
        from pytask import Product

        def task_where(path: Annotated[Path, Product] = Path("where.txt")) -> None:
            path.write_text(threading.current_thread().name)
        """,
    )
    result = run_cli(
        runner, tmp_path, "--hook-module", str(hooks), "--parallel-backend", "mycluster"
    )

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "where.txt").read_text().startswith("mycluster")
