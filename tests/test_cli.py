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
        (["config", "create", "x", "--n-workers", "a,b"], "n_workers='a,b' is invalid. Expected"),
        (["config", "delete", "ghost"], "No cluster configuration named 'ghost'"),
        (["config", "create", "x", "--software", "nope"], "No software environment named 'nope'"),
        (["config", "create", "x" * 65], "name='xxxx"),
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


def test_env_create_list_delete(cli, tmp_path, monkeypatch) -> None:
    """A pip environment built from a local wheel, offline, listed and deleted."""
    from tests.test_environments import make_wheel

    monkeypatch.setenv("UV_OFFLINE", "1")
    wheel = make_wheel(tmp_path)
    made = cli.invoke(main, ["env", "create", "probe", "--pip", str(wheel)])
    assert made.exit_code == 0, made.output
    assert "built probe in" in made.output

    again = cli.invoke(main, ["env", "create", "probe", "--pip", str(wheel), "--json"])
    assert again.exit_code == 0, again.output
    record = json.loads(again.output)["probe"]
    assert record["kind"] == "pip"
    assert record["spec"] == {"requirements": [str(wheel)]}

    table = cli.invoke(main, ["env", "list"], env={"COLUMNS": "200"})
    assert "probe" in table.output
    assert wheel.name in table.output
    assert cli.invoke(main, ["env", "delete", "probe"]).exit_code == 0
    assert json.loads(cli.invoke(main, ["env", "list", "--json"]).output) == {}


def test_env_create_needs_exactly_one_spec(cli) -> None:
    none = cli.invoke(main, ["env", "create", "probe"])
    assert none.exit_code == 2
    assert "give one kind of spec" in none.output
    both = cli.invoke(main, ["env", "create", "probe", "--pip", "a", "--container", "b"])
    assert both.exit_code == 2
    assert "--pip, --container" in both.output
    assert "Traceback" not in none.output + both.output


@pytest.mark.slow
def test_cluster_start_list_stop(cli) -> None:
    """A cluster started from the shell keeps running until it is stopped."""
    started = cli.invoke(main, ["cluster", "start", "shell", "--n-workers", "0", "--json"])
    assert started.exit_code == 0, started.output
    info = json.loads(started.output)["shell"]
    assert info["address"].startswith("tls://127.0.0.1:")

    found = cli.invoke(main, ["cluster", "start", "shell"])
    assert f"Found running cluster 'shell' at {info['address']}." in found.output

    table = cli.invoke(main, ["cluster", "list"], env={"COLUMNS": "200"})
    assert "shell" in table.output
    assert info["address"] in table.output
    listed = json.loads(cli.invoke(main, ["cluster", "list", "--json"]).output)
    assert listed["shell"]["pid"] == info["pid"]

    stopped = cli.invoke(main, ["cluster", "stop", "shell"])
    assert stopped.exit_code == 0, stopped.output
    assert json.loads(cli.invoke(main, ["cluster", "list", "--json"]).output) == {}
    missing = cli.invoke(main, ["cluster", "stop", "shell"])
    assert missing.exit_code == 1
    assert "No running cluster named 'shell'" in missing.output


def test_cluster_start_with_a_bad_option_is_one_line(cli) -> None:
    bad = cli.invoke(main, ["cluster", "start", "x", "--worker-memory", "lots"])
    assert bad.exit_code == 1
    assert "worker_memory='lots' is invalid" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.slow
def test_attaching_says_one_plain_line_and_the_list_fits_80_columns(cli) -> None:
    """``cluster start`` on a running cluster with other options says so in one plain
    line on stderr, not a Python warning with its source line; ``cluster list`` at 80
    columns wraps rather than cutting the name, status and address."""
    started = cli.invoke(main, ["cluster", "start", "analysis", "--n-workers", "0", "--json"])
    assert started.exit_code == 0, started.output
    address = json.loads(started.output)["analysis"]["address"]
    try:
        again = cli.invoke(main, ["cluster", "start", "analysis", "--n-workers", "2"])

        assert again.exit_code == 0, again.output
        assert again.stdout == f"Found running cluster 'analysis' at {address}.\n"
        (line,) = again.stderr.splitlines()
        assert line.startswith("Warning: Attached to the running cluster 'analysis'; ")
        assert line.endswith(
            "these options differ from it and are ignored: n_workers=2 (running: 0)"
        )
        assert "UserWarning" not in again.stderr
        assert "cli.py" not in again.stderr

        table = cli.invoke(main, ["cluster", "list"], env={"COLUMNS": "80"})
        assert table.exit_code == 0, table.output
        assert max(len(line) for line in table.output.splitlines()) <= 80
        assert "…" not in table.output
        row = next(line for line in table.output.splitlines() if "analysis" in line)
        assert "running" in row
        assert address in row
    finally:
        cli.invoke(main, ["cluster", "stop", "analysis"])


def test_deleting_an_environment_a_configuration_uses_warns(cli, tmp_path, monkeypatch) -> None:
    """Deleting a software environment that saved configurations name says which, in
    one plain line from the command line and as a warning from the library."""
    import taskcloud
    from tests.test_environments import make_wheel

    monkeypatch.setenv("UV_OFFLINE", "1")
    wheel = make_wheel(tmp_path)
    assert cli.invoke(main, ["env", "create", "probe", "--pip", str(wheel)]).exit_code == 0
    for config in ("big", "small"):
        made = cli.invoke(main, ["config", "create", config, "--software", "probe"])
        assert made.exit_code == 0, made.output
    assert cli.invoke(main, ["config", "create", "plain", "--worker-cpu", "1"]).exit_code == 0

    deleted = cli.invoke(main, ["env", "delete", "probe"])

    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == "Deleted software environment 'probe'.\n"
    assert deleted.stderr == (
        "Warning: the cluster configurations 'big', 'small' use the deleted software "
        "environment 'probe'; they fail until it is created again.\n"
    )

    assert cli.invoke(main, ["env", "create", "probe", "--pip", str(wheel)]).exit_code == 0
    with pytest.warns(UserWarning, match=r"configurations 'big', 'small' use the deleted"):
        taskcloud.delete_software_environment("probe")
    assert cli.invoke(main, ["env", "create", "other", "--pip", str(wheel)]).exit_code == 0
    quiet = cli.invoke(main, ["env", "delete", "other"])
    assert quiet.stderr == ""
