"""Plain Python scripts that call decorated functions, each run as its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: Long enough for a pool to start on a loaded machine; a hang fails the test here.
SCRIPT_TIMEOUT = 120


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DASK_LOGGING__DISTRIBUTED", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


NO_GUARD = """
    from pathlib import Path

    import taskcloud

    with Path(__file__).with_name("runs.txt").open("a") as runs:
        print("ran", file=runs)


    @taskcloud.function
    def double(x):
        return 2 * x


    print("result", double(21), Path(__file__).name)
"""


@pytest.mark.parametrize("how", ["path", "module"])
def test_script_without_main_guard_works(tmp_path: Path, write, how: str) -> None:
    """Without `if __name__ == "__main__":` the call returns and the script runs once."""
    write("no_guard.py", NO_GUARD)
    result = _run(tmp_path, *(["no_guard.py"] if how == "path" else ["-m", "no_guard"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "result 42 no_guard.py"
    assert (tmp_path / "runs.txt").read_text() == "ran\n"


KILLS_ITS_WORKER = """
    import os
    import signal
    import time

    import taskcloud


    @taskcloud.function(retries=0)
    def pid():
        return os.getpid()


    @taskcloud.function(retries=0)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    if __name__ == "__main__":
        try:
            die()  # as the pool's first worker starts
        except taskcloud.WorkerLostError:
            print("lost as it started")
        pid()  # the pool and its worker are up: what follows is the lost worker alone
        start = time.monotonic()
        try:
            die()
        except taskcloud.WorkerLostError as exc:
            print(f"{time.monotonic() - start:.2f} {exc}")
"""


def test_lost_worker_fails_fast_and_quietly(tmp_path: Path, write) -> None:
    """A call that kills its worker raises WorkerLostError within 10 s, and dask's
    and tornado's logs stay out of the terminal."""
    write("kills.py", KILLS_ITS_WORKER)
    result = _run(tmp_path, "kills.py")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert first == "lost as it started"
    seconds, message = second.split(" ", 1)
    assert message.startswith("The worker running 'die' died in each of 1 attempt")
    assert float(seconds) < 10
    assert result.stderr == ""
