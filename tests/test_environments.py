"""Software environments: built once with uv from a local wheel, offline, and reused."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import taskcloud
from taskcloud import environments
from taskcloud.capacity import HostCapacity
from taskcloud.environments import create_software_environment
from taskcloud.environments import delete_software_environment
from taskcloud.environments import environment_python
from taskcloud.environments import list_software_environments
from taskcloud.errors import EnvironmentBuildError
from taskcloud.errors import EnvironmentNotSupportedError
from taskcloud.errors import EnvironmentToolNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import SoftwareEnvironmentNotFoundError
from taskcloud.pools import pools
from taskcloud.store import Store

PACKAGE = "taskcloud_probe_pkg"


def make_wheel(directory: Path, package: str = PACKAGE, version: str = "1.0") -> Path:
    """Write a pure-Python wheel of one module by hand."""
    info = f"{package}-{version}.dist-info"
    files = {
        f"{package}/__init__.py": f"VALUE = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = directory / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, content in files.items():
            wheel.writestr(name, content)
        wheel.writestr(f"{info}/RECORD", record)
    return path


def run_in(name: str, source: str) -> str:
    """Run ``source`` with the environment's Python; return what it printed."""
    python = environment_python(name)
    result = subprocess.run(
        [str(python), "-c", source], capture_output=True, text=True, check=True, timeout=120
    )
    return result.stdout.strip()


def builds(taskcloud_home: Path) -> list[str]:
    root = taskcloud_home / "environments"
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


@pytest.fixture
def offline(monkeypatch) -> None:
    """Builds must not reach the network; uv reads only its cache and local files."""
    monkeypatch.setenv("UV_OFFLINE", "1")


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return make_wheel(tmp_path)


@pytest.mark.usefixtures("offline")
def test_pip_environment_from_a_local_wheel(wheel, capsys) -> None:
    """The package imports in the environment, beside taskcloud and distributed, not here."""
    record = create_software_environment("probe", pip=[str(wheel)])
    assert record["kind"] == "pip"
    assert record["spec"] == {"requirements": [str(wheel)]}
    assert "built probe in" in capsys.readouterr().err
    printed = run_in(
        "probe",
        f"import {PACKAGE}, taskcloud, distributed; print({PACKAGE}.VALUE, taskcloud.__version__)",
    )
    assert printed == f"1.0 {taskcloud.__version__}"
    assert importlib.util.find_spec(PACKAGE) is None
    assert list_software_environments()["probe"]["key"] == record["key"]


@pytest.mark.usefixtures("offline")
def test_packages_of_the_environment_shadow_the_running_ones(tmp_path) -> None:
    """A package installed in the environment wins over the running environment's copy."""
    assert importlib.util.find_spec("iniconfig") is not None
    shadow = make_wheel(tmp_path, "iniconfig", "99.0")
    create_software_environment("shadow", pip=[str(shadow)], progress=False)
    assert run_in("shadow", "import iniconfig; print(iniconfig.VALUE)") == "99.0"


@pytest.mark.usefixtures("offline")
def test_the_same_spec_is_built_once(wheel, taskcloud_home, monkeypatch, capsys) -> None:
    """Creating the same spec again, under any name, reuses the build and runs nothing."""
    first = create_software_environment("one", pip=[str(wheel)], progress=False)
    marker = Path(first["path"]) / ".taskcloud-complete"
    stamp = marker.stat().st_mtime_ns

    def no_subprocess(*args, **kwargs):
        pytest.fail("a cached environment must not run anything")

    monkeypatch.setattr(environments, "_run", no_subprocess)
    monkeypatch.setattr(environments, "_uv", no_subprocess)
    second = create_software_environment("two", pip=[str(wheel)])
    assert second["key"] == first["key"]
    assert second["path"] == first["path"]
    assert builds(taskcloud_home) == [first["key"]]
    assert marker.stat().st_mtime_ns == stamp
    assert f"two: using cached build {first['key']}" in capsys.readouterr().err
    assert list(list_software_environments()) == ["one", "two"]


@pytest.mark.usefixtures("offline")
def test_force_rebuild_replaces_the_build(wheel, taskcloud_home) -> None:
    first = create_software_environment("one", pip=[str(wheel)], progress=False)
    marker = Path(first["path"]) / ".taskcloud-complete"
    inode = marker.stat().st_ino
    again = create_software_environment("one", pip=[str(wheel)], force_rebuild=True)
    assert again["key"] == first["key"]
    assert builds(taskcloud_home) == [first["key"]]
    assert marker.stat().st_ino != inode
    assert run_in("one", f"import {PACKAGE}; print({PACKAGE}.VALUE)") == "1.0"


