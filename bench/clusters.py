"""Benchmark named clusters against dask's own LocalCluster, in one run.

* start to first result: ``taskcloud.Cluster(name=..., n_workers=1)``, a client, one
  tiny task, against ``distributed.LocalCluster(n_workers=1)`` doing the same
  (bar: 3 s);
* attach: another process asking for the same name, against a raw
  ``distributed.Client`` connecting to the same scheduler with its credentials
  (bar: 0.5 s).

Both run in a fresh ``TASKCLOUD_HOME``; times are taken after imports.

    python bench/clusters.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

START_BAR = 3.0
ATTACH_BAR = 0.5


def _increment(x: int) -> int:
    return x + 1


def _local_cluster() -> float:
    from distributed import Client
    from distributed import LocalCluster

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(_increment, 1).result() == 2
        return time.perf_counter() - start


_ATTACH = """
import json, sys, time
from distributed import Client
import taskcloud.clusters

start = time.perf_counter()
cluster = taskcloud.clusters.Cluster(name=sys.argv[1])
attach = time.perf_counter() - start
assert not cluster.created
start = time.perf_counter()
client = Client(cluster.scheduler_address, security=cluster.security)
raw = time.perf_counter() - start
client.close()
cluster.close()
print(json.dumps({"attach": attach, "raw": raw}))
"""


def main() -> None:
    import json

    baseline = _local_cluster()
    with tempfile.TemporaryDirectory() as home:
        os.environ["TASKCLOUD_HOME"] = home
        import taskcloud

        start = time.perf_counter()
        cluster = taskcloud.Cluster(name="bench", n_workers=1)
        client = cluster.get_client()
        assert client.submit(_increment, 1).result() == 2
        ours = time.perf_counter() - start
        attached = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_ATTACH), "bench"],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        )
        times = json.loads(attached.stdout)
        client.close()
        cluster.close()

    rows = [
        ("start to first result", ours, baseline, "LocalCluster", START_BAR),
        ("attach by name, other process", times["attach"], times["raw"], "raw Client", ATTACH_BAR),
    ]
    print(f"{'measure':<32}{'taskcloud':>11}{'baseline':>11}  {'ratio':>7}  bar")
    for label, value, base, base_name, bar in rows:
        verdict = "ok" if value <= bar else "MISSED"
        print(
            f"{label:<32}{value:>10.3f}s{base:>10.3f}s  {value / base:>6.2f}x  "
            f"<= {bar} s ({verdict}; baseline: {base_name})"
        )


if __name__ == "__main__":
    main()
