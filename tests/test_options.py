"""-n, --parallel-backend and their configuration keys: parsing and bad input."""

from __future__ import annotations

import os

import pytest
from pytask import ExitCode
from pytask import build

from taskcloud.backends import default_n_workers
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
    assert f"Running tasks on {default_n_workers()} workers" in result.output


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


def test_unknown_backend_fails_before_any_task(tmp_path, write, runner) -> None:
    """An unregistered name lists the registered ones and runs nothing."""
    write("task_pid.py", TASK)
    result = run_cli(runner, tmp_path, "--parallel-backend", "lokyy")

    assert result.exit_code == ExitCode.FAILED
    assert (
        "Unknown parallel backend 'lokyy'. Registered: 'dask', 'loky', 'processes', 'threads'."
        in result.output
    )
    assert not (tmp_path / "pid.txt").exists()


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        ("raise OSError('no cluster here')", "its builder raised OSError: no cluster here"),
        (
            "return 'pool'",
            "its builder returned 'pool', which is not a concurrent.futures.Executor",
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
    assert f"Could not build the parallel backend 'custom': {message}" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "pid.txt").exists()


def test_programmatic_build_validates_too(tmp_path, write) -> None:
    """pytask.build(n_workers=0) is rejected like the command line."""
    write("task_pid.py", TASK)
    session = build(paths=tmp_path, n_workers=0)

    assert session.exit_code == ExitCode.CONFIGURATION_FAILED
    assert not (tmp_path / "pid.txt").exists()