@pytest.mark.usefixtures("offline")
def test_concurrent_builders_of_one_spec_share_a_build(wheel, taskcloud_home) -> None:
    """Processes that build the same spec at once all succeed; one build remains."""
    script = (
        "import sys\n"
        "from taskcloud.environments import create_software_environment\n"
        "create_software_environment(sys.argv[1], pip=[sys.argv[2]], progress=False)\n"
    )
    builders = [
        subprocess.Popen([sys.executable, "-c", script, f"p{n}", str(wheel)]) for n in range(3)
    ]
    assert [builder.wait(timeout=120) for builder in builders] == [0, 0, 0]
    keys = {record["key"] for record in list_software_environments().values()}
    assert len(keys) == 1
    assert builds(taskcloud_home) == sorted(keys)


@pytest.mark.usefixtures("offline")
def test_replacing_a_name_drops_its_unused_build(wheel, tmp_path, taskcloud_home) -> None:
    old = create_software_environment("env", pip=[str(wheel)], progress=False)
    newer = make_wheel(tmp_path, version="2.0")
    new = create_software_environment("env", pip=[str(newer)], progress=False)
    assert builds(taskcloud_home) == [new["key"]] != [old["key"]]
    assert run_in("env", f"import {PACKAGE}; print({PACKAGE}.VALUE)") == "2.0"


@pytest.mark.usefixtures("offline")
def test_a_failed_build_leaves_nothing_behind(taskcloud_home) -> None:
    """uv's resolver message reaches the user; no directory and no record remain."""
    with pytest.raises(
        EnvironmentBuildError,
        match=r"(?s)Could not build the software environment 'broken'.*"
        r"definitely-not-a-package-xyz was not found",
    ):
        create_software_environment(
            "broken", pip=["definitely-not-a-package-xyz==1.0"], progress=False
        )
    assert builds(taskcloud_home) == []
    assert list_software_environments() == {}


@pytest.mark.usefixtures("offline")
def test_a_spec_that_needs_other_worker_essentials_fails_in_the_resolver(taskcloud_home) -> None:
    """distributed is pinned to the running version, so another pin cannot resolve."""
    import distributed

    with pytest.raises(
        EnvironmentBuildError,
        match=rf"you require distributed==2024\.1\.0 and distributed=={distributed.__version__}",
    ):
        create_software_environment("old", pip=["distributed==2024.1.0"], progress=False)
    assert builds(taskcloud_home) == []


@pytest.mark.usefixtures("offline")
def test_requirements_file_content_is_the_key(wheel, tmp_path, taskcloud_home) -> None:
    """Two requirements files with the same content share one build."""
    first = tmp_path / "a" / "requirements.txt"
    second = tmp_path / "b" / "requirements.txt"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(f"# the probe\n{wheel}\n")
    saved = create_software_environment("from-file", pip=first, progress=False)
    assert saved["spec"] == {"requirements_txt": f"# the probe\n{wheel}\n", "file": str(first)}
    shared = create_software_environment("same-content", pip=str(second), progress=False)
    assert shared["key"] == saved["key"]
    assert builds(taskcloud_home) == [saved["key"]]
    assert run_in("same-content", f"import {PACKAGE}; print({PACKAGE}.VALUE)") == "1.0"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({}, r"pip=None is invalid\. Expected one of pip=, conda=", id="none"),
        pytest.param(
            {"pip": ["numpy"], "conda": ["numpy"]},
            r"conda=\['numpy'\] is invalid\. Expected only one of .* pip= is given too",
            id="two",
        ),
        pytest.param({"pip": 5}, r"pip=5 is invalid\. Expected a list of requirement", id="int"),
        pytest.param({"pip": []}, r"pip=\[\] is invalid", id="empty"),
        pytest.param({"pip": ["--index-url", "x"]}, r"options such as --index-url", id="option"),
        pytest.param({"pip": "missing.txt"}, r"no file .*missing\.txt exists", id="no-file"),
        pytest.param(
            {"conda": {"channels": []}}, r"conda=\{'channels': \[\]\} is invalid", id="dict"
        ),
        pytest.param({"container": "two words"}, r"container='two words' is invalid", id="image"),
    ],
)
def test_bad_specs_name_the_option(arguments, message, taskcloud_home) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        create_software_environment("env", **arguments)
    assert builds(taskcloud_home) == []
    assert list_software_environments() == {}


def test_bad_names_are_refused(wheel) -> None:
    with pytest.raises(InvalidOptionError, match=r"name='no spaces' is invalid"):
        create_software_environment("no spaces", pip=[str(wheel)])


@pytest.mark.usefixtures("offline")
def test_delete_removes_the_build_when_no_name_uses_it(wheel, taskcloud_home) -> None:
    key = create_software_environment("one", pip=[str(wheel)], progress=False)["key"]
    create_software_environment("two", pip=[str(wheel)], progress=False)
    delete_software_environment("one")
    assert list(list_software_environments()) == ["two"]
    assert builds(taskcloud_home) == [key]
    delete_software_environment("two")
    assert list_software_environments() == {}
    assert builds(taskcloud_home) == []


