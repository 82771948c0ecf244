"""Decorated tasks in a serial pytask run (no ``-n``): environ=, software= and the summary."""

from __future__ import annotations

import os

import pytest
from pytask import ExitCode
from pytask import build

from taskcloud.environments import create_software_environment
from taskcloud.pools import pools
from tests.conftest import run_cli
from tests.test_environments import PACKAGE
from tests.test_environments import make_wheel

pytestmark = pytest.mark.usefixtures("close_pools")


ENVIRON = """
    import os
    from pathlib import Path
    from typing import Annotated

    from pytask import Product

    import taskcloud


    @taskcloud.function(environ={"TOKEN": "x"})
    def task_token(path: Annotated[Path, Product] = Path("token.txt")) -> None:
        path.write_text(f"{os.environ.get('TOKEN')} {os.getpid()}")
"""


def test_serial_run_sets_environ_around_the_call(tmp_path, write, monkeypatch) -> None:
    """environ= holds in pytask's process for the call and is gone after it."""
    monkeypatch.delenv("TOKEN", raising=False)
    write("task_environ.py", ENVIRON)
    session = build(paths=tmp_path)

    assert session.exit_code == ExitCode.OK
    assert (tmp_path / "token.txt").read_text() == f"x {os.getpid()}"
    assert "TOKEN" not in os.environ
    assert not pools.active()


def test_serial_run_restores_a_variable_that_was_set(tmp_path, write, monkeypatch) -> None:
    """A variable set before the run has its own value again after the call."""
    monkeypatch.setenv("TOKEN", "before")
    write("task_environ.py", ENVIRON)
    assert build(paths=tmp_path).exit_code == ExitCode.OK
    assert (tmp_path / "token.txt").read_text().startswith("x ")
    assert os.environ["TOKEN"] == "before"


SOFTWARE = f"""
    from pathlib import Path
    from typing import Annotated

    import taskcloud


    @taskcloud.function(software="probe", n_workers=[0, 1], keepalive="5 s")
    def task_probe() -> Annotated[str, Path("probe.txt")]:
        import {PACKAGE}

        return {PACKAGE}.VALUE


    def task_here() -> Annotated[str, Path("here.txt")]:
        return "here"
"""


@pytest.mark.slow
def test_serial_run_sends_software_tasks_to_their_pool(
    tmp_path, write, runner, monkeypatch
) -> None:
    """A task of another software environment runs on its pool; the summary says so."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    create_software_environment("probe", pip=[str(make_wheel(wheels))], progress=False)
    write("task_software.py", SOFTWARE)
    result = run_cli(runner, tmp_path)

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "probe.txt").read_text() == "1.0"
    assert "Where tasks ran" in result.output
    rows = [line for line in result.output.splitlines() if "│" in line]
    pool_row = next(line for line in rows if "software=probe" in line)
    assert pool_row.split("│")[1].strip() == "1"
    process_row = next(line for line in rows if "pytask's process" in line)
    assert process_row.split("│")[1].strip() == "1"


def test_serial_run_without_pools_prints_no_table(tmp_path, write, runner, monkeypatch) -> None:
    """A serial run whose tasks all ran in pytask's process says nothing of pools."""
    monkeypatch.delenv("TOKEN", raising=False)
    write("task_environ.py", ENVIRON)
    result = run_cli(runner, tmp_path)
    assert result.exit_code == ExitCode.OK, result.output
    assert "Where tasks ran" not in result.output
