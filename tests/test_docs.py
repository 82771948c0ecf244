"""The examples in docs_src run as documented."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pytask import ExitCode
from pytask import build

DOCS_SRC = Path(__file__).parents[1] / "docs_src"


@pytest.mark.parametrize(
    ("example", "options", "product"),
    [
        ("quickstart", {"n_workers": 2}, "report.md"),
        ("custom_backend", {"n_workers": 2, "parallel_backend": "custom"}, "hello.txt"),
    ],
)
def test_example_runs(example, options, product, tmp_path) -> None:
    """Each example succeeds in parallel and writes its product."""
    project = tmp_path / example
    shutil.copytree(DOCS_SRC / example, project)
    session = build(paths=project, **options)

    assert session.exit_code == ExitCode.OK
    assert (project / "bld" / product).stat().st_size > 0
