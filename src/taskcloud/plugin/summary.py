"""The part of the run's summary that says where tasks ran."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from collections.abc import Mapping

from rich.table import Table

from taskcloud.pools import Pool

__all__ = ["where_table"]


def where_table(
    where: Counter[str], pools: Iterable[Pool], workers: Mapping[str, int] | None = None
) -> Table:
    """A table of tasks per backend or pool: the workers of each (a backend's, or
    those a pool started and its peak size), how long a pool waited for room on the
    host when any did, where its workers ran when any pool's ran beyond this host
    and, where a pool has one, its dashboard."""
    by_label = {pool.label: pool for pool in pools}
    links = {label: pool.dashboard_link for label, pool in by_label.items()}
    waits = {label: pool.waited_for_capacity for label, pool in by_label.items()}
    waited = any(seconds >= 0.05 for seconds in waits.values())
    table = Table(title="Where tasks ran", title_justify="left", show_edge=False)
    table.add_column("Where")
    table.add_column("Tasks", justify="right")
    table.add_column("Workers", justify="right")
    table.add_column("Peak workers", justify="right")
    hosts = {label: pool.where for label, pool in by_label.items()}
    remote = any(on != "this host" for on in hosts.values())
    if remote:
        table.add_column("On")
    if waited:
        table.add_column("Waited for capacity", justify="right")
    if any(links.values()):
        table.add_column("Dashboard")
    for label, count in where.most_common():
        pool = by_label.get(label)
        if pool is not None:
            row = [label, str(count), str(pool.stats.started), str(pool.stats.peak)]
        else:
            n_workers = (workers or {}).get(label)
            row = [label, str(count), "" if n_workers is None else str(n_workers), ""]
        if remote:
            row.append(hosts.get(label, "this host"))
        if waited:
            seconds = waits.get(label, 0.0)
            row.append(f"{seconds:.1f} s" if seconds >= 0.05 else "")
        if any(links.values()):
            row.append(links.get(label, ""))
        table.add_row(*row)
    return table
