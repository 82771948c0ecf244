"""Provider kinds (taskcloud.providers.kinds): built-in, profiles resolved to kinds, and entry-point providers."""

from __future__ import annotations

import pickle
import re
import textwrap

import pytest

from taskcloud.errors import InvalidOptionError
from taskcloud.errors import ProviderLoadError
from taskcloud.errors import ProviderNotFoundError
from taskcloud.providers import kinds
from taskcloud.providers.kinds import Resolved

PROJECT = """
[tool.taskcloud]
provider = "lab"

[tool.taskcloud.providers.lab]
kind = "ssh"
hosts = ["node1", "node2"]
python = "/opt/venv/bin/python"

[tool.taskcloud.providers.here]
kind = "local"
"""


class Recorder:
    """A provider that keeps what it was built with and whether it was closed."""

    kind = "recorder"

    def __init__(self, name, options) -> None:
        self.name = name
        self.options = options
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def _own_registrations(monkeypatch):
    """What a test registers or builds is forgotten after it."""
    monkeypatch.setattr(kinds, "_registered", {})
    monkeypatch.setattr(kinds, "_built", {})


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """An installed distribution on sys.path whose entry point adds provider kinds."""

    def _install(entry_points: str, module: str) -> None:
        site = tmp_path / "site"
        info = site / "myproviders-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myproviders\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            "[taskcloud.providers]\n" + textwrap.dedent(entry_points)
        )
        (site / "myproviders.py").write_text(textwrap.dedent(module))
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delitem(__import__("sys").modules, "myproviders", raising=False)

    return _install


PLUGIN = """
class MineProvider:
    kind = "mine"

    def __init__(self, name, options):
        if set(options) - {"queue"}:
            raise ValueError(f"unknown options {sorted(options)}")
        self.name = name
        self.options = options

    def close(self):
        pass
"""


def test_kinds_are_built_in(tmp_path) -> None:
    """local and ssh are registered without any plugin."""
    assert {"local", "ssh"} <= set(kinds.kinds())


def test_a_kind_resolves_to_itself(tmp_path) -> None:
    """A registered kind with no profile of its name is that kind with the options given."""
    assert kinds.resolve("local", start=tmp_path) == Resolved("local", "local", {})
    assert kinds.resolve("ssh", {"hosts": ["a"]}, start=tmp_path) == Resolved(
        "ssh", "ssh", {"hosts": ["a"]}
    )


def test_a_profile_resolves_to_its_kind_and_options(tmp_path, write) -> None:
    """A profile's name gives its kind and options."""
    write("pyproject.toml", PROJECT)

    assert kinds.resolve("lab", start=tmp_path) == Resolved(
        "lab", "ssh", {"hosts": ["node1", "node2"], "python": "/opt/venv/bin/python"}
    )


def test_options_are_laid_over_the_profile(tmp_path, write) -> None:
    """Options given with the name replace the profile's of the same key only."""
    write("pyproject.toml", PROJECT)
    resolved = kinds.resolve("lab", {"hosts": ["node3"], "user": "me"}, start=tmp_path)

    assert resolved.options == {
        "hosts": ["node3"],
        "python": "/opt/venv/bin/python",
        "user": "me",
    }


def test_none_is_the_default_provider(tmp_path, write) -> None:
    """No name is the project's provider =, else local."""
    assert kinds.resolve(None, start=tmp_path).kind == "local"
    write("pyproject.toml", PROJECT)
    assert kinds.resolve(None, start=tmp_path).name == "lab"


def test_a_profile_named_like_a_kind_wins(tmp_path, write) -> None:
    """A profile called local is the profile, not the bare kind."""
    write("pyproject.toml", "[tool.taskcloud.providers.local]\nkind = 'ssh'\nhosts = ['a']\n")

    assert kinds.resolve("local", start=tmp_path) == Resolved("local", "ssh", {"hosts": ["a"]})


def test_the_user_profile_resolves(tmp_path, taskcloud_home) -> None:
    """A profile of $TASKCLOUD_HOME/providers.toml resolves like the project's."""
    (taskcloud_home / "providers.toml").write_text("[providers.box]\nkind = 'local'\n")

    assert kinds.resolve("box", start=tmp_path) == Resolved("box", "local", {})


@pytest.mark.parametrize("name", ["nope", "", 3])
def test_unknown_name_lists_kinds_and_profiles(name, tmp_path, write) -> None:
    """A name that is neither names the parameter, the value and every kind and profile."""
    write("pyproject.toml", PROJECT)

    with pytest.raises(ProviderNotFoundError) as caught:
        kinds.resolve(name, start=tmp_path)
    assert str(caught.value) == (
        f"provider={name!r} is invalid. Expected a provider kind ({_kinds()}) or a "
        "profile ('here', 'lab') of [tool.taskcloud.providers] in pyproject.toml or "
        "[providers] in $TASKCLOUD_HOME/providers.toml."
    )
    assert isinstance(caught.value, InvalidOptionError)
    assert isinstance(caught.value, LookupError)


def test_unknown_name_without_profiles_says_so(tmp_path) -> None:
    """With no profile anywhere, the message says none are defined."""
    with pytest.raises(ProviderNotFoundError, match=r"or a profile \(none defined\) of "):
        kinds.resolve("lba", start=tmp_path)


