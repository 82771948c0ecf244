"""``pytask --provider NAME``: the default provider of one run."""

from __future__ import annotations

import pytest
from pytask import ExitCode
from pytask import build

from taskcloud import profiles
from tests.conftest import run_cli

TASK = """
from pathlib import Path
from typing import Annotated

from pytask import Product

from taskcloud import profiles


def task_provider(path: Annotated[Path, Product] = Path("provider.txt")) -> None:
    path.write_text(profiles.default_provider())
"""

PROJECT = """
[tool.taskcloud]
provider = "lab"

[tool.taskcloud.providers.here]
kind = "local"

[tool.taskcloud.providers.lab]
kind = "local"

[tool.taskcloud.providers.hpc]
kind = "slurmm"
"""


@pytest.fixture
def project(tmp_path, write):
    """A project with profiles and a task that writes the default provider it sees."""
    write("pyproject.toml", PROJECT)
    write("task_provider.py", TASK)
    return tmp_path


def test_provider_is_the_default_during_the_run(project, runner) -> None:
    """--provider names the default provider of the run's tasks, and only of the run."""
    result = run_cli(runner, project, "--provider", "here")

    assert result.exit_code == ExitCode.OK, result.output
    assert (project / "provider.txt").read_text() == "here"
    assert profiles.default_provider() == "local"


def test_provider_of_a_programmatic_build(project) -> None:
    """pytask.build(provider=...) is the same option."""
    session = build(paths=project, provider="here")

    assert session.exit_code == ExitCode.OK
    assert (project / "provider.txt").read_text() == "here"
    assert profiles.default_provider() == "local"


def test_provider_may_be_a_kind(project, runner) -> None:
    """A registered kind is a provider too."""
    result = run_cli(runner, project, "--provider", "local")

    assert result.exit_code == ExitCode.OK, result.output
    assert (project / "provider.txt").read_text() == "local"


def test_without_provider_the_run_reads_its_project(project, tmp_path_factory, monkeypatch):
    """Without --provider, the default is the provider = of the run's project, wherever
    the working directory is."""
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    session = build(paths=project)

    assert session.exit_code == ExitCode.OK
    assert (project / "provider.txt").read_text() == "lab"


@pytest.mark.parametrize("how", ["command-line", "programmatic"])
def test_unknown_provider_is_a_configuration_failure(how, project, runner, capsys) -> None:
    """An unknown name fails the configuration before the session starts, listing the
    kinds and the profiles."""
    if how == "command-line":
        result = run_cli(runner, project, "--provider", "lba")
        exit_code, output = result.exit_code, result.output
    else:
        exit_code = build(paths=project, provider="lba").exit_code
        output = capsys.readouterr().out

    assert exit_code == ExitCode.CONFIGURATION_FAILED
    assert (
        f"provider='lba' is invalid. Expected a provider kind ({_kinds()}) or a profile "
        "('here', 'hpc', 'lab') of [tool.taskcloud.providers]"
    ) in " ".join(output.split())
    assert "Start pytask session" not in output
    assert not (project / "provider.txt").exists()
    assert profiles.default_provider() == "local"


def test_provider_with_an_unknown_kind_fails_the_configuration(project, runner) -> None:
    """A profile whose kind nothing registered fails the configuration, naming it."""
    result = run_cli(runner, project, "--provider", "hpc")

    assert result.exit_code == ExitCode.CONFIGURATION_FAILED
    assert "tool.taskcloud.providers.hpc.kind='slurmm' is invalid" in " ".join(
        result.output.split()
    )
    assert not (project / "provider.txt").exists()


def test_provider_in_pytask_configuration_is_refused(tmp_path, write, runner) -> None:
    """provider belongs to [tool.taskcloud]; in pytask's own section it is an error
    that says where it goes."""
    write("pyproject.toml", '[tool.pytask.ini_options]\nprovider = "local"\n')
    write("task_provider.py", TASK)
    result = run_cli(runner, tmp_path)

    output = " ".join(result.output.split())
    assert result.exit_code == ExitCode.CONFIGURATION_FAILED
    assert "provider='local' is invalid. Expected given on the command line only" in output
    assert 'default provider is provider = "NAME" in [tool.taskcloud]' in output
    assert not (tmp_path / "provider.txt").exists()


def test_provider_with_parallel_tasks(project, runner) -> None:
    """With -n, tasks on threads in pytask's process see --provider too."""
    result = run_cli(
        runner, project, "-n", "2", "--parallel-backend", "threads", "--provider", "here"
    )

    assert result.exit_code == ExitCode.OK, result.output
    assert (project / "provider.txt").read_text() == "here"


def _kinds(*extra: str) -> str:
    """The registered kinds as the messages list them."""
    from taskcloud.providers import kinds as provider_kinds

    return ", ".join(repr(kind) for kind in sorted({*provider_kinds.kinds(), *extra}))
