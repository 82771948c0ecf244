"""Named software environments, built once from their spec into a cache.

A pip or conda environment is built into ``<home>/environments/<key>``, where the key
is a hash of the spec's content and of the running interpreter, so the same spec is
never built twice. A build goes into a temporary sibling directory that is renamed into
place only when it is complete, so a failed build leaves nothing behind.

Workers need distributed, cloudpickle and taskcloud at the versions of the process that
sends them work. A built environment gets them by layering: a ``.pth`` file adds the
running environment's site-packages after its own, so the packages it installs itself
shadow the running ones. Its installs are constrained to the running versions of the
worker essentials, and a build fails unless they import at those versions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import frozen
from rich.console import Console

import taskcloud
from taskcloud.errors import EnvironmentBuildError
from taskcloud.errors import EnvironmentNotSupportedError
from taskcloud.errors import EnvironmentToolNotFoundError
from taskcloud.errors import InvalidOptionError
from taskcloud.errors import SoftwareEnvironmentNotFoundError
from taskcloud.specs import check_name
from taskcloud.store import Store
from taskcloud.store import home

__all__ = [
    "SoftwareSpec",
    "create_software_environment",
    "delete_software_environment",
    "environment_python",
    "list_software_environments",
]

_TABLE = "environments"
#: Written last into a build; a directory without it is not an environment.
_COMPLETE = ".taskcloud-complete"
#: The distributions a worker imports, pinned to the running versions.
_ESSENTIALS = ("distributed", "dask", "cloudpickle", "taskcloud")
_SPEC_OPTIONS = ("pip", "conda", "container")
#: Build tools by kind, the preferred first.
_TOOLS = {"conda": ("micromamba", "mamba", "conda"), "container": ("docker", "podman")}
_TOOL_NAMES = {"conda": "conda, mamba or micromamba", "container": "docker or podman"}

_PIP_FORM = (
    "a list of requirement strings, or the path of a requirements file (options such as "
    "--index-url belong in the file)"
)
_CONDA_FORM = (
    "a list of conda packages, a dict like environment.yml "
    "({'channels': [...], 'dependencies': [...]}), or the path of an environment.yml"
)
_CONTAINER_FORM = "an image reference like 'ghcr.io/org/image:tag'"

_CHECK_ESSENTIALS = (
    "import importlib.metadata, json, sys\n"
    "import cloudpickle, dask, distributed, taskcloud\n"
    "names = sys.argv[1:]\n"
    "found = {n: importlib.metadata.version(n) for n in names}\n"
    "found['python'] = '%d.%d' % sys.version_info[:2]\n"
    "print(json.dumps(found))\n"
)


@frozen
class SoftwareSpec:
    """What an environment is built from: one pip, conda or container spec, normalised.

    ``content`` is what the build depends on, and so what the cache key hashes;
    ``source`` is the file it was read from, if any.
    """

    kind: str
    content: Mapping[str, Any]
    source: str | None = None

    @classmethod
    def from_options(
        cls, *, pip: Any = None, conda: Any = None, container: Any = None
    ) -> SoftwareSpec:
        """Check the options of :func:`create_software_environment` and normalise them."""
        given = {"pip": pip, "conda": conda, "container": container}
        chosen = [option for option in _SPEC_OPTIONS if given[option] is not None]
        if not chosen:
            raise InvalidOptionError("pip", None, "one of pip=, conda= or container= to build from")
        if len(chosen) > 1:
            raise InvalidOptionError(
                chosen[1],
                given[chosen[1]],
                f"only one of pip=, conda= or container=; {chosen[0]}= is given too",
            )
        if pip is not None:
            return _pip_spec(pip)
        if conda is not None:
            return _conda_spec(conda)
        return _container_spec(container)

    @property
    def key(self) -> str:
        """The cache key: a hash of the content, the interpreter and the essentials."""
        payload = {
            "kind": self.kind,
            "spec": self.content,
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "layers": _running_site_packages(),
            "essentials": _running_versions(),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _pip_spec(pip: Any) -> SoftwareSpec:
    if isinstance(pip, str | os.PathLike):
        path = _existing_file("pip", pip, _PIP_FORM)
        return SoftwareSpec("pip", {"requirements_txt": path.read_text()}, str(path))
    requirements = [_absolute(value) for value in _strings("pip", pip, _PIP_FORM)]
    return SoftwareSpec("pip", {"requirements": requirements})


def _absolute(requirement: str) -> str:
    """A local path as an absolute one, so that the key names what gets installed."""
    if requirement.startswith(".") or os.sep in requirement:
        path = Path(requirement).expanduser()
        if path.exists():
            return str(path.resolve())
    return requirement


def _conda_spec(conda: Any) -> SoftwareSpec:
    if isinstance(conda, str | os.PathLike):
        path = _existing_file("conda", conda, _CONDA_FORM)
        return SoftwareSpec("conda", {"environment_yml": path.read_text()}, str(path))
    if isinstance(conda, Mapping):
        dependencies = conda.get("dependencies")
        channels = conda.get("channels", [])
        if not isinstance(dependencies, list) or not dependencies or not _all_str(channels):
            raise InvalidOptionError("conda", conda, _CONDA_FORM)
        # A name or prefix in the file would fight the prefix that the build sets.
        environment = {k: v for k, v in conda.items() if k not in ("name", "prefix")}
        return SoftwareSpec("conda", {"environment": json.loads(json.dumps(environment))})
    return SoftwareSpec("conda", {"packages": _strings("conda", conda, _CONDA_FORM)})


def _container_spec(container: Any) -> SoftwareSpec:
    if not isinstance(container, str) or not container or container.split() != [container]:
        raise InvalidOptionError("container", container, _CONTAINER_FORM)
    return SoftwareSpec("container", {"image": container})


def _all_str(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(value, str) for value in values)


def _strings(parameter: str, values: Any, accepted: str) -> list[str]:
    """A non-empty list of requirement strings, none of them an option, sorted."""
    if not isinstance(values, list | tuple) or not values or not _all_str(list(values)):
        raise InvalidOptionError(parameter, values, accepted)
    cleaned = sorted({value.strip() for value in values})
    if not all(cleaned) or any(value.startswith("-") for value in cleaned):
        raise InvalidOptionError(parameter, values, accepted)
    return cleaned


def _existing_file(parameter: str, value: str | os.PathLike[str], accepted: str) -> Path:
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise InvalidOptionError(parameter, value, f"{accepted}; no file {path} exists")
    return path


def _running_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _running_versions() -> dict[str, str]:
    versions = {}
    for name in _ESSENTIALS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = taskcloud.__version__ if name == "taskcloud" else "missing"
    return versions


class _Report:
    """Shows a build's steps on stderr with a rich spinner, or shows nothing."""

    def __init__(self, enabled: bool) -> None:
        self._console = Console(stderr=True) if enabled else None

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        if self._console is None:
            yield
            return
        with self._console.status(text):
            yield

    def line(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, highlight=False)


