"""-n, --parallel-backend and their configuration keys: parsing and bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pytask import ExitCode
from pytask import build

from taskcloud.backends import ParallelBackend
from taskcloud.backends import default_n_workers
from taskcloud.backends import registry
from tests.conftest import run_cli

TASK = """
from pathlib import Path
from typing import Annotated
from pytask import Product

def task_pid(path: Annotated[Path, Product] = Path("pid.txt")) -> None:
    import os
    path.write_text(str(os.getpid()))
"""


@pytest.mark.parametrize(
    ("value", "shown"), [("0", "n_workers=0"), ("-2", "n_workers=-2"), ("many", "n_workers='many'")]
)
def test_bad_n_workers_on_the_command_line(value, shown, tmp_path, write, runner) -> None:
    """-n takes an integer >= 1 or 'auto'; anything else is a usage error."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "-n", value)

    assert result.exit_code == ExitCode.CONFIGURATION_FAILED
    assert f"{shown} is invalid. Expected an integer >= 1 or 'auto'" in result.output
    assert not (tmp_path / "pid.txt").exists()


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('n_workers = "many"', "n_workers='many' is invalid"),
        ("n_workers = [2]", "n_workers=[2] is invalid"),
        ("n_workers = 1.5", "n_workers=1.5 is invalid"),
        ("parallel_backend = 3", "parallel_backend=3 is invalid"),
    ],
)
def test_bad_values_in_the_configuration_file(line, shown, tmp_path, write, runner) -> None:
    """Wrong types under [tool.pytask.ini_options] fail before any task runs."""
    write("pyproject.toml", f"[tool.pytask.ini_options]\n{line}\n")
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path)

    assert result.exit_code != ExitCode.OK
    assert shown in " ".join(result.output.split())
    assert not (tmp_path / "pid.txt").exists()


def test_configuration_file_keys(tmp_path, write, runner) -> None:
    """n_workers and parallel_backend are read from pyproject.toml."""
    write(
        "pyproject.toml",
        '[tool.pytask.ini_options]\nn_workers = 2\nparallel_backend = "threads"\n',
    )
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path)

    assert result.exit_code == ExitCode.OK, result.output
    assert "Running tasks on 2 workers of the 'threads' backend." in result.output


@pytest.mark.parametrize("command", ["collect", "clean", "markers"])
def test_other_commands_start_no_workers(command, tmp_path, write, runner) -> None:
    """Commands that run no task read n_workers from the file but start nothing."""
    from _pytask.pluginmanager import storage
    from pytask import cli

    write("pyproject.toml", "[tool.pytask.ini_options]\nn_workers = 2\n")
    write("task_pid.py", TASK)
    storage.create()
    result = runner.invoke(cli, [command, tmp_path.as_posix()], env={"COLUMNS": "150"})

    assert result.exit_code == ExitCode.OK, result.output
    assert "workers of the" not in result.output
    assert not (tmp_path / "pid.txt").exists()


def test_n_above_one_defaults_to_loky(tmp_path, write, runner) -> None:
    """-n 2 without a backend runs on loky, in another process."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "-n", "2")

    assert result.exit_code == ExitCode.OK, result.output
    assert "of the 'loky' backend" in result.output
    assert (tmp_path / "pid.txt").read_text() != str(os.getpid())


def test_n_auto_is_cores_less_one(tmp_path, write, runner) -> None:
    """-n auto means the number of cores minus one, at least one."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "-n", "auto", "--parallel-backend", "threads")

    assert result.exit_code == ExitCode.OK, result.output
    assert f"Running tasks on {default_n_workers()} worker" in result.output


