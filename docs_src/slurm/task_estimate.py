"""Run with ``pytask -n 2`` on a Slurm login node: ``task_estimate`` runs in a job."""

import os
from pathlib import Path
from typing import Annotated

from pytask import Product

import taskcloud


@taskcloud.function(provider="hpc", cpu=1, memory="500 MiB", keepalive="5 s")
def task_estimate(path: Annotated[Path, Product] = Path("bld/estimate.txt")) -> None:
    """Estimate pi in a Slurm job of one core and 500 MiB."""
    state, inside, n = 1, 0, 100_000
    for _ in range(n):
        state = (1103515245 * state + 12345) % 2**31
        x = state / 2**31
        state = (1103515245 * state + 12345) % 2**31
        inside += x * x + (state / 2**31) ** 2 <= 1
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{4 * inside / n:.3f} from Slurm job {os.environ.get('SLURM_JOB_ID')}\n")


def task_report(
    estimate: Path = Path("bld/estimate.txt"),
    path: Annotated[Path, Product] = Path("bld/report.txt"),
) -> None:
    """A light task: it stays on this machine."""
    path.write_text(f"pi is about {estimate.read_text()}")
