"""@taskcloud.function on the local provider: calls, maps, errors and validation."""

from __future__ import annotations

import concurrent.futures
import inspect
import os
import subprocess
import sys
import threading
import traceback
import uuid
from pathlib import Path

import pytest

import taskcloud
from taskcloud import InvalidOptionError
from taskcloud import ResourceUnavailableError
from taskcloud import SerializationError
from tests.conftest import INTERNALS
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools")]


@taskcloud.function(n_workers=[0, 2], keepalive="5 s")
def square(x: int) -> int:
    """Square a number."""
    return x * x


@taskcloud.function(n_workers=[0, 2], keepalive="5 s")
def fails_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise KeyError(f"no value for {x}")
    return x


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cpu": 0}, "cpu=0 is invalid. Expected an int >= 1."),
        ({"cpu": "many"}, "cpu='many' is invalid. Expected an int >= 1."),
        (
            {"memory": "lots"},
            "memory='lots' is invalid. Expected bytes as an int >= 1048576 \\(1 MiB\\), or a string",
        ),
        ({"memory": "-1 GiB"}, "memory='-1 GiB' is invalid."),
        ({"n_workers": [5, 2]}, r"n_workers=\[5, 2\] is invalid. Expected an int >= 0 for a fixed"),
        ({"keepalive": "soon"}, "keepalive='soon' is invalid. Expected seconds as a number >= 0"),
        ({"provider": "moon"}, r"provider='moon' is invalid. Expected a provider kind"),
        ({"retries": -1}, "retries=-1 is invalid. Expected an int >= 0."),
        ({"environ": {"A": 1}}, "environ={'A': 1} is invalid. Expected a dict of str to str."),
        ({"environ": {"": "x"}}, r"environ={'': '\*\*\*'} is invalid. .* a name must not be empty"),
        ({"environ": {"A=B": "x"}}, "environ={'A=B': .* the name 'A=B' holds '=', which names"),
        ({"environ": {"A\0": "x"}}, r"environ={'A\\x00': .* the name 'A\\x00' holds NUL"),
        ({"environ": {"A": "x\0"}}, r"environ={'A': '\*\*\*'} .* the value of 'A' holds NUL"),
        ({"timeout": 0}, "timeout=0 is invalid. Expected None for no limit, or seconds > 0"),
        ({"timeout": "0 s"}, "timeout='0 s' is invalid. Expected None for no limit"),
        ({"timeout": -1}, "timeout=-1 is invalid. Expected None for no limit, or seconds > 0"),
        ({"memory": 1.5}, r"memory=1.5 is invalid. Expected bytes as an int >= 1048576 \(1 MiB\)"),
        ({"memory": "100 KiB"}, "memory='100 KiB' is invalid. Expected bytes as an int >= 1048576"),
    ],
)
def test_bad_options_fail_when_the_decorator_is_applied(options, message) -> None:
    """Each bad value names the parameter, the value and the accepted form."""
    with pytest.raises(InvalidOptionError, match=message):
        taskcloud.function(**options)


@pytest.mark.parametrize(
    ("option", "suggestion"),
    [
        ("cores", "cpu"),
        ("memory_limit", "memory"),
        ("gpus", "gpu"),
        ("nthreads", "threads_per_worker"),
        ("memroy", "memory"),
        ("retry", "retries"),
        ("verbose", None),
    ],
)
def test_unknown_option_is_named_with_the_options_and_a_suggestion(option, suggestion) -> None:
    """An option the decorator does not take is a TypeError naming it, the options it
    takes and the one it most likely meant, not an error about an internal class."""
    with pytest.raises(TypeError) as caught:
        taskcloud.function(**{option: 2})
    assert isinstance(caught.value, taskcloud.UnknownOptionError)
    hint = f" Did you mean {suggestion!r}?" if suggestion else ""
    assert str(caught.value) == (
        f"@taskcloud.function got an unknown option {option!r}.{hint} Its options are cpu, "
        "memory, gpu, software, n_workers, keepalive, environ, threads_per_worker, retries, "
        "timeout, provider, configuration, dashboard, cluster."
    )