def test_n_auto_runs_in_parallel_even_on_one_worker(tmp_path, write, runner, monkeypatch) -> None:
    """On two cores -n auto is one worker, and the tasks still run on loky."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "-n", "auto")

    assert result.exit_code == ExitCode.OK, result.output
    assert "Running tasks on 1 worker of the 'loky' backend." in result.output
    assert (tmp_path / "pid.txt").read_text() != str(os.getpid())


@pytest.mark.slow
def test_n_auto_on_one_worker_sends_decorated_tasks_to_their_pool(
    tmp_path, write, runner, monkeypatch
) -> None:
    """On two cores -n auto still hands a decorated task to its pool."""
    from taskcloud.pools import pools

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    write(
        "task_heavy.py",
        """
        from pathlib import Path
        from typing import Annotated
        import taskcloud

        @taskcloud.function(memory="400 MiB", n_workers=[0, 1], keepalive="5 s")
        def task_heavy() -> Annotated[str, Path("heavy.txt")]:
            from distributed import get_worker
            return get_worker().address
        """,
    )
    try:
        result = run_cli(runner, tmp_path, "-n", "auto")
    finally:
        pools.close_all()

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "heavy.txt").read_text().startswith("tls://127.0.0.1:")


def test_configuration_holds_the_backend_member(tmp_path, write) -> None:
    """session.config["parallel_backend"] is the ParallelBackend member, as in
    pytask-parallel, and equals its name."""
    write("task_pid.py", TASK)
    session = build(paths=tmp_path, n_workers=2)

    assert session.exit_code == ExitCode.OK
    assert session.config["parallel_backend"] is ParallelBackend.LOKY
    assert session.config["parallel_backend"] == "loky"


@pytest.mark.parametrize(
    ("pyproject", "args"),
    [
        pytest.param(None, ("-n", "2", "--parallel-backend", "none"), id="command-line"),
        pytest.param('n_workers = 2\nparallel_backend = "none"', (), id="configuration-file"),
    ],
)
def test_explicit_none_runs_in_pytask_process(pyproject, args, tmp_path, write, runner) -> None:
    """An explicit none keeps the tasks in pytask's process, even with -n 2."""
    if pyproject:
        write("pyproject.toml", f"[tool.pytask.ini_options]\n{pyproject}\n")
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, *args)

    assert result.exit_code == ExitCode.OK, result.output
    assert "Running tasks on" not in result.output
    assert (tmp_path / "pid.txt").read_text() == str(os.getpid())


@pytest.mark.parametrize("flag", ["--pdb", "--dry-run"])
def test_debugging_flags_run_serially(flag, tmp_path, write, runner) -> None:
    """--pdb and --dry-run keep every task in pytask's own process."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "-n", "2", flag)

    assert result.exit_code == ExitCode.OK, result.output
    assert "workers of the" not in result.output
    if flag == "--dry-run":
        assert not (tmp_path / "pid.txt").exists()
    else:
        assert (tmp_path / "pid.txt").read_text() == str(os.getpid())


def test_trace_runs_serially(tmp_path, write, runner, capfd) -> None:
    """--trace opens the debugger in pytask's own process, not in a worker."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "-n", "2", "--trace")

    debugger = capfd.readouterr().out
    assert "workers of the" not in result.output
    assert "task_pid.py(7)task_pid()" in debugger
    assert "(Pdb)" in debugger


UNKNOWN = "No registered parallel backend found for 'lokyy'. Registered: 'dask', 'loky', "


@pytest.mark.parametrize("source", ["command-line", "configuration-file"])
def test_unknown_backend_is_a_configuration_failure(source, tmp_path, write, runner) -> None:
    """An unregistered name fails the configuration, listing the registered names."""
    args = ("--parallel-backend", "lokyy") if source == "command-line" else ()
    if source == "configuration-file":
        write("pyproject.toml", '[tool.pytask.ini_options]\nparallel_backend = "lokyy"\n')
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, *args)

    assert result.exit_code == ExitCode.CONFIGURATION_FAILED, result.output
    assert UNKNOWN + "'processes', 'threads'." in " ".join(result.output.split())
    assert "Also accepted: 'none' (every task in pytask's process) and 'custom'" in (
        " ".join(result.output.split())
    )
    assert "Running tasks on" not in result.output
    assert not (tmp_path / "pid.txt").exists()


def test_unknown_backend_fails_a_programmatic_build(tmp_path, write, capsys) -> None:
    """pytask.build with an unregistered name fails its configuration too."""
    write("task_pid.py", TASK)
    session = build(paths=tmp_path, n_workers=2, parallel_backend="lokyy")

    output = " ".join(capsys.readouterr().out.split())
    assert session.exit_code == ExitCode.CONFIGURATION_FAILED
    assert UNKNOWN in output
    assert "Running tasks on" not in output
    assert not (tmp_path / "pid.txt").exists()


def test_custom_registered_nowhere_fails_before_any_task(tmp_path, write, runner) -> None:
    """custom may come from a task module; registered by none, the build stops."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "--parallel-backend", "custom")

    assert result.exit_code == ExitCode.FAILED
    output = " ".join(result.output.split())
    assert "No registered parallel backend found for 'custom'. Registered: 'dask'," in output
    assert (
        "Register 'custom' by the time the tasks run: registry.register_parallel_backend("
        "ParallelBackend.CUSTOM, build_executor)" in output
    )
    assert not (tmp_path / "pid.txt").exists()


HOOKS = """
from concurrent.futures import ThreadPoolExecutor
from taskcloud import registry

registry.register_parallel_backend(
    "mycluster",
    lambda n_workers: ThreadPoolExecutor(n_workers, thread_name_prefix="mycluster"),
    worker_type="threads",
)
"""

WHERE = """
import threading
from pathlib import Path
from typing import Annotated
from pytask import Product

