"""Backends added by another installed package through the taskcloud entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = """
from concurrent.futures import ThreadPoolExecutor

import taskcloud


def build(n_workers):
    return ThreadPoolExecutor(n_workers, thread_name_prefix="from-plugin")


@taskcloud.hookimpl
def taskcloud_add_parallel_backends(registry):
    registry.register_parallel_backend("plugin-threads", build, worker_type="threads")
    registry.register_parallel_backend("processes", build, worker_type="threads")
"""

TASK = """
import threading
from pathlib import Path
from typing import Annotated
from pytask import Product

def task_where(path: Annotated[Path, Product] = Path("where.txt")) -> None:
    path.write_text(threading.current_thread().name)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Install a one-module package with a ``taskcloud`` entry point, as pip would."""
    site = tmp_path / "site"
    (site / "mybackends").mkdir(parents=True)
    (site / "mybackends" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "mybackends-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mybackends\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[taskcloud]\nmybackends = mybackends\n")
    (info / "RECORD").write_text("")
    return site


def _pytask(project: Path, *args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "150", "NO_COLOR": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytask", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_installed_plugin_adds_a_backend(tmp_path, site) -> None:
    """An installed extension's backend is selectable by its name."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "task_where.py").write_text(TASK)

    result = _pytask(project, "--parallel-backend", "plugin-threads", site=site)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / "where.txt").read_text().startswith("from-plugin")


def test_plugin_that_replaces_a_builtin_name_wins(tmp_path, site) -> None:
    """The built-in backend's workers start before extensions load; the one that
    replaces it still runs the tasks."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "task_where.py").write_text(TASK)

    result = _pytask(project, "-n", "2", "--parallel-backend", "processes", site=site)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / "where.txt").read_text().startswith("from-plugin")


def test_without_the_plugin_the_name_is_unknown(tmp_path) -> None:
    """Without the extension installed, the name is rejected and nothing runs."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "task_where.py").write_text(TASK)

    result = _pytask(project, "--parallel-backend", "plugin-threads")

    assert result.returncode == 2  # pytask's ExitCode.CONFIGURATION_FAILED
    assert "No registered parallel backend found for 'plugin-threads'." in result.stdout
    assert "Running tasks on" not in result.stdout
    assert not (project / "where.txt").exists()


def test_configuration_file_names_a_plugin_backend(tmp_path, site) -> None:
    """The configuration file may name an extension's backend: it is checked once the
    extensions have loaded."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "task_where.py").write_text(TASK)
    (project / "pyproject.toml").write_text(
        '[tool.pytask.ini_options]\nparallel_backend = "plugin-threads"\n'
    )

    result = _pytask(project, site=site)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running tasks on 1 worker of the 'plugin-threads' backend." in result.stdout
    assert (project / "where.txt").read_text().startswith("from-plugin")