def create_software_environment(
    name: str,
    *,
    pip: list[str] | str | os.PathLike[str] | None = None,
    conda: list[str] | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    container: str | None = None,
    force_rebuild: bool = False,
    progress: bool = True,
    store: Store | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the environment of one spec and save it as ``name``.

    Give exactly one of ``pip`` (requirement strings, or a requirements.txt path),
    ``conda`` (packages, an environment.yml dict, or its path) or ``container`` (an
    image). The cache key is the spec's content: a file's text rather than its path, a
    local wheel's path rather than its bytes. A spec that was built before is reused
    without running anything; ``force_rebuild`` builds it afresh, e.g. after the wheel
    changed. Returns the saved record.
    """
    spec = SoftwareSpec.from_options(pip=pip, conda=conda, container=container)
    name = check_name(name)
    store = store or Store()
    key = spec.key
    final = _root() / key
    report = _Report(progress)
    if force_rebuild or not (final / _COMPLETE).is_file():
        start = time.perf_counter()
        _build(name, spec, final, report, replace=force_rebuild or final.exists())
        report.line(f"built {name} in {time.perf_counter() - start:.2f} s")
    else:
        report.line(f"{name}: using cached build {key}")
    record = {
        "kind": spec.kind,
        "spec": {**spec.content, **({"file": spec.source} if spec.source else {})},
        "key": key,
        "path": str(final),
        "python": platform.python_version(),
        "created": time.time(),
    }
    previous = store.get(_TABLE, name)
    store.put(_TABLE, name, record)
    if previous is not None and previous["key"] != key:
        _remove_if_unused(previous["key"], store)
    return record


def list_software_environments(store: Store | None = None) -> dict[str, dict[str, Any]]:
    """Every saved software environment, by name."""
    return (store or Store()).all(_TABLE)


def delete_software_environment(name: str, store: Store | None = None) -> None:
    """Remove the environment ``name``, and its build when no other name uses it; warn
    naming the saved cluster configurations that use it, which fail until it is back."""
    store = store or Store()
    record = store.get(_TABLE, name)
    if record is None or not store.delete(_TABLE, name):
        raise SoftwareEnvironmentNotFoundError(name, store.all(_TABLE))
    _remove_if_unused(record["key"], store)
    # The configurations' own table: their module imports this one.
    users = [
        key for key, saved in store.all("configurations").items() if saved.get("software") == name
    ]
    if users:
        listed = ", ".join(repr(user) for user in sorted(users))
        which = f"configurations {listed} use" if len(users) > 1 else f"configuration {listed} uses"
        it = "they fail" if len(users) > 1 else "it fails"
        warnings.warn(
            f"the cluster {which} the deleted software environment {name!r}; {it} until "
            "it is created again.",
            stacklevel=2,
        )


def environment_python(name: str, store: Store | None = None) -> Path:
    """The Python executable of the built pip or conda environment ``name``."""
    store = store or Store()
    record = store.get(_TABLE, name)
    if record is None:
        raise SoftwareEnvironmentNotFoundError(name, store.all(_TABLE))
    if record["kind"] == "container":
        raise EnvironmentNotSupportedError(name, "container", "local")
    path = Path(record["path"])
    if not (path / _COMPLETE).is_file():
        raise EnvironmentBuildError(
            name, f"its build {path} is gone. Create the environment again to rebuild it."
        )
    return _python(path)


def _root() -> Path:
    return home() / "environments"


def _python(prefix: Path) -> Path:
    if os.name != "nt":
        return prefix / "bin" / "python"
    # A venv keeps it in Scripts, a conda environment at its root.
    scripts = prefix / "Scripts" / "python.exe"
    return scripts if scripts.exists() else prefix / "python.exe"


def _site_packages(prefix: Path) -> Path:
    if os.name == "nt":
        return prefix / "Lib" / "site-packages"
    return prefix / "lib" / "python{}.{}".format(*sys.version_info[:2]) / "site-packages"


def _build(name: str, spec: SoftwareSpec, final: Path, report: _Report, replace: bool) -> None:
    """Build into a temporary sibling of ``final`` and rename it into place.

    ``replace`` discards a build already at ``final``; otherwise one that another
    process finished meanwhile wins, and ours is dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f"{final.name}.building-{secrets.token_hex(4)}")
    try:
        _BUILDERS[spec.kind](name, spec, staging, report)
        (staging / _COMPLETE).write_text(json.dumps({"name": name, "kind": spec.kind}))
        if replace:
            _discard(final)
        _move_into_place(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, final: Path) -> None:
    try:
        os.rename(staging, final)
    except OSError:
        # Another process built the same key first; its copy is as good as ours.
        if not (final / _COMPLETE).is_file():
            raise


