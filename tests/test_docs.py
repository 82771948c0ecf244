"""The examples in docs_src run as documented."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pytask import ExitCode
from pytask import build

from taskcloud.pools import pools
from tests.helpers import profile_toml

DOCS_SRC = Path(__file__).parents[1] / "docs_src"


@pytest.mark.parametrize(
    ("example", "options", "product"),
    [
        ("quickstart", {"n_workers": 2}, "report.md"),
        ("custom_backend", {"n_workers": 2, "parallel_backend": "custom"}, "hello.txt"),
    ],
)
def test_example_runs(example, options, product, tmp_path) -> None:
    """Each example succeeds in parallel and writes its product."""
    project = tmp_path / example
    shutil.copytree(DOCS_SRC / example, project)
    session = build(paths=project, **options)
    pools.close_all()

    assert session.exit_code == ExitCode.OK
    assert (project / "bld" / product).stat().st_size > 0


def test_quickstart_sends_heavy_tasks_to_a_pool(tmp_path) -> None:
    """The quickstart's decorated tasks run on a pool, the others on loky."""
    project = tmp_path / "quickstart"
    shutil.copytree(DOCS_SRC / "quickstart", project)
    result = subprocess.run(
        [sys.executable, "-m", "pytask", "-n", "2"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "150"},
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "loky backend" in result.stdout
    assert "pool 1: cpu=1 memory=512 MiB n_workers=[0, 2]" in result.stdout
    assert "95% interval" in (project / "bld" / "report.md").read_text()
    # docs/heavy.md shows this run's table: its columns are the summary's.
    documented = (DOCS_SRC.parent / "docs" / "heavy.md").read_text()
    header = next(line for line in documented.splitlines() if line.startswith(" Where "))
    shown = next(line for line in result.stdout.splitlines() if line.startswith(" Where "))
    assert header.split()[1:] == shown.split()[1:]


def _run_example(*parts: str) -> subprocess.CompletedProcess:
    """Run a docs_src script as a user would; TASKCLOUD_HOME comes from the fixture."""
    return subprocess.run(
        [sys.executable, str(DOCS_SRC.joinpath(*parts))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_function_example_runs() -> None:
    """docs_src/heavy/fit.py runs as a script and estimates pi."""
    result = _run_example("heavy", "fit.py")

    assert result.returncode == 0, result.stderr
    assert "mean of 9 estimates: 3.1" in result.stdout
    assert result.stderr == ""


def test_configuration_example_runs() -> None:
    """docs_src/configurations/use_configuration.py saves and uses a configuration."""
    result = _run_example("configurations", "use_configuration.py")

    assert result.returncode == 0, result.stderr
    assert "[3, 2, 1]" in result.stdout
    assert "536870912 2.0" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
def test_cluster_example_runs() -> None:
    """docs_src/clusters/named_cluster.py starts, attaches to and stops a cluster."""
    result = _run_example("clusters", "named_cluster.py")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["285", "True False", "1", "[]"]
    assert result.stderr == ""  # nothing at exit either


@pytest.mark.slow
def test_environment_example_runs(monkeypatch) -> None:
    """docs_src/environments/use_environment.py builds offline and runs inside it."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    result = _run_example("environments", "use_environment.py")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello function, from greeting 1.0",
        "hello cluster, from greeting 1.0",
        "['greeting-env']",
    ]
    assert "built greeting-env in" in result.stderr


@pytest.mark.ssh
@pytest.mark.slow
def test_ssh_example_runs_on_the_hosts(sshd, tmp_path) -> None:
    """docs_src/ssh, with its profile pointed at the test suite's sshd: the decorated
    simulations run on both hosts' workers, the summary here, from one `pytask -n 2`."""
    project = tmp_path / "ssh"
    shutil.copytree(DOCS_SRC / "ssh", project)
    text = (project / "pyproject.toml").read_text()
    start = text.index("[tool.taskcloud.providers.lab]")
    end = text.index("[tool.pytask.ini_options]")
    text = f"{text[:start]}{profile_toml('lab', sshd.profile())}\n{text[end:]}"
    (project / "pyproject.toml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "pytask", "-n", "2"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    summary = (project / "bld" / "summary.txt").read_text()
    assert summary.startswith("pi is about 3.1")
    assert "simulated on 127.0.0." in summary
    assert "on lab" in result.stdout
    assert "lab: 127.0.0." in result.stdout  # the summary says where the pool ran
