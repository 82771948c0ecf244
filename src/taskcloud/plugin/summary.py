"""The part of the run's summary that says where tasks ran."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.table import Table

from taskcloud.pools import Pool

__all__ = ["where_table"]


def where_table(where: Counter[str], pools: Iterable[Pool]) -> Table:
    """A table of tasks per backend or pool, with each pool's workers and peak size."""
    table = Table(title="Where tasks ran", title_justify="left", show_edge=False)
    table.add_column("Where")
    table.add_column("Tasks", justify="right")
    table.add_column("Workers started", justify="right")
    table.add_column("Peak workers", justify="right")
    by_label = {pool.label: pool for pool in pools}
    for label, count in where.most_common():
        pool = by_label.get(label)
        started = str(pool.stats.started) if pool else ""
        peak = str(pool.stats.peak) if pool else ""
        table.add_row(label, str(count), started, peak)
    return table
