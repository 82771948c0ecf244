"""Benchmark the Slurm provider against dask-jobqueue on a real single-node Slurm.

The test suite's Slurm (``tests/slurm.py``: munged, slurmctld and slurmd started by
hand) runs for the length of this script. Each figure is measured side by side with
its baseline in one run:

* submit to first result on a new pool, against dask-jobqueue's ``SLURMCluster`` +
  ``scale(jobs=1)`` + ``client.submit(f, x).result()``;
* a warm call's round trip against ``client.submit(f, x).result()`` on the same
  job workers (the pool's own client);
* 40 calls of 0.25 s on a pool of [0, 2] one-core jobs against the 5 s ideal, and how
  long after the last result no job of the pool is left in ``squeue``.

    python bench/slurm.py        # as root, with slurm-wlm and munge (as .ci/run installs)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import round_trips

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

KEEPALIVE = 2.0


def tiny(x: int) -> int:
    return x + 1


def quarter(x: int) -> int:
    time.sleep(0.25)
    return x


def _jobqueue_first() -> float:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    start = time.perf_counter()
    with (
        SLURMCluster(
            cores=1,
            processes=1,
            memory="1 GiB",
            walltime="00:10:00",
            python=sys.executable,
            scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
            silence_logs=50,
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(jobs=1)
        assert client.submit(tiny, 1, pure=False).result() == 2
        elapsed = time.perf_counter() - start
    return elapsed


def _ours_first() -> float:
    import taskcloud

    remote = taskcloud.function(
        memory="1 GiB", n_workers=[0, 1], keepalive="3 s", provider="bench"
    )(tiny)
    start = time.perf_counter()
    assert remote(1) == 2
    return time.perf_counter() - start


def _warm() -> tuple[float, float]:
    import taskcloud

    fixed = taskcloud.function(memory="1 GiB", n_workers=2, keepalive="60 s", provider="bench")(
        tiny
    )
    fixed(0)
    client = fixed.pool.client
    client.wait_for_workers(2)
    ours = round_trips(lambda: fixed(1))
    raw = round_trips(lambda: client.submit(tiny, 1, pure=False).result())
    return ours, raw


def _burst(slurm) -> tuple[float, float]:
    import taskcloud

    burst = taskcloud.function(
        memory="1 GiB", n_workers=[0, 2], keepalive=f"{KEEPALIVE} s", provider="bench"
    )(quarter)
    start = time.perf_counter()
    assert list(burst.map(range(40))) == list(range(40))
    done = time.perf_counter()
    deadline = done + 60
    while slurm.jobs() and time.perf_counter() < deadline:
        time.sleep(0.1)
    return done - start, time.perf_counter() - done


def main() -> None:
    from slurm import Slurm

    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    slurm = Slurm()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        home.mkdir(mode=0o700)
        os.chdir(scratch)  # where jobs write their slurm-N.out
        os.environ["TASKCLOUD_HOME"] = str(home)
        (home / "providers.toml").write_text(
            f'[providers.bench]\nkind = "slurm"\npython = "{sys.executable}"\ndeath_timeout = 5\n',
            encoding="utf-8",
        )
        try:
            slurm.start()
            os.environ["SLURM_CONF"] = str(slurm.conf)
            from taskcloud.pools import pools

            raw_first = _jobqueue_first()
            slurm.cancel_all()
            first = _ours_first()
            pools.close_all()
            ours, raw = _warm()
            pools.close_all()
            slurm.cancel_all()
            total, to_zero = _burst(slurm)
            pools.close_all()
        finally:
            slurm.cancel_all()
            slurm.stop()
    rows = [
        (
            "submit to first result, new pool",
            f"{first:.2f} s vs jobqueue {raw_first:.2f} s",
            f"{first / raw_first:.2f} x jobqueue (bar 1.2)",
            first <= 1.2 * raw_first,
        ),
        (
            "warm call round trip",
            f"{ours * 1e3:.1f} ms vs raw {raw * 1e3:.1f} ms",
            f"{ours / raw:.2f} x raw (bar 1.5)",
            ours <= 1.5 * raw,
        ),
        (
            "40 x 0.25 s on [0, 2] one-core jobs",
            f"{total:.2f} s vs ideal 5.00 s",
            f"{total / 5:.2f} x ideal (bar 1.5)",
            total <= 1.5 * 5,
        ),
        (
            "back to zero jobs",
            f"{to_zero:.2f} s after the last result",
            f"keepalive {KEEPALIVE:.0f} s + {to_zero - KEEPALIVE:.2f} s (bar + 5 s)",
            to_zero <= KEEPALIVE + 5,
        ),
    ]
    for name, measured, ratio, ok in rows:
        print(f"  {name:36s} {measured:30s} {ratio:34s} {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
