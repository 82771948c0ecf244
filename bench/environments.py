"""Benchmark building a pip software environment, and creating it again from the cache.

Offline, in a fresh ``TASKCLOUD_HOME``, from a one-module wheel this script writes:

* the first build of the environment, against the bar of 5 s;
* creating the same spec again (the median of 20), against the bar of 0.2 s;

and, side by side, ``python -m venv`` plus ``pip install`` of the same wheel.

    python bench/environments.py
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

FIRST_BUILD_BAR = 5.0
CACHED_BAR = 0.2


def make_wheel(directory: Path, package: str = "bench_probe", version: str = "1.0") -> Path:
    """A pure-Python wheel of one module, written by hand."""
    info = f"{package}-{version}.dist-info"
    files = {
        f"{package}/__init__.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = directory / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, content in files.items():
            wheel.writestr(name, content)
        wheel.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in files))
    return path


def _plain_venv(scratch: Path, wheel: Path) -> float:
    """The baseline: ``python -m venv`` and ``pip install`` of the same wheel, offline."""
    target = scratch / "plain-venv"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    subprocess.run(
        [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["TASKCLOUD_HOME"] = str(Path(scratch) / "home")
        os.environ["UV_OFFLINE"] = "1"
        from taskcloud.environments import create_software_environment

        wheel = make_wheel(Path(scratch))
        spec = [str(wheel)]
        plain = _plain_venv(Path(scratch), wheel)
        start = time.perf_counter()
        create_software_environment("bench", pip=spec, progress=False)
        first = time.perf_counter() - start
        cached = []
        # With its progress line, as a user sees it; the line goes nowhere here.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            for n in range(20):
                start = time.perf_counter()
                create_software_environment(f"bench-{n}", pip=spec)
                cached.append(time.perf_counter() - start)
    median = statistics.median(cached)
    print(
        f"first build, one local wheel:  {first:6.2f} s   (bar {FIRST_BUILD_BAR:.1f} s; "
        f"{first / plain:.2f} x a plain venv + pip install of it, {plain:.2f} s)"
    )
    print(
        f"cached create, median of 20:   {median:6.3f} s   (bar {CACHED_BAR:.1f} s; "
        f"max {max(cached):.3f} s)"
    )
    sys.exit(0 if first <= FIRST_BUILD_BAR and median <= CACHED_BAR else 1)


if __name__ == "__main__":
    main()
