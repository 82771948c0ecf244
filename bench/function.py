"""Benchmark ``@taskcloud.function`` against raw dask on the same machine.

Each figure is measured side by side with its baseline in one run:

* first call on a new pool, to its result (fresh process; the bar is 1.5 s);
* a warm call's round trip against ``client.submit(f, x).result()`` on a
  ``LocalCluster`` of the same size, secured as pools are (TLS, a fresh key);
* ``.map`` over 1,000 tiny inputs against ``client.map`` + ``client.gather``;
* 40 calls of 0.25 s on a pool of [0, 2] one-core workers against the 5 s ideal, and
  how long after the last result the pool is back to zero workers.

    python bench/function.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from common import round_trips

import taskcloud
from taskcloud.pools import pools

KEEPALIVE = 2.0

FIRST_CALL = textwrap.dedent(
    """
    import time
    start = time.perf_counter()
    import taskcloud

    def one(x):
        return x

    if __name__ == "__main__":
        remote = taskcloud.function(n_workers=[0, 1], keepalive="2 s")(one)
        t0 = time.perf_counter()
        assert remote(1) == 1
        print(time.perf_counter() - t0, t0 - start)
    """
)


def tiny(x: int) -> int:
    return x + 1


def quarter(x: int) -> int:
    time.sleep(0.25)
    return x


def _first_call() -> tuple[float, float]:
    result = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, check=True
    )
    call, imports = result.stdout.split()
    return float(call), float(imports)


def _raw(n_workers: int) -> tuple[float, float]:
    from distributed import Client
    from distributed import LocalCluster

    from taskcloud import credentials

    # The same security as a pool's: TLS for every party, with credentials of its own.
    security, directory = credentials.ephemeral("raw dask")
    try:
        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                host="127.0.0.1",
                protocol="tls",
                security=security,
                dashboard_address=None,
                silence_logs=50,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(n_workers)
            trip = round_trips(lambda: client.submit(tiny, 1, pure=False).result())
            start = time.perf_counter()
            client.gather(client.map(tiny, range(1000), pure=False))
            mapped = time.perf_counter() - start
    finally:
        credentials.discard(directory)
    return trip, mapped


def _ours(n_workers: int) -> tuple[float, float]:
    fixed = taskcloud.function(n_workers=n_workers, keepalive="60 s")(tiny)
    fixed(0)
    fixed.client.wait_for_workers(n_workers)
    trip = round_trips(lambda: fixed(1))
    start = time.perf_counter()
    list(fixed.map(range(1000)))
    mapped = time.perf_counter() - start
    return trip, mapped


def _burst() -> tuple[float, float]:
    burst = taskcloud.function(n_workers=[0, 2], keepalive=f"{KEEPALIVE} s")(quarter)
    start = time.perf_counter()
    assert list(burst.map(range(40))) == list(range(40))
    done = time.perf_counter()
    deadline = done + 60
    while burst.pool.n_workers and time.perf_counter() < deadline:
        time.sleep(0.05)
    return done - start, time.perf_counter() - done


def main() -> None:
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    first, imports = _first_call()
    raw_trip, raw_map = _raw(2)
    trip, mapped = _ours(2)
    pools.close_all()
    total, to_zero = _burst()
    rows = [
        (
            "first call on a new pool",
            f"{first:.2f} s",
            f"{first / 1.5:.2f} x the 1.5 s bar",
            first <= 1.5,
        ),
        (
            "warm call round trip",
            f"{trip * 1e3:.1f} ms vs raw {raw_trip * 1e3:.1f} ms",
            f"{trip / raw_trip:.2f} x raw (bar 1.5)",
            trip <= 1.5 * raw_trip,
        ),
        (
            "map over 1,000 tiny inputs",
            f"{mapped:.2f} s vs raw {raw_map:.2f} s",
            f"{mapped / raw_map:.2f} x raw (bar 1.2)",
            mapped <= 1.2 * raw_map,
        ),
        (
            "40 x 0.25 s on [0, 2] workers",
            f"{total:.2f} s vs ideal 5.00 s",
            f"{total / 5:.2f} x ideal (bar 1.3)",
            total <= 1.3 * 5,
        ),
        (
            "back to zero workers",
            f"{to_zero:.2f} s after the last result",
            f"keepalive {KEEPALIVE:.0f} s + {to_zero - KEEPALIVE:.2f} s (bar + 2 s)",
            to_zero <= KEEPALIVE + 2,
        ),
    ]
    print(f"(importing taskcloud in the first-call process took {imports:.2f} s)")
    for name, measured, ratio, ok in rows:
        print(f"  {name:32s} {measured:32s} {ratio:34s} {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