def test_unknown_names_list_the_saved_ones() -> None:
    Store().put("environments", "img", {"kind": "container", "key": "k", "path": "p"})
    with pytest.raises(
        SoftwareEnvironmentNotFoundError,
        match=r"No software environment named 'imgg'\. Saved: 'img'\.",
    ):
        delete_software_environment("imgg")
    with pytest.raises(SoftwareEnvironmentNotFoundError, match=r"named 'nope'\. Saved: 'img'"):
        environment_python("nope")


def test_container_environments_have_no_local_python() -> None:
    Store().put("environments", "img", {"kind": "container", "key": "k", "path": "p"})
    with pytest.raises(
        EnvironmentNotSupportedError,
        match=r"'img' is a container environment, and the local provider cannot start",
    ):
        environment_python("img")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            {"conda": ["numpy"]},
            r"conda environments need conda, mamba or micromamba on PATH; none was found",
            id="conda",
        ),
        pytest.param(
            {"conda": {"channels": ["conda-forge"], "dependencies": ["numpy"]}},
            r"conda environments need conda, mamba or micromamba on PATH",
            id="conda-dict",
        ),
        pytest.param(
            {"container": "ghcr.io/org/image:tag"},
            r"container environments need docker or podman on PATH; none was found",
            id="container",
        ),
    ],
)
def test_missing_build_tools_are_named(arguments, message, tmp_path, monkeypatch, taskcloud_home):
    """Without the tool on PATH nothing is built, saved or pretended."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EnvironmentToolNotFoundError, match=message):
        create_software_environment("env", **arguments)
    assert builds(taskcloud_home) == []
    assert list_software_environments() == {}


@pytest.mark.usefixtures("offline")
def test_records_are_json_with_the_interpreter(wheel) -> None:
    record = create_software_environment("probe", pip=[str(wheel)], progress=False)
    assert record["python"] == platform.python_version()
    assert json.loads(json.dumps(record)) == record
    assert environment_python("probe") == Path(record["path"]) / "bin" / "python"


def _probe() -> str:
    import taskcloud_probe_pkg  # only the software environment has it

    return taskcloud_probe_pkg.VALUE


@pytest.mark.slow
@pytest.mark.usefixtures("offline")
def test_decorated_function_runs_in_its_software_environment(wheel) -> None:
    create_software_environment("probe", pip=[str(wheel)], progress=False)
    probe = taskcloud.function(_probe, software="probe", n_workers=[0, 1], keepalive=1)
    try:
        assert probe() == "1.0"
        with pytest.raises(ModuleNotFoundError, match=PACKAGE):
            probe.local()
    finally:
        probe.cluster.close()


@pytest.mark.slow
@pytest.mark.usefixtures("offline")
def test_cluster_runs_in_its_software_environment(wheel) -> None:
    create_software_environment("probe", pip=[str(wheel)], progress=False)

    def probe() -> str:  # local, so that it travels by value
        import taskcloud_probe_pkg

        return taskcloud_probe_pkg.VALUE

    with taskcloud.Cluster(software="probe", n_workers=1) as cluster:
        assert Path(cluster.record["python"]) == environment_python("probe")
        with cluster.get_client() as client:
            assert client.submit(probe).result(timeout=60) == "1.0"
    assert importlib.util.find_spec(PACKAGE) is None


@pytest.mark.slow
@pytest.mark.usefixtures("offline")
def test_an_idle_software_pool_makes_room_at_once_for_a_waiting_pool(wheel) -> None:
    """The idle worker of a software environment's pool leaves for a pool that waits
    for room, long before its keepalive, as any pool's idle worker does.

    Such workers start from dask's command line, which reports a name of digits as
    an int; a spec that named them as strings never found them to retire at once.
    """
    create_software_environment("sixenv", pip=[str(wheel)], progress=False)
    cores = HostCapacity(ledger=None).cores  # together they need one core too many
    single = taskcloud.function(_probe, cpu=1, software="sixenv", keepalive="120 s")
    whole = taskcloud.function(os.getpid, cpu=cores, memory="1 GiB", keepalive="5 s")
    try:
        assert single() == "1.0"
        # Well within the idle worker's 120 s keepalive.
        assert whole.submit().result(timeout=60) != os.getpid()
        assert whole.pool.waited_for_capacity > 0
    finally:
        pools.close_all()


def test_unknown_software_environment_is_named_at_first_call() -> None:
    function = taskcloud.function(len, software="missing")
    with pytest.raises(SoftwareEnvironmentNotFoundError, match="missing"):
        function("abc")