def _discard(path: Path) -> None:
    """Remove a build; renamed first, so that it never looks complete half-removed."""
    doomed = path.with_name(f"{path.name}.deleting-{secrets.token_hex(4)}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_if_unused(key: str, store: Store) -> None:
    if all(record.get("key") != key for record in store.all(_TABLE).values()):
        _discard(_root() / key)


def _run(name: str, what: str, command: list[str], cwd: str | None = None) -> str:
    """Run a build command; its own error output becomes the build error."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()) or "no output"
        raise EnvironmentBuildError(name, f"{what} failed (exit {result.returncode}):\n{output}")
    return result.stdout


def _uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def _build_pip(name: str, spec: SoftwareSpec, staging: Path, report: _Report) -> None:
    uv = _uv()
    with report.step("creating virtual environment"):
        venv = ["venv", "--quiet", "--no-project", "--relocatable", "--python", sys.executable]
        _run(name, "uv venv", [uv, *venv, str(staging)])
        _layer(name, staging)
    requirements = _pip_arguments(spec, staging)
    constraints = staging / "taskcloud-constraints.txt"
    versions = _running_versions()
    constraints.write_text(
        "".join(f"{n}=={versions[n]}\n" for n in ("distributed", "dask", "cloudpickle"))
    )
    with report.step(f"installing {_count(spec)} requirements with uv"):
        command = [uv, "pip", "install", "--quiet", "--python", str(_python(staging))]
        # Run inside the build, so that a relative path fails instead of resolving
        # against wherever the same content was first built from.
        arguments = [*command, "-c", str(constraints), *requirements]
        _run(name, "uv pip install", arguments, cwd=str(staging))
    with report.step("checking worker essentials"):
        _check_essentials(name, staging)


def _pip_arguments(spec: SoftwareSpec, staging: Path) -> list[str]:
    if "requirements" in spec.content:
        return list(spec.content["requirements"])
    path = staging / "taskcloud-requirements.txt"
    path.write_text(spec.content["requirements_txt"])
    return ["-r", str(path)]


def _count(spec: SoftwareSpec) -> int:
    if "requirements" in spec.content:
        return len(spec.content["requirements"])
    lines = (line.split("#")[0].strip() for line in spec.content["requirements_txt"].splitlines())
    # Options such as --index-url are not requirements; editable installs are.
    return sum(1 for line in lines if line and (line[0] != "-" or line.startswith("-e")))


def _layer(name: str, prefix: Path) -> None:
    """Make the running environment's packages importable after the new ones."""
    site_packages = _site_packages(prefix)
    if not site_packages.is_dir():
        raise EnvironmentBuildError(
            name,
            f"it has no {site_packages.relative_to(prefix)}, so it is not a Python "
            "{}.{} environment. Add python={}.{} to its packages.".format(
                *sys.version_info[:2], *sys.version_info[:2]
            ),
        )
    calls = "; ".join(f"site.addsitedir({path!r})" for path in _running_site_packages())
    (site_packages / "_taskcloud_layer.pth").write_text(f"import site; {calls}\n")


def _check_essentials(name: str, prefix: Path) -> None:
    """Fail unless the worker essentials import in ``prefix`` at the running versions."""
    expected = {**_running_versions(), "python": "{}.{}".format(*sys.version_info[:2])}
    names = list(_ESSENTIALS)
    output = _run(
        name,
        "importing the worker essentials",
        [str(_python(prefix)), "-c", _CHECK_ESSENTIALS, *names],
    )
    found = json.loads(output.strip().splitlines()[-1])
    wrong = [f"{n} {found.get(n)} (needs {v})" for n, v in expected.items() if found.get(n) != v]
    if wrong:
        raise EnvironmentBuildError(
            name,
            f"workers need what the running process has, but it has {', '.join(wrong)}. "
            "Loosen the pins that force other versions.",
        )


def _tool(kind: str) -> str:
    for candidate in _TOOLS[kind]:
        found = shutil.which(candidate)
        if found:
            return found
    raise EnvironmentToolNotFoundError(kind, _TOOL_NAMES[kind])


def _build_conda(name: str, spec: SoftwareSpec, staging: Path, report: _Report) -> None:
    tool = _tool("conda")
    with tempfile.TemporaryDirectory(dir=staging.parent) as scratch:
        command = _conda_command(tool, spec, staging, Path(scratch))
        with report.step(f"creating conda environment with {Path(tool).name}"):
            _run(name, f"{Path(tool).name} create", command)
    with report.step("checking worker essentials"):
        _layer(name, staging)
        _check_essentials(name, staging)


def _conda_command(tool: str, spec: SoftwareSpec, prefix: Path, scratch: Path) -> list[str]:
    python = "python={}.{}".format(*sys.version_info[:2])
    if "packages" in spec.content:
        packages = list(spec.content["packages"])
        if not any(re.match(r"^python\b(?!-)", package) for package in packages):
            packages.append(python)
        return [tool, "create", "--yes", "--prefix", str(prefix), *packages]
    file = scratch / "environment.yml"
    if "environment" in spec.content:
        # JSON is YAML, and saves a YAML writer.
        file.write_text(json.dumps(spec.content["environment"]))
    else:
        file.write_text(spec.content["environment_yml"])
    create = ["create", "--yes"] if Path(tool).name == "micromamba" else ["env", "create"]
    return [tool, *create, "--prefix", str(prefix), "--file", str(file)]


def _build_container(name: str, spec: SoftwareSpec, staging: Path, report: _Report) -> None:
    tool = _tool("container")
    image = spec.content["image"]
    with report.step(f"pulling {image} with {Path(tool).name}"):
        _run(name, f"{Path(tool).name} pull", [tool, "pull", image])
    staging.mkdir()
    (staging / "image").write_text(f"{image}\n")


_BUILDERS = {"pip": _build_pip, "conda": _build_conda, "container": _build_container}