def test_unknown_name_error_survives_pickling(tmp_path) -> None:
    """The error keeps its message when it crosses a process boundary."""
    error = ProviderNotFoundError("lba", ["local"], ["lab"])

    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_profile_with_an_unknown_kind(tmp_path, write) -> None:
    """A profile whose kind nothing registered names its table, the kind, the registered
    kinds and the file."""
    project = write("pyproject.toml", "[tool.taskcloud.providers.hpc]\nkind = 'slurmm'\n")

    with pytest.raises(InvalidOptionError) as caught:
        kinds.resolve("hpc", start=tmp_path)
    assert str(caught.value) == (
        "tool.taskcloud.providers.hpc.kind='slurmm' is invalid. Expected a registered "
        f"provider kind ({_kinds()}) in {project}."
    )


@pytest.mark.parametrize("metadata", ["stdlib", "backport"])
def test_entry_point_adds_a_kind(metadata, tmp_path, write, plugin_dist) -> None:
    """A distribution's taskcloud.providers entry point is a kind that resolves and
    builds, also once the importlib_metadata backport took over entry_points()."""
    if metadata == "backport":
        pytest.importorskip("importlib_metadata", reason="the backport is not installed")
    plugin_dist("mine = myproviders:MineProvider\n", PLUGIN)
    write("pyproject.toml", "[tool.taskcloud.providers.batch]\nkind = 'mine'\nqueue = 'short'\n")

    assert kinds.describe(kinds.kinds()["mine"]) == "myproviders:MineProvider"
    resolved = kinds.resolve("batch", start=tmp_path)
    provider = kinds.get(resolved)
    assert type(provider).__name__ == "MineProvider"
    assert (provider.name, provider.options) == ("batch", {"queue": "short"})


def test_entry_point_that_fails_to_import(tmp_path, plugin_dist) -> None:
    """A kind whose module does not import is one error naming the kind and its target."""
    plugin_dist("broken = myproviders:MineProvider\n", "import not_a_module_anywhere\n")
    resolved = kinds.resolve("broken", start=tmp_path)

    with pytest.raises(ProviderLoadError) as caught:
        kinds.get(resolved)
    assert str(caught.value) == (
        "Provider kind 'broken' (myproviders:MineProvider) could not be loaded: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    )
    assert isinstance(caught.value, ImportError)


def test_entry_point_naming_a_missing_class(tmp_path, plugin_dist) -> None:
    """A target whose module lacks the class is the same error."""
    plugin_dist("typo = myproviders:MineProvidr\n", PLUGIN)

    with pytest.raises(ProviderLoadError, match=re.escape("'typo' (myproviders:MineProvidr)")):
        kinds.get(kinds.resolve("typo", start=tmp_path))


def test_register_a_class(tmp_path) -> None:
    """register() adds a kind that resolves and builds with the name and options."""
    kinds.register("recorder", Recorder)
    provider = kinds.get(kinds.resolve("recorder", {"x": 1}, start=tmp_path))

    assert isinstance(provider, Recorder)
    assert (provider.name, provider.options) == ("recorder", {"x": 1})


def test_register_an_import_path(tmp_path) -> None:
    """register() takes a 'module:Class' path, imported when the kind is first built."""
    kinds.register("recorder", f"{__name__}:Recorder")

    assert isinstance(kinds.build(kinds.resolve("recorder", start=tmp_path)), Recorder)


def test_register_wins_over_built_in(tmp_path) -> None:
    """A kind registered at run time replaces one of the same name."""
    kinds.register("local", Recorder)

    assert isinstance(kinds.build(kinds.resolve("local", start=tmp_path)), Recorder)


@pytest.mark.parametrize(
    ("kind", "provider", "message"),
    [
        ("my-kind", Recorder, "kind='my-kind' is invalid. Expected a provider name such as 'ssh'."),
        (3, Recorder, "kind=3 is invalid."),
        (
            "fine",
            "no.colon",
            "provider='no.colon' is invalid. Expected a provider class or its 'module:Class' path.",
        ),
        ("fine", 42, "provider=42 is invalid."),
    ],
)
def test_register_checks_its_arguments(kind, provider, message) -> None:
    """A kind that is not a name, or a provider that is neither a class nor a path, is refused."""
    with pytest.raises(InvalidOptionError, match=re.escape(message)):
        kinds.register(kind, provider)


def test_get_builds_once_per_name_and_options(tmp_path) -> None:
    """The same name and options give the same provider; other options another."""
    kinds.register("recorder", Recorder)
    first = kinds.get(kinds.resolve("recorder", {"a": 1}, start=tmp_path))

    assert kinds.get(kinds.resolve("recorder", {"a": 1}, start=tmp_path)) is first
    assert kinds.get(kinds.resolve("recorder", {"a": 2}, start=tmp_path)) is not first


def test_close_all_closes_and_forgets(tmp_path) -> None:
    """close_all() closes every built provider; the next get() builds a new one."""
    kinds.register("recorder", Recorder)
    resolved = kinds.resolve("recorder", start=tmp_path)
    first = kinds.get(resolved)
    kinds.close_all()

    assert first.closed
    assert kinds.get(resolved) is not first


def _kinds(*extra: str) -> str:
    """The registered kinds as the messages list them."""
    from taskcloud.providers import kinds as provider_kinds

    return ", ".join(repr(kind) for kind in sorted({*provider_kinds.kinds(), *extra}))
