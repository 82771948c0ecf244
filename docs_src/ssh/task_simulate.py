"""Simulations on the lab's hosts, a summary here: the same file runs anywhere."""

import json
import random
import socket
from pathlib import Path
from typing import Annotated

from pytask import Product
from pytask import task

import taskcloud

SEEDS = range(4)


def host_of_this_worker() -> str:
    """The address this worker listens on: which host ran the task."""
    from distributed import get_worker

    return get_worker().address.split("://")[-1].rsplit(":", 1)[0]


for seed in SEEDS:

    @task(id=str(seed))
    @taskcloud.function(cpu=1, memory="300 MiB", n_workers=[0, 4], keepalive="5 s")
    def task_simulate(
        seed: int = seed,
        path: Annotated[Path, Product] = Path(f"bld/simulation_{seed}.json"),
    ) -> None:
        rng = random.Random(seed)
        inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(200_000))
        result = {"seed": seed, "pi": 4 * inside / 200_000, "host": host_of_this_worker()}
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(result))


def task_summary(
    simulations: tuple[Path, ...] = tuple(Path(f"bld/simulation_{seed}.json") for seed in SEEDS),
    path: Annotated[Path, Product] = Path("bld/summary.txt"),
) -> None:
    """An ordinary task: it runs on this machine."""
    results = [json.loads(p.read_text()) for p in simulations]
    mean = sum(r["pi"] for r in results) / len(results)
    hosts = sorted({r["host"] for r in results})
    here = socket.gethostname()
    path.write_text(f"pi is about {mean:.2f}; simulated on {', '.join(hosts)}; summed on {here}\n")
