"""Simulate four chunks of data; each chunk is an independent task."""

import random
from pathlib import Path
from typing import Annotated

from pytask import Product
from pytask import task

BLD = Path(__file__).parent / "bld"

for chunk in range(4):

    @task(id=str(chunk))
    def task_simulate(
        chunk: int = chunk, path: Annotated[Path, Product] = BLD / f"chunk-{chunk}.txt"
    ) -> None:
        rng = random.Random(chunk)
        values = [rng.gauss(chunk, 1.0) for _ in range(50_000)]
        path.write_text("\n".join(f"{value:.6f}" for value in values))
