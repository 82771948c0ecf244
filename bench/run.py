"""Benchmark taskcloud's backends against serial pytask and pytask-parallel.

Every workflow is written into a fresh directory for every variant and run with
``pytask`` in a subprocess; the figure is the execution time pytask reports at the
end of the run. All variants run side by side in one invocation, in rounds (each variant
once per round), and the table gives each one as a ratio to its baseline together
with the issue's target. Next to each run is the CPU time the hypervisor stole from
this machine meanwhile: where that is seconds, the run measured the host.

    python bench/run.py                 # all workflows, median of 3 runs each
    python bench/run.py --repeat 1 cpu  # one workflow, one run
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

HERE = Path(__file__).parent
FOOTER = re.compile(r"in ([0-9.]+) seconds?")
HAS_PYTASK_PARALLEL = importlib.util.find_spec("pytask_parallel") is not None


@dataclass
class Variant:
    label: str
    args: list[str]
    plugin: str = "taskcloud"  # which plugin runs; the other one is blocked


@dataclass
class Target:
    """A bar: ``variant`` relative to ``baseline`` must satisfy ``check``."""

    text: str
    variant: str
    baseline: str | None
    check: Callable[[float, float], bool]
    measure: Callable[[float, float], float]
    unit: str = "x"


@dataclass
class Workflow:
    name: str
    source: str
    variants: list[Variant]
    targets: list[Target] = field(default_factory=list)
    setup: Callable[[Path], None] = lambda path: None


def _calibrate_cpu(seconds: float) -> int:
    """The loop length that keeps one core busy for about ``seconds``."""
    n = 200_000
    while True:
        start = time.perf_counter()
        total = 0
        for k in range(n):
            total += k * k % 7
        elapsed = time.perf_counter() - start
        if elapsed > 0.2:
            return int(n * seconds / elapsed)
        n *= 2


def _workflows() -> list[Workflow]:
    ratio = lambda v, b: v / b  # noqa: E731
    speedup = lambda v, b: b / v  # noqa: E731
    n_cpu = _calibrate_cpu(0.9)
    pp = [
        Variant(
            "pytask-parallel loky -n 2",
            ["-n", "2", "--parallel-backend", "loky"],
            "pytask_parallel",
        ),
    ]
    fanout = Workflow(
        "fanout",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, task

        for i in range(200):
            @task(id=str(i))
            def task_tiny(i: int = i, path: Annotated[Path, Product] = Path(f"out/{i}.txt")) -> None:
                path.write_text(str(i))
        """,
        [
            Variant("serial", []),
            Variant("loky -n 2", ["-n", "2"]),
            Variant("processes -n 2", ["-n", "2", "--parallel-backend", "processes"]),
            Variant("threads -n 2", ["-n", "2", "--parallel-backend", "threads"]),
            Variant("dask -n 2", ["-n", "2", "--parallel-backend", "dask"]),
            *pp,
            Variant(
                "pytask-parallel dask -n 2",
                ["-n", "2", "--parallel-backend", "dask"],
                "pytask_parallel",
            ),
        ],
        [
            Target(
                "loky <= 1.25 x serial", "loky -n 2", "serial", lambda v, b: v <= 1.25 * b, ratio
            ),
            Target(
                "dask <= loky + 1.5 s",
                "dask -n 2",
                "loky -n 2",
                lambda v, b: v - b <= 1.5,
                lambda v, b: v - b,
                " s more",
            ),
        ],
    )
    chain = Workflow(
        "chain",
        """
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, task

        for i in range(50):
            @task(id=str(i))
            def task_link(
                src: Path = Path(f"out/{i - 1}.txt") if i else Path("seed.txt"),
                path: Annotated[Path, Product] = Path(f"out/{i}.txt"),
            ) -> None:
                path.write_text(src.read_text() + ".")
        """,
        [
            Variant("serial", []),
            Variant("loky -n 2", ["-n", "2"]),
            Variant("threads -n 2", ["-n", "2", "--parallel-backend", "threads"]),
            *pp,
        ],
        [Target("loky <= 1.5 x serial", "loky -n 2", "serial", lambda v, b: v <= 1.5 * b, ratio)],
        setup=lambda path: path.joinpath("seed.txt").write_text("."),
    )
    cpu = Workflow(
        "cpu",
        f"""
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, task

        for i in range(4):
            @task(id=str(i))
            def task_cpu(i: int = i, path: Annotated[Path, Product] = Path(f"out/{{i}}.txt")) -> None:
                total = 0
                for k in range({n_cpu}):
                    total += k * k % 7
                path.write_text(str(total))
        """,
        [
            Variant("serial", []),
            Variant("loky -n 2", ["-n", "2"]),
            Variant("processes -n 2", ["-n", "2", "--parallel-backend", "processes"]),
            *pp,
            Variant(
                "pytask-parallel processes -n 2",
                ["-n", "2", "--parallel-backend", "processes"],
                "pytask_parallel",
            ),
        ],
        [
            Target(
                "loky >= 1.7 x faster than serial",
                "loky -n 2",
                "serial",
                lambda v, b: b / v >= 1.7,
                speedup,
                "x faster",
            ),
            Target(
                "processes >= 1.7 x faster than serial",
                "processes -n 2",
                "serial",
                lambda v, b: b / v >= 1.7,
                speedup,
                "x faster",
            ),
        ],
    )
    sleep = Workflow(
        "sleep",
        """
        import time
        from pathlib import Path
        from typing import Annotated
        from pytask import Product, task

        for i in range(8):
            @task(id=str(i))
            def task_sleep(i: int = i, path: Annotated[Path, Product] = Path(f"out/{i}.txt")) -> None:
                time.sleep(0.5)
                path.write_text(str(i))
        """,
        [
            Variant("serial", []),
            Variant("threads -n 8", ["-n", "8", "--parallel-backend", "threads"]),
            Variant(
                "pytask-parallel threads -n 8",
                ["-n", "8", "--parallel-backend", "threads"],
                "pytask_parallel",
            ),
        ],
        [
            Target(
                "threads <= 0.65 s",
                "threads -n 8",
                None,
                lambda v, b: v <= 0.65,
                lambda v, b: v,
                " s",
            )
        ],
    )
    return [fanout, chain, cpu, sleep]


