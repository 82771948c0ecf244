"""``taskcloud provider list`` and ``taskcloud provider check``."""

from __future__ import annotations

import json
import platform

import distributed
import pytest
from click.testing import CliRunner

import taskcloud
from taskcloud.cli import main
from taskcloud.providers import kinds
from taskcloud.providers.protocol import HostReport

PROJECT = """
[tool.taskcloud]
provider = "lab"

[tool.taskcloud.providers.lab]
kind = "ssh"
hosts = ["node1", "user@node2:2222"]
identity = "~/.ssh/id_ed25519"
password = "hunter2"

[tool.taskcloud.providers.here]
kind = "local"
"""

OURS = {"distributed": distributed.__version__, "taskcloud": taskcloud.__version__}
GOOD = HostReport(
    host="node1",
    reachable=True,
    python="3.11.7",
    versions_match=True,
    cores=8,
    memory=16 * 2**30,
    gpus=1,
    **OURS,
)
OLD = HostReport(
    host="node2",
    reachable=True,
    python="3.10.1",
    distributed="2024.1.0",
    taskcloud="0.0.1",
    versions_match=False,
    cores=4,
    memory=2**30,
)
GONE = HostReport(host="node3", reachable=False, reason="connection refused")
KNOWN_HOSTS = "/home/someone/with/a/rather/long/home/directory/.ssh/known_hosts"
FIX = f"ssh-keyscan -p 2222 node4.cluster.example.org >> {KNOWN_HOSTS}"
KEY = HostReport(
    host="node4.cluster.example.org",
    reachable=False,
    reason=f"its host key is not in {KNOWN_HOSTS}; if it is the host you mean, add it with `{FIX}`",
)
MUTE = HostReport(host="node5", reachable=True, reason="python3 -m taskcloud.hostside failed")


HOSTS = {"good": GOOD, "old": OLD, "gone": GONE, "key": KEY, "mute": MUTE}


class Hosts:
    """A provider whose hosts report what its hosts option says."""

    kind = "hosts"
    closed: list[str] = []

    def __init__(self, name, options) -> None:
        self.name = name
        self.reports = [HOSTS[h] for h in options["hosts"]]

    def check(self) -> list[HostReport]:
        return self.reports

    def close(self) -> None:
        Hosts.closed.append(self.name)


@pytest.fixture
def cli(tmp_path, monkeypatch) -> CliRunner:
    """A runner in tmp_path, the project directory, with provider kinds of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(kinds, "_registered", {})
    kinds.register("hosts", Hosts)
    return CliRunner()


def invoke(cli, *args):
    return cli.invoke(main, ["provider", *args], env={"COLUMNS": "200"})


def test_list_shows_profiles_kinds_and_default(cli, write) -> None:
    """The tables name each profile's kind, options and file, the kinds, and the default."""
    project = write("pyproject.toml", PROJECT)
    result = invoke(cli, "list")

    assert result.exit_code == 0, result.output
    lab = next(line for line in result.output.splitlines() if "│ lab" in line)
    assert "ssh" in lab
    assert "hosts=node1,user@node2:2222" in lab
    assert "identity=~/.ssh/id_ed25519" in lab
    assert "password=***" in lab
    assert "yes" in lab
    assert "hunter2" not in result.output
    assert str(project) in result.output
    assert "taskcloud.providers.local:LocalProvider" in result.output
    assert "taskcloud.providers.ssh:SSHProvider" in result.output
    assert f"Default provider: lab (set in {project})." in result.output


def test_list_json(cli, write, taskcloud_home) -> None:
    """--json gives the default and its source, every profile (secrets hidden) and kind."""
    project = write("pyproject.toml", PROJECT)
    user = taskcloud_home / "providers.toml"
    user.write_text("[providers.box]\nkind = 'local'\n")
    result = invoke(cli, "list", "--json")

    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["default"] == {"name": "lab", "source": str(project)}
    assert listing["profiles"] == {
        "box": {"kind": "local", "source": str(user), "options": {}},
        "lab": {
            "kind": "ssh",
            "source": str(project),
            "options": {
                "hosts": ["node1", "user@node2:2222"],
                "identity": "~/.ssh/id_ed25519",
                "password": "***",
            },
        },
        "here": {"kind": "local", "source": str(project), "options": {}},
    }
    assert listing["kinds"]["hosts"] == f"{__name__}:Hosts"
    assert listing["kinds"]["local"] == "taskcloud.providers.local:LocalProvider"


def test_list_without_profiles_defaults_to_local(cli) -> None:
    """With no profile anywhere, local is the default, built in."""
    result = invoke(cli, "list", "--json")

    assert json.loads(result.output)["default"] == {"name": "local", "source": "built-in"}
    assert "Default provider: local (set in built-in)." in invoke(cli, "list").output


def test_list_names_a_broken_file(cli, write) -> None:
    """A pyproject.toml that is not TOML is one line naming it, not a traceback."""
    project = write("pyproject.toml", "[tool\n")
    result = invoke(cli, "list")

    assert result.exit_code == 1
    assert f"provider profiles={str(project)!r} is invalid" in result.output
    assert "Traceback" not in result.output