@pytest.mark.parametrize(
    ("decorator", "line"),
    [
        (
            "@taskcloud.function(cpu=-1)",
            "InvalidOptionError: cpu=-1 is invalid. Expected an int >= 1.",
        ),
        (
            "@taskcloud.function(cores=2)",
            "UnknownOptionError: @taskcloud.function got an unknown option 'cores'.",
        ),
    ],
)
def test_bad_option_in_a_task_module_shows_the_users_line_alone(
    tmp_path, write, runner, decorator, line
) -> None:
    """pytask's collection box shows the decorated line and the reason, no frame of
    taskcloud's (functions.py, specs.py, attrs' generated __init__)."""
    path = write(
        "task_bad.py",
        f"""
        import taskcloud

        {decorator}
        def task_bad():
            pass
        """,
    )
    result = run_cli(runner, tmp_path)

    assert result.exit_code == 3, result.output
    assert f"{path.name}:4 in <module>" in result.output, result.output
    assert INTERNALS[0] not in result.output
    assert "attrs generated" not in result.output
    assert line in result.output


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("512 MiB", 512 * 2**20),
        ("8 GiB", 8 * 2**30),
        ("16GB", 16 * 10**9),
        ("1.5 GiB", 3 * 2**29),
        (10**9, 10**9),
        (2e9, 2 * 10**9),
    ],
)
def test_memory_forms(memory, expected) -> None:
    """Memory takes binary and decimal units, and plain bytes."""
    assert taskcloud.function(memory=memory)(square.local).spec.memory == expected


def test_function_looks_like_the_original() -> None:
    """Name, docstring, signature and annotations are those of the function."""
    assert square.__name__ == "square"
    assert square.__doc__ == "Square a number."
    assert inspect.signature(square) == inspect.signature(square.__wrapped__)
    assert str(inspect.signature(square)) == "(x: 'int') -> 'int'"
    assert square.__annotations__ == {"x": "int", "return": "int"}


def test_call_submit_map_and_local() -> None:
    """A call returns the result; submit gives a future; map keeps input order."""
    assert square(7) == 49
    futures = [square.submit(i) for i in range(5)]
    done, _ = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == 5
    assert [f.result() for f in futures] == [0, 1, 4, 9, 16]
    assert list(square.map(range(20))) == [i * i for i in range(20)]
    assert square.local(3) == 9
    assert square.client.scheduler_info()["workers"]
    assert square.cluster.scheduler_address.startswith("tls://127.0.0.1:")


def test_map_errors_return_keeps_positions() -> None:
    """errors='return' puts the exception where the failed item was."""
    results = list(fails_on.map(range(6), errors="return"))
    assert results[:3] == [0, 1, 2]
    assert isinstance(results[3], KeyError)
    assert results[4:] == [4, 5]


def test_map_errors_raise_raises_the_failure() -> None:
    """errors='raise' raises the first failure."""
    with pytest.raises(KeyError, match="no value for 3"):
        list(fails_on.map(range(6)))


def test_map_rejects_unknown_error_mode() -> None:
    with pytest.raises(InvalidOptionError, match=r"errors='skip' is invalid\. Expected 'raise' or"):
        square.map([1], errors="skip")


def test_remote_exception_keeps_type_and_traceback() -> None:
    """A remote error is the original type, with the remote frames in its traceback."""
    with pytest.raises(KeyError) as info:
        fails_on(3)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(frame.name == "fails_on" and frame.filename == __file__ for frame in frames)


@pytest.mark.parametrize(
    ("call", "where"),
    [
        pytest.param(lambda: fails_on(3), "__call__", id="call"),
        pytest.param(lambda: fails_on.submit(3).result(), "result", id="result"),
        pytest.param(lambda: list(fails_on.map([3])), "_in_order", id="map"),
    ],
)
def test_remote_exception_leaves_out_the_pools_frames(call, where) -> None:
    """Between the caller and the remote frames only the one frame that raises again."""
    with pytest.raises(KeyError) as info:
        call()
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [frame.name for frame in frames if frame.filename.startswith(INTERNALS)] == [where]
    assert frames[-1].name == "fails_on"
    assert frames[-1].line == 'raise KeyError(f"no value for {x}")'