def _stolen() -> float:
    """CPU seconds the hypervisor has given to other guests so far (0 off Linux).

    On a shared virtual machine this is the noise: a run that lost much CPU to
    steal is slow for reasons of the host, not of the code.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Run:
    seconds: float  # as pytask reports the execution
    steal: float  # CPU seconds stolen from this machine meanwhile


def _run_once(workflow: Workflow, variant: Variant) -> Run:
    stolen = _stolen()
    with tempfile.TemporaryDirectory(prefix=f"bench-{workflow.name}-") as tmp:
        root = Path(tmp)
        root.joinpath("task_workflow.py").write_text(textwrap.dedent(workflow.source))
        root.joinpath("out").mkdir()
        workflow.setup(root)
        blocked = "taskcloud" if variant.plugin == "pytask_parallel" else "none"
        command = [sys.executable, str(HERE / "pytask_without.py"), blocked, *variant.args]
        env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
        result = subprocess.run(
            command,
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        match = FOOTER.findall(result.stdout)
        if result.returncode != 0 or not match:
            sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
            msg = f"{workflow.name} / {variant.label} failed ({result.returncode})"
            raise RuntimeError(msg)
        return Run(float(match[-1]), _stolen() - stolen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", help="fanout, chain, cpu, sleep")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant")
    args = parser.parse_args()

    print(
        f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, "
        f"pytask-parallel installed: {HAS_PYTASK_PARALLEL}, repeat: {args.repeat}"
    )
    failed = []
    for workflow in _workflows():
        if args.workflows and workflow.name not in args.workflows:
            continue
        times: dict[str, float] = {}
        print(f"\n== {workflow.name}")
        variants = [
            v for v in workflow.variants if v.plugin != "pytask_parallel" or HAS_PYTASK_PARALLEL
        ]
        # Rounds: each variant once per round, so that a noisy minute of the host
        # falls on all variants rather than on one.
        runs: dict[str, list[Run]] = {v.label: [] for v in variants}
        for _ in range(args.repeat):
            for variant in variants:
                runs[variant.label].append(_run_once(workflow, variant))
        for variant in variants:
            its = runs[variant.label]
            times[variant.label] = statistics.median(run.seconds for run in its)
            base = times.get("serial")
            rel = f"{times[variant.label] / base:6.2f} x serial" if base else ""
            print(
                f"  {variant.label:34s} {times[variant.label]:7.2f} s  {rel}"
                f"   runs: {', '.join(f'{r.seconds:.2f}' for r in its)}"
                f"   steal: {', '.join(f'{r.steal:.1f}' for r in its)}"
            )
        for target in workflow.targets:
            value = times[target.variant]
            base = times[target.baseline] if target.baseline else 0.0
            ok = target.check(value, base)
            figure = target.measure(value, base)
            print(
                f"  target {target.text:40s} measured {figure:.2f}{target.unit}"
                f"  {'met' if ok else 'MISSED'}"
            )
            if not ok:
                failed.append(f"{workflow.name}: {target.text}")
    print("\nall targets met" if not failed else "\nmissed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
