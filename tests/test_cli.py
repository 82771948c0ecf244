"""The taskcloud command line: tables, JSON, and usage errors instead of tracebacks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from taskcloud.cli import main


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def test_config_create_list_delete(cli) -> None:
    """Configurations made on the command line are listed and deleted there."""
    made = cli.invoke(
        main,
        [
            "config",
            "create",
            "big",
            "--worker-cpu",
            "2",
            "--worker-memory",
            "4 GiB",
            "--n-workers",
            "0,3",
        ],
    )
    assert made.exit_code == 0, made.output
    assert "Saved cluster configuration 'big'." in made.output

    table = cli.invoke(main, ["config", "list"], env={"COLUMNS": "120"})
    assert table.exit_code == 0
    assert "big" in table.output
    assert "4 GiB" in table.output

    listed = cli.invoke(main, ["config", "list", "--json"])
    assert json.loads(listed.output) == {
        "big": {"worker_cpu": 2, "worker_memory": 4 * 2**30, "n_workers": [0, 3]}
    }

    deleted = cli.invoke(main, ["config", "delete", "big"])
    assert deleted.exit_code == 0
    assert json.loads(cli.invoke(main, ["config", "list", "--json"]).output) == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "create", "x", "--worker-cpu", "many"], "'many' is not a valid integer"),
        (["config", "create", "x", "--worker-memory", "lots"], "worker_memory='lots' is invalid"),
        (["config", "create", "x", "--n-workers", "a,b"], "give N or MIN,MAX"),
        (["config", "delete", "ghost"], "No cluster configuration named 'ghost'"),
        (["config", "explode"], "No such command 'explode'"),
    ],
)
def test_bad_arguments_are_usage_errors(cli, args, message) -> None:
    """Mistakes give a message and a non-zero exit code, not a traceback."""
    result = cli.invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