SCRIPT = """\
import sys
import time

import taskcloud


@taskcloud.function(keepalive="5 s")
def fails(x):
    raise KeyError(f"no value for {x}")


@taskcloud.function(timeout="1 s", keepalive="5 s")
def slow(x):
    time.sleep(60)


@taskcloud.function(keepalive="5 s")
def debug(x):
    breakpoint()


if __name__ == "__main__":
    if sys.argv[1] == "fails":
        fails(3)
    elif sys.argv[1] == "slow":
        slow(3)
    else:
        debug(3)
"""


def _run_script(path: Path, which: str, **env: str) -> list[str]:
    """Run the script calling ``which`` and return the lines of its traceback."""
    done = subprocess.run(
        [sys.executable, str(path), which],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        timeout=180,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    return done.stderr[done.stderr.index("Traceback (most recent call last):") :].splitlines()


@pytest.mark.parametrize(
    ("which", "frame", "error"),
    [
        pytest.param(
            "fails",
            ("in fails", '    raise KeyError(f"no value for {x}")'),
            "KeyError: 'no value for 3'",
            id="error",
        ),
        pytest.param(
            "slow",
            None,
            "taskcloud.errors.TaskTimeoutError: 'slow' did not finish within its timeout of 1 s;"
            " its worker was restarted.",
            id="timeout",
        ),
        pytest.param(
            "debug",
            ("in debug", "    breakpoint()"),
            "taskcloud.errors.BreakpointError: You cannot use 'breakpoint()' or 'pdb.set_trace()'"
            " while parallelizing the execution of tasks. Call the function's .local() to run it"
            " in this process and debug it.",
            id="breakpoint",
        ),
    ],
)
def test_script_traceback_shows_the_users_lines(tmp_path, which, frame, error) -> None:
    """A script's traceback: its call line, the user's remote frame, the one-line reason."""
    path = tmp_path / "fit.py"
    path.write_text(SCRIPT)
    lines = _run_script(path, which)

    call = lines.index(f"    {which}(3)")
    assert lines[call - 1].startswith(f'  File "{path}", line ')
    internals = [line for line in lines if any(root in line for root in INTERNALS)]
    assert internals == [lines[call + 1]]
    assert lines[call + 1].endswith(", in __call__")
    if frame is not None:
        assert lines[call + 3].startswith(f'  File "{path}", line ')
        assert lines[call + 3].endswith(frame[0])
        assert lines[call + 4] == frame[1]
    assert lines[-1] == error


def test_script_traceback_in_full_on_request(tmp_path) -> None:
    """TASKCLOUD_TRACEBACK=full keeps the pool's and concurrent.futures' frames."""
    path = tmp_path / "fit.py"
    path.write_text(SCRIPT)
    lines = _run_script(path, "slow", TASKCLOUD_TRACEBACK="full")

    assert any(INTERNALS[1] in line for line in lines)
    assert lines[-1].startswith("taskcloud.errors.TaskTimeoutError: 'slow'")


CALLERS_ERRORS = """\
import sys
import threading
import traceback

import taskcloud


@taskcloud.function(keepalive="5 s")
def echo(x):
    return x


@taskcloud.function(cpu=100_000)
def huge(x):
    return x


@taskcloud.function(software="nosuch")
def elsewhere(x):
    return x


CASES = {
    "cpu": lambda: huge(1),
    "software": lambda: elsewhere(1),
    "software submit": lambda: elsewhere.submit(1),
    "software map": lambda: elsewhere.map([1]),
    "pickle": lambda: echo(threading.Lock()),
    "pickle submit": lambda: echo.submit(threading.Lock()),
    "pickle map": lambda: list(echo.map([threading.Lock()])),
    "bad option": lambda: taskcloud.function(cpu=-1),
    "unknown option": lambda: taskcloud.function(cores=2),
}

if __name__ == "__main__":
    for name, case in CASES.items():
        print(f"=== {name}")
        try:
            case()
        except Exception:
            traceback.print_exc(file=sys.stdout)
"""

CALLERS_REASONS = {
    "cpu": "ResourceUnavailableError: cpu=100000 cannot be satisfied",
    "software": "SoftwareEnvironmentNotFoundError: No software environment named 'nosuch'",
    "pickle": "SerializationError: The argument 'x' of 'echo' cannot be pickled",
    "bad option": "InvalidOptionError: cpu=-1 is invalid.",
    "unknown option": "UnknownOptionError: @taskcloud.function got an unknown option 'cores'",
}


def test_callers_errors_show_at_most_the_frame_that_raises(tmp_path) -> None:
    """A shape too big, an unknown software environment, an argument that cannot be
    pickled, a bad option: the caller's line, at most one taskcloud frame, the reason;
    for calls, submits and maps alike."""
    path = tmp_path / "callers.py"
    path.write_text(CALLERS_ERRORS)
    done = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    cases = dict(block.split("\n", 1) for block in done.stdout.split("=== ")[1:])
    assert len(cases) == 9, done.stdout
    for name, text in cases.items():
        lines = text.splitlines()
        assert lines[0] == "Traceback (most recent call last):", (name, text)
        assert lines[1].startswith(f'  File "{path}", line '), (name, text)
        internals = [line for line in lines if line.startswith(f'  File "{INTERNALS[0]}')]
        assert len(internals) <= 1, (name, text)
        reason = CALLERS_REASONS[name.split(" submit")[0].split(" map")[0]]
        assert lines[-1].startswith(f"taskcloud.errors.{reason}"), (name, text)


def test_same_arguments_run_twice() -> None:
    """Calls are not merged: equal arguments still mean two executions."""

    @taskcloud.function(keepalive="5 s")
    def token(_: int) -> str:
        return uuid.uuid4().hex

    assert token(1) != token(1)


def test_dask_keywords_reach_the_function() -> None:
    """key, retries, resources, workers and priority are the function's arguments."""

    @taskcloud.function(keepalive="5 s")
    def echo(**kwargs):
        return kwargs

    kwargs = {"key": "k", "retries": 5, "resources": {"r": 1}, "workers": ["w"], "priority": 9}
    assert echo(**kwargs) == kwargs


def test_environ_is_set_for_the_call() -> None:
    @taskcloud.function(environ={"TASKCLOUD_TEST_VALUE": "42"}, keepalive="5 s")
    def read() -> str | None:
        return os.environ.get("TASKCLOUD_TEST_VALUE")

    assert read() == "42"
    assert "TASKCLOUD_TEST_VALUE" not in os.environ


def test_unpicklable_argument_is_named() -> None:
    @taskcloud.function(keepalive="5 s")
    def use(data, lock):
        return data

    with pytest.raises(SerializationError, match="argument 'lock' of 'use' cannot be pickled"):
        use([1], threading.Lock())


def test_unpicklable_result_is_named() -> None:
    @taskcloud.function(keepalive="5 s")
    def make_lock():
        return threading.Lock()

    with pytest.raises(SerializationError, match="return value of 'make_lock' cannot be pickled"):
        make_lock()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cpu": 4096}, r"cpu=4096 cannot be satisfied: the local provider has \d+ cores"),
        ({"memory": "900 TiB"}, "memory=900 TiB cannot be satisfied: the local provider has"),
        ({"gpu": 64}, r"gpu=64 cannot be satisfied: the local provider has \d+ GPUs"),
    ],
)
def test_impossible_request_fails_at_first_call(options, message) -> None:
    """A shape the host can never hold raises instead of waiting forever."""
    impossible = taskcloud.function(**options)(square.local)
    with pytest.raises(ResourceUnavailableError, match=message):
        impossible(2)