def test_check_healthy_hosts(cli, write) -> None:
    """Every host reachable with our versions: a table of what each offers, exit 0."""
    write("pyproject.toml", '[tool.taskcloud.providers.lab]\nkind = "hosts"\nhosts = ["good"]\n')
    result = invoke(cli, "check", "lab")

    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "node1" in line)
    for cell in ("ok", "3.11.7", distributed.__version__, "8", "16 GiB", "1"):
        assert cell in row
    assert "Provider 'lab' (hosts)" in result.output
    assert Hosts.closed[-1] == "lab"


def test_check_unreachable_and_mismatched_hosts(cli, write) -> None:
    """A host that is unreachable (with its reason) or runs other versions exits 1."""
    write(
        "pyproject.toml",
        '[tool.taskcloud.providers.lab]\nkind = "hosts"\nhosts = ["good", "old", "gone"]\n',
    )
    result = invoke(cli, "check", "lab")

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "versions differ" in next(line for line in lines if "node2" in line)
    assert "unreachable" in next(line for line in lines if "node3" in line)
    assert "node3: unreachable: connection refused" in lines


def test_check_at_80_columns_wraps_and_prints_the_fix_whole(cli, write) -> None:
    """At 80 columns the table wraps instead of cutting; each reason follows it on a line
    of its own, and a command in it (in backticks) on a line of its own, whole; a host
    that answered without a report says why, not "versions differ"."""
    write(
        "pyproject.toml",
        '[tool.taskcloud.providers.lab]\nkind = "hosts"\nhosts = ["good", "key", "mute"]\n',
    )
    result = cli.invoke(main, ["provider", "check", "lab"], env={"COLUMNS": "80"})

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    key = (
        f"node4.cluster.example.org: unreachable: its host key is not in {KNOWN_HOSTS}; "
        "if it is the host you mean, add it with the command below"
    )
    assert lines[lines.index(key) + 1] == FIX
    assert "node5: no report: python3 -m taskcloud.hostside failed" in lines
    table = lines[: lines.index(key)]
    assert max(len(line) for line in table) <= 80
    assert "…" not in result.output
    rows = {line.split()[0]: line for line in table if line.startswith(" node")}
    assert rows["node4.cluster.example.org"].split()[1] == "unreachable"
    assert rows["node5"].split()[1:3] == ["no", "report"]
    assert "versions differ" not in result.output


@pytest.mark.parametrize(("hosts", "status"), [(["good"], 0), (["old"], 1), (["gone"], 1)])
def test_check_json(hosts, status, cli) -> None:
    """--json gives each host's report, our versions and whether all is well; a kind
    takes no profile."""
    kinds.register("fixed", type("Fixed", (Hosts,), {"__init__": _fixed(hosts)}))
    result = invoke(cli, "check", "fixed", "--json")

    assert result.exit_code == status, result.output
    listing = json.loads(result.output)
    assert listing["provider"] == listing["kind"] == "fixed"
    assert (listing["distributed"], listing["taskcloud"]) == tuple(OURS.values())
    assert listing["ok"] is (status == 0)
    assert [host["host"] for host in listing["hosts"]] == [
        {"good": "node1", "old": "node2", "gone": "node3"}[h] for h in hosts
    ]


def _fixed(hosts):
    def __init__(self, name, options) -> None:
        Hosts.__init__(self, name, {"hosts": hosts})

    return __init__


def test_check_unknown_name_exits_2(cli, write) -> None:
    """An unknown name exits 2 with one line naming the kinds and profiles there are."""
    write("pyproject.toml", PROJECT)
    result = invoke(cli, "check", "lba")

    assert result.exit_code == 2
    assert (
        f"provider='lba' is invalid. Expected a provider kind ({_kinds('hosts')}) or a "
        "profile ('here', 'lab') of [tool.taskcloud.providers]"
    ) in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_check_bad_options_is_one_line(cli, write) -> None:
    """Options the provider refuses are one line and exit 1."""
    write("pyproject.toml", "[tool.taskcloud.providers.here]\nkind = 'local'\nhosts = ['a']\n")
    result = invoke(cli, "check", "here")

    assert result.exit_code == 1
    assert "provider_options=" in result.output
    assert "Traceback" not in result.output


def test_check_local(cli) -> None:
    """The local provider reports this host, with this interpreter's versions."""
    result = invoke(cli, "check", "local", "--json")

    assert result.exit_code == 0, result.output
    (host,) = json.loads(result.output)["hosts"]
    assert host["reachable"] is True
    assert host["python"] == platform.python_version()
    assert (host["distributed"], host["taskcloud"]) == tuple(OURS.values())
    assert host["versions_match"] is True
    assert host["cores"] >= 1
    assert host["memory"] > 0


def _kinds(*extra: str) -> str:
    """The registered kinds as the messages list them."""
    from taskcloud.providers import kinds as provider_kinds

    return ", ".join(repr(kind) for kind in sorted({*provider_kinds.kinds(), *extra}))
