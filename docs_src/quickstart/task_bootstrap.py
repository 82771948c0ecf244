"""Bootstrap each chunk's mean: heavy tasks, sent to a pool of right-sized workers.

With ``pytask -n 2`` these run on adaptively scaled local worker processes of one
core and 512 MiB each, while the ordinary tasks run on the two loky workers. Without
``-n`` they run in pytask's own process, like any task.
"""

import random
import statistics
from pathlib import Path
from typing import Annotated

from pytask import task

import taskcloud

BLD = Path(__file__).parent / "bld"

for chunk in range(4):

    @task(id=str(chunk))
    @taskcloud.function(cpu=1, memory="512 MiB", n_workers=[0, 2], keepalive="5 s")
    def task_bootstrap(
        chunk: int = chunk, path: Path = BLD / f"chunk-{chunk}.txt"
    ) -> Annotated[str, BLD / f"estimate-{chunk}.txt"]:
        values = [float(line) for line in path.read_text().splitlines()]
        rng = random.Random(chunk)
        means = [statistics.fmean(rng.choices(values, k=2_000)) for _ in range(200)]
        low, high = sorted(means)[5], sorted(means)[194]
        print(f"chunk {chunk}: {len(values)} values, {len(means)} resamples")
        mean = statistics.fmean(values)
        return f"chunk {chunk}: mean {mean:.3f}, 95% interval [{low:.3f}, {high:.3f}]"
