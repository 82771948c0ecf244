"""The provider seam on this host: pools, configurations and named clusters reach their
workers through the provider a profile, a kind or a registered plugin names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import taskcloud
from taskcloud.capacity import HostCapacity
from taskcloud.errors import InvalidOptionError
from taskcloud.providers import kinds
from taskcloud.providers.local import LocalProvider
from tests import helpers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_pools", "stop_leftover_clusters")]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project whose pyproject.toml defines the local profile ``here``."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.taskcloud.providers.here]\nkind = "local"\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


class Elsewhere(LocalProvider):
    """A third-party kind, as a plugin would register it; its workers count its pools."""

    kind = "elsewhere"
    started: list[str] = []

    def __init__(self, name: str, options: dict) -> None:
        unknown = set(options) - {"tag"}
        if unknown:
            raise InvalidOptionError("provider_options", options, "only 'tag'")
        super().__init__(name, {}, capacity=HostCapacity(ledger=None))
        self.tag = options.get("tag", "")

    def worker(self, request):
        Elsewhere.started.append(f"{self.tag}:{request.name}")
        return super().worker(request)


def test_a_registered_provider_starts_the_pool_of_a_function_that_names_it(project):
    """``provider=`` naming a plugin's kind starts the pool's workers through its
    ``worker``; the pool's label says where it runs."""
    kinds.register("elsewhere", Elsewhere)
    (project / "pyproject.toml").write_text(
        '[tool.taskcloud.providers.far]\nkind = "elsewhere"\ntag = "t1"\n', encoding="utf-8"
    )
    Elsewhere.started.clear()
    remote = taskcloud.function(memory="300 MiB", provider="far")(helpers.pid)
    assert remote() != os.getpid()
    assert Elsewhere.started == ["t1:0"]
    assert remote.pool.label.endswith("on far")


def test_the_projects_default_provider_holds_for_functions_that_name_none(project):
    """``provider = "NAME"`` in [tool.taskcloud] is the provider of every decorated
    function without ``provider=``; a bad option of the profile is an error at the call."""
    kinds.register("elsewhere", Elsewhere)
    (project / "pyproject.toml").write_text(
        '[tool.taskcloud]\nprovider = "far"\n\n'
        '[tool.taskcloud.providers.far]\nkind = "elsewhere"\ncolour = "red"\n',
        encoding="utf-8",
    )
    remote = taskcloud.function(memory="300 MiB")(helpers.pid)
    with pytest.raises(InvalidOptionError, match=r"provider_options=.*colour.*only 'tag'"):
        remote()


def test_a_saved_configuration_names_its_provider(project):
    """A configuration's ``provider`` holds for the decorator and for a named cluster,
    which lists it; an unknown one is refused when saved."""
    taskcloud.create_cluster_configuration("cfg", worker_cpu=1, provider="here")
    with pytest.raises(InvalidOptionError, match="provider='moon'"):
        taskcloud.create_cluster_configuration("bad", provider="moon")
    remote = taskcloud.function(configuration="cfg", memory="300 MiB")(helpers.pid)
    assert remote.spec.provider == "here"
    assert remote() != os.getpid()
    cluster = taskcloud.Cluster(name="seam", configuration="cfg", n_workers=1)
    try:
        listed = taskcloud.list_clusters()["seam"]
        assert listed["provider"] == "here"
        assert listed["where"] == "this host"
        assert cluster.where == "this host"
    finally:
        cluster.shutdown_on_close = True
        cluster.close()
