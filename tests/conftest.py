"""Shared fixtures: task modules written into tmp_path and run through pytask."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _pytask.pluginmanager import storage
from click.testing import CliRunner
from pytask import cli

import taskcloud

BACKENDS = [
    pytest.param("loky", id="loky"),
    pytest.param("processes", id="processes"),
    pytest.param("threads", id="threads"),
    pytest.param("dask", id="dask", marks=pytest.mark.slow),
]

#: Where the frames a failure's report leaves out come from: taskcloud, concurrent.futures.
INTERNALS = (
    str(Path(taskcloud.__file__).parent),
    str(Path(concurrent.futures.__file__).parent),
)


def shows_frame(output: str, path: Path, line: int, function: str) -> bool:
    """Whether a traceback in ``output`` has the frame ``path:line in function``; rich
    may wrap the words onto the next line of its box."""
    pattern = rf"{re.escape(path.name)}:{line}[│\s]+in[│\s]+{function}\b"
    return re.search(pattern, output) is not None


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write a dedented file below tmp_path and return its path."""

    def _write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    return _write


def run_cli(runner: CliRunner, tmp_path: Path, *args: str):
    """Run ``pytask build`` in-process with a wide, colourless console."""
    # The command line reuses one stored plugin manager; each run needs a fresh one.
    storage.create()
    return runner.invoke(cli, [tmp_path.as_posix(), *args], env={"COLUMNS": "150"})


def run_subprocess(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **kwargs
) -> subprocess.Popen:
    """Start ``pytask`` as its own process in its own session, ``env`` added to ours.

    The child takes SIGINT as a terminal's Ctrl-C would reach it, even when this
    suite runs in a shell's background job, whose children inherit SIGINT ignored.
    """
    env = {**os.environ, "COLUMNS": "150", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pytask", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
        **kwargs,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def listening_sockets() -> set:
    """The addresses this process and its children listen on now; servers the session
    started itself (the ssh tests' sshd, the Slurm daemons) are among them."""
    import psutil

    me = psutil.Process()
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections("inet")
        except psutil.Error:
            continue
        found |= {c.laddr for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout} s")


@pytest.fixture(autouse=True)
def _forget_task_modules():
    """pytask caches task modules by name; each test's modules must be its own."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[-1].startswith("task_"):
            del sys.modules[name]


@pytest.fixture
def controlled_batches(monkeypatch) -> None:
    """Batching that does not depend on this machine's speed: every call counts as
    tiny, and a batch stops only after a call the test makes slower than a second."""
    from taskcloud.plugin import batches

    monkeypatch.setattr(batches, "TINY", 30.0)
    monkeypatch.setattr(batches, "BUDGET", 1.0)


@pytest.fixture(autouse=True)
def taskcloud_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test keeps taskcloud's state in a directory of its own."""
    home = tmp_path_factory.mktemp("taskcloud-home")
    monkeypatch.setenv("TASKCLOUD_HOME", str(home))
    return home


@pytest.fixture
def close_pools():
    """Close every pool of this process after the test (``usefixtures`` it)."""
    yield
    from taskcloud.pools import pools

    pools.close_all()


@pytest.fixture
def stop_leftover_clusters(taskcloud_home):
    """Every named cluster a test starts runs detached; none may outlive the test."""
    from taskcloud.store import Store

    yield
    for record in Store().all("clusters").values():
        pid = record.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 and 127.0.0.2, started for this session (see
    ``tests/sshd.py``). Without one the ``ssh`` tests skip, except in CI."""
    from sshd import SSHD
    from sshd import SSHDUnavailable

    server = SSHD(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except SSHDUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs sshd for the ssh tests: {exc}")
        pytest.skip(f"the ssh tests need a working sshd: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm():
    """A single-node Slurm for this session (see ``tests/slurm.py``), its ``SLURM_CONF``
    in the environment; skipped with the reason where Slurm cannot start, except in CI."""
    from slurm import Slurm
    from slurm import SlurmUnavailable

    cluster = Slurm()
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs Slurm, yet it did not start: {exc}")
        pytest.skip(f"no Slurm here: {exc}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
    cluster.stop()
