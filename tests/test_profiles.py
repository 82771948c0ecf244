"""Provider profiles from the project's pyproject.toml and $TASKCLOUD_HOME/providers.toml."""

from __future__ import annotations

import re

import pytest

from taskcloud import profiles
from taskcloud.errors import InvalidOptionError

LAB = """
[tool.taskcloud]
provider = "lab"

[tool.taskcloud.providers.lab]
kind = "ssh"
hosts = ["node1", "user@node2:2222"]
python = "/opt/venv/bin/python"
"""

USER = """
provider = "mine"

[providers.mine]
kind = "local"

[providers.lab]
kind = "local"
hosts = ["elsewhere"]
"""


@pytest.fixture
def user_file(taskcloud_home):
    """Write $TASKCLOUD_HOME/providers.toml."""

    def _write(text: str):
        path = taskcloud_home / profiles.USER_FILE
        path.write_text(text)
        return path

    return _write


def test_project_profile_is_read(tmp_path, write) -> None:
    """A [tool.taskcloud.providers.NAME] table is a profile: its kind, the rest its options."""
    project = write("pyproject.toml", LAB)
    found = profiles.load(tmp_path)

    lab = found.profiles["lab"]
    assert lab.kind == "ssh"
    assert lab.options == {"hosts": ["node1", "user@node2:2222"], "python": "/opt/venv/bin/python"}
    assert lab.source == str(project)
    assert lab.table == "tool.taskcloud.providers.lab"
    assert (found.default, found.default_source) == ("lab", str(project))


def test_project_is_found_from_a_subdirectory(tmp_path, write) -> None:
    """The project's pyproject.toml is the nearest one at or above the start."""
    write("pyproject.toml", LAB)
    below = tmp_path / "src" / "analysis"
    below.mkdir(parents=True)

    assert "lab" in profiles.load(below).profiles


def test_working_directory_is_the_default_start(tmp_path, write, monkeypatch) -> None:
    """Without a start, the project is the working directory's."""
    write("pyproject.toml", LAB)
    monkeypatch.chdir(tmp_path)

    assert profiles.default_provider() == "lab"


def test_user_file_is_read(tmp_path, user_file) -> None:
    """[providers.NAME] and provider = of $TASKCLOUD_HOME/providers.toml count too."""
    path = user_file(USER)
    found = profiles.load(tmp_path)

    assert found.profiles["mine"].kind == "local"
    assert found.profiles["mine"].table == "providers.mine"
    assert found.profiles["mine"].source == str(path)
    assert profiles.default_choice(tmp_path) == ("mine", str(path))


def test_project_wins_over_user(tmp_path, write, user_file) -> None:
    """A profile and a default in both files are the project's; the user's others stay."""
    project = write("pyproject.toml", LAB)
    user_file(USER)
    found = profiles.load(tmp_path)

    assert found.profiles["lab"].kind == "ssh"
    assert found.profiles["lab"].source == str(project)
    assert "mine" in found.profiles
    assert profiles.default_choice(tmp_path) == ("lab", str(project))


def test_default_is_local_when_nothing_names_one(tmp_path, write) -> None:
    """A project and user without provider = get the local provider."""
    write("pyproject.toml", "[tool.taskcloud.providers.here]\nkind = 'local'\n")

    assert profiles.default_choice(tmp_path) == ("local", "built-in")


def test_overriding_wins_and_ends(tmp_path, write) -> None:
    """--provider's name is the default inside the block only, innermost first."""
    write("pyproject.toml", LAB)
    with profiles.overriding("here"):
        assert profiles.default_choice(tmp_path) == ("here", profiles.COMMAND_LINE)
        with profiles.overriding("there"):
            assert profiles.default_provider(tmp_path) == "there"
        with profiles.overriding(None):
            assert profiles.default_provider(tmp_path) == "here"
    assert profiles.default_provider(tmp_path) == "lab"


def test_overriding_root_is_the_project(tmp_path, write, monkeypatch) -> None:
    """A run's project root is read wherever the working directory is."""
    write("project/pyproject.toml", LAB)
    monkeypatch.chdir(tmp_path)
    with profiles.overriding(None, root=tmp_path / "project"):
        assert profiles.default_provider() == "lab"
        assert "lab" in profiles.load().profiles
    assert profiles.default_provider() == "local"


@pytest.mark.parametrize("where", ["project", "user"])
def test_bad_toml_names_the_file(where, tmp_path, write, user_file) -> None:
    """A file that is not TOML is named in the error."""
    path = write("pyproject.toml", "[tool\n") if where == "project" else user_file("x = \n")

    with pytest.raises(InvalidOptionError, match=re.escape(repr(str(path)))) as caught:
        profiles.load(tmp_path)
    assert "Expected a readable TOML file" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[tool.taskcloud.providers.lab]\nhosts = ['a']\n",
            "tool.taskcloud.providers.lab.kind=None is invalid. Expected the provider kind "
            'it uses, e.g. kind = "ssh", in ',
        ),
        (
            "[tool.taskcloud.providers.lab]\nkind = 3\n",
            "tool.taskcloud.providers.lab.kind=3 is invalid.",
        ),
        (
            "[tool.taskcloud.providers]\nlab = 'ssh'\n",
            "tool.taskcloud.providers.lab='ssh' is invalid. Expected a table of provider options in ",
        ),
        (
            "[tool.taskcloud]\nproviders = 1\n",
            "tool.taskcloud.providers=1 is invalid. Expected a table in ",
        ),
        ("[tool]\ntaskcloud = 'x'\n", "tool.taskcloud='x' is invalid. Expected a table in "),
        (
            "[tool.taskcloud]\nprovider = 2\n",
            "tool.taskcloud.provider=2 is invalid. Expected a provider kind or profile name in ",
        ),
    ],
)
def test_bad_tables_name_parameter_value_and_form(text, message, tmp_path, write) -> None:
    """A malformed profile or default names its table, its value, what it should be and
    the file."""
    project = write("pyproject.toml", text)

    with pytest.raises(InvalidOptionError) as caught:
        profiles.load(tmp_path)
    assert str(caught.value).startswith(message)
    assert str(project) in str(caught.value)


def test_bad_user_profile_names_its_table(tmp_path, user_file) -> None:
    """The user's file's tables are named as written there: providers.NAME."""
    path = user_file("[providers.box]\nhosts = []\n")

    with pytest.raises(InvalidOptionError, match=r"^providers\.box\.kind=None is invalid") as e:
        profiles.load(tmp_path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("option", "secret"),
    [
        ("password", True),
        ("api_token", True),
        ("client_secret", True),
        ("key", True),
        ("ssh_key", True),
        ("identity", False),
        ("identity_key", False),
        ("hosts", False),
        ("known_hosts", False),
    ],
)
def test_is_secret(option, secret) -> None:
    """Passwords, tokens, secrets and keys are secrets; an identity file's path is not."""
    assert profiles.is_secret(option) is secret


def test_public_options_hide_secrets(tmp_path, write) -> None:
    """A listing shows every option but secrets, whose values are ***, nested ones too."""
    write(
        "pyproject.toml",
        """
        [tool.taskcloud.providers.gw]
        kind = "gateway"
        address = "https://gw"
        auth = { kind = "jupyterhub", api_token = "abc" }
        password = "hunter2"
        """,
    )
    shown = profiles.load(tmp_path).profiles["gw"].public_options()

    assert shown == {
        "address": "https://gw",
        "auth": {"kind": "jupyterhub", "api_token": "***"},
        "password": "***",
    }
