"""environ= on pools: each function's variables reach its own calls and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from pytask import ExitCode

import taskcloud
from taskcloud.environments import create_software_environment
from tests.conftest import run_cli
from tests.test_environments import make_wheel

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools")]


def _wait_for_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def _hold(started: str, release: str) -> str | None:
    """Say it started, wait to be released; return TOKEN as seen meanwhile."""
    Path(started).touch()
    _wait_for_file(Path(release))
    return os.environ.get("TOKEN")


def _peek(wait_for: str, done: str) -> str | None:
    """Once ``wait_for`` exists, read TOKEN and say so."""
    _wait_for_file(Path(wait_for))
    seen = os.environ.get("TOKEN")
    Path(done).touch()
    return seen


SHAPE = {"threads_per_worker": 2, "n_workers": [0, 1], "keepalive": "10 s"}


def test_a_function_without_environ_never_sees_another_ones(tmp_path) -> None:
    """While a call with TOKEN runs, a call of another function, which could share its
    worker's threads, does not see it; nor does a later one."""
    secret = taskcloud.function(environ={"TOKEN": "s3cret"}, **SHAPE)(_hold)
    plain = taskcloud.function(**SHAPE)(_peek)
    started, released = tmp_path / "started", tmp_path / "released"
    holding = secret.submit(str(started), str(released))
    assert plain(str(started), str(released)) is None
    assert holding.result(timeout=60) == "s3cret"
    assert [plain(str(started), str(tmp_path / f"again-{i}")) for i in range(3)] == [None] * 3
    assert "TOKEN" not in os.environ


def test_two_functions_with_different_environ_see_their_own(tmp_path) -> None:
    """Concurrent calls of functions with different TOKENs each see their own, both
    during calls that overlap and in calls after them."""
    first = taskcloud.function(environ={"TOKEN": "first"}, **SHAPE)(_hold)
    second = taskcloud.function(environ={"TOKEN": "second"}, **SHAPE)(_peek)
    started, released = tmp_path / "started", tmp_path / "released"
    holding = [first.submit(str(started), str(released)) for _ in range(2)]
    assert second(str(started), str(released)) == "second"
    assert [future.result(timeout=60) for future in holding] == ["first", "first"]
    assert second(str(started), str(tmp_path / "later")) == "second"
    assert first.pool is not second.pool


def _worker_pid() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("TASKCLOUD_TEST_SECRET")


@pytest.mark.parametrize("software", [None, "probe"], ids=["own-python", "software-env"])
def test_environ_values_stay_out_of_command_lines(software, tmp_path, monkeypatch) -> None:
    """Workers get environ, in this Python or a software environment's, and no process
    the pool starts carries a value on its command line, which every local user reads."""
    if software is not None:
        monkeypatch.setenv("UV_OFFLINE", "1")
        (tmp_path / "wheels").mkdir()
        wheel = make_wheel(tmp_path / "wheels")
        create_software_environment(software, pip=[str(wheel)], progress=False)
    value = f"not-on-the-command-line-{os.urandom(4).hex()}"
    worker_pid = taskcloud.function(
        environ={"TASKCLOUD_TEST_SECRET": value}, software=software, keepalive="10 s"
    )(_worker_pid)

    pid, seen = worker_pid()
    assert seen == value
    processes = [psutil.Process(pid), *psutil.Process().children(recursive=True)]
    for process in processes:
        with Path(f"/proc/{process.pid}/cmdline").open("rb") as cmdline:
            assert value.encode() not in cmdline.read(), process.cmdline()


def test_pool_label_and_repr_show_environ_names_only() -> None:
    """A function's repr and its pool's label name the variables, never their values."""

    @taskcloud.function(environ={"TOKEN": "s3cret"})
    def read() -> None:
        return None

    assert "environ=TOKEN" in repr(read)
    assert "s3cret" not in repr(read.spec) + repr(read.spec.pool()) + repr(read)


TASKS = """
import os
from pathlib import Path
from typing import Annotated

from pytask import Product

import taskcloud

SHAPE = {"threads_per_worker": 2, "n_workers": [0, 1], "keepalive": "5 s"}


@taskcloud.function(environ={"TOKEN": "s3cret"}, **SHAPE)
def task_secret(path: Annotated[Path, Product] = Path("secret.txt")) -> None:
    path.write_text(os.environ.get("TOKEN", "unset"))


@taskcloud.function(**SHAPE)
def task_plain(path: Annotated[Path, Product] = Path("plain.txt")) -> None:
    path.write_text(os.environ.get("TOKEN", "unset"))
"""


def test_decorated_tasks_in_a_parallel_run_get_their_own_environ(tmp_path, write, runner) -> None:
    """In a pytask run with -n, a task's environ reaches that task and no other; the
    summary names the variable, never its value."""
    write("task_environ.py", TASKS)
    result = run_cli(runner, tmp_path, "-n", "2")

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "secret.txt").read_text() == "s3cret"
    assert (tmp_path / "plain.txt").read_text() == "unset"
    assert "environ=TOKEN" in result.output
    assert "s3cret" not in result.output