def task_where(path: Annotated[Path, Product] = Path("where.txt")) -> None:
    path.write_text(threading.current_thread().name)
"""


def test_hook_module_backend_lasts_its_session(tmp_path, write, runner) -> None:
    """A name a --hook-module registers is selectable, and gone after the session."""
    hooks = write("backend_hooks.py", HOOKS)  # imported once per process
    write("task_where.py", WHERE)
    result = run_cli(
        runner, tmp_path, "--hook-module", str(hooks), "--parallel-backend", "mycluster"
    )

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "where.txt").read_text().startswith("mycluster")
    assert "mycluster" not in registry


def test_task_module_backend_is_forgotten_after_the_build(tmp_path, write) -> None:
    """custom, registered by a task module, is gone from the registry after the build."""
    write(
        "task_where.py",
        WHERE
        + """
from concurrent.futures import ThreadPoolExecutor
from taskcloud import ParallelBackend, registry

registry.register_parallel_backend(
    ParallelBackend.CUSTOM,
    lambda n_workers: ThreadPoolExecutor(n_workers, thread_name_prefix="custom"),
    worker_type="threads",
)
""",
    )
    session = build(paths=tmp_path, parallel_backend="custom")

    assert session.exit_code == ExitCode.OK
    assert (tmp_path / "where.txt").read_text().startswith("custom")
    assert ParallelBackend.CUSTOM not in registry.registry


def test_backend_registered_before_the_builds_outlives_them(tmp_path, write) -> None:
    """A name registered before pytask.build stays for the next build."""
    from concurrent.futures import ThreadPoolExecutor

    saved = registry.checkpoint()
    registry.register_parallel_backend(
        "mine",
        lambda n_workers: ThreadPoolExecutor(n_workers, thread_name_prefix="mine"),
        worker_type="threads",
    )
    write("task_where.py", WHERE)
    try:
        codes = [build(paths=tmp_path, parallel_backend="mine").exit_code for _ in range(2)]
        assert "mine" in registry.registry
    finally:
        registry.restore(saved)
    assert codes == [ExitCode.OK, ExitCode.OK]
    assert (tmp_path / "where.txt").read_text().startswith("mine")


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        ("raise OSError('no cluster here')", "Its builder raised OSError: no cluster here"),
        (
            "return 'pool'",
            "Its builder returned 'pool', which is not a concurrent.futures.Executor.",
        ),
    ],
)
def test_broken_builders_fail_before_any_task(builder, message, tmp_path, write, runner) -> None:
    """A builder that raises, or returns no Executor, is named in the error."""
    write(
        "task_pid.py",
        TASK
        + f"""
from taskcloud import ParallelBackend, registry

def build_executor(n_workers):
    {builder}

registry.register_parallel_backend(ParallelBackend.CUSTOM, build_executor)
""",
    )
    result = run_cli(runner, tmp_path, "--parallel-backend", "custom")

    assert result.exit_code == ExitCode.FAILED
    assert f"Could not instantiate parallel backend 'custom'. {message}" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "pid.txt").exists()


def test_programmatic_build_validates_too(tmp_path, write) -> None:
    """pytask.build(n_workers=0) is rejected like the command line."""
    write("task_pid.py", TASK)
    session = build(paths=tmp_path, n_workers=0)

    assert session.exit_code == ExitCode.CONFIGURATION_FAILED
    assert not (tmp_path / "pid.txt").exists()


def test_help_shows_each_options_text_whole() -> None:
    """``pytask build --help`` renders help as rich markup; each of taskcloud's options
    shows its text as written, brackets included."""
    done = subprocess.run(
        [sys.executable, "-m", "pytask", "build", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
        timeout=60,
        check=True,
    )
    # The help column's words, without the box and the option column beside them.
    words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", done.stdout).split())
    for text in (
        "How many tasks run at once.",
        "Where tasks run: none, loky, processes, threads, dask, custom or any registered name.",
        'Without it: provider = "NAME" of [tool.taskcloud] in pyproject.toml, else local.',
    ):
        assert " ".join(text.split()) in words, done.stdout


def test_a_failed_configuration_leaves_no_file_open(tmp_path, write) -> None:
    """An unknown backend fails pytask's configuration after pytask started capturing,
    and pytask then skips its unconfigure: the capture's files are closed all the same."""
    import psutil

    write("task_pid.py", TASK)
    ok = build(paths=tmp_path)  # pytask's database, open from here on
    assert ok.exit_code == ExitCode.OK
    before = psutil.Process().num_fds()
    session = build(paths=tmp_path, n_workers=2, parallel_backend="lokyy")

    assert session.exit_code == ExitCode.CONFIGURATION_FAILED
    assert psutil.Process().num_fds() == before
