"""Combine the per-chunk estimates into one report: an ordinary, local task."""

from pathlib import Path
from typing import Annotated

from pytask import Product

BLD = Path(__file__).parent / "bld"


def task_report(
    estimates: list[Path] = [BLD / f"estimate-{chunk}.txt" for chunk in range(4)],  # noqa: B006
    path: Annotated[Path, Product] = BLD / "report.md",
) -> None:
    lines = [estimate.read_text() for estimate in estimates]
    path.write_text("# Report\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
