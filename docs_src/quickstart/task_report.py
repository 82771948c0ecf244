"""Summarise every chunk, then combine the summaries into one report."""

import statistics
from pathlib import Path
from typing import Annotated

from pytask import Product
from pytask import task

BLD = Path(__file__).parent / "bld"

for chunk in range(4):

    @task(id=str(chunk))
    def task_summarise(
        path: Path = BLD / f"chunk-{chunk}.txt",
    ) -> Annotated[str, BLD / f"summary-{chunk}.txt"]:
        values = [float(line) for line in path.read_text().splitlines()]
        print(f"{path.name}: {len(values)} values")
        return (
            f"{path.stem}: mean {statistics.fmean(values):.3f}, sd {statistics.stdev(values):.3f}"
        )


def task_report(
    summaries: list[Path] = [BLD / f"summary-{chunk}.txt" for chunk in range(4)],  # noqa: B006
    path: Annotated[Path, Product] = BLD / "report.md",
) -> None:
    lines = [summary.read_text() for summary in summaries]
    path.write_text("# Report\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
