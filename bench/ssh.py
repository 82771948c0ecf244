"""Benchmark the SSH provider against a real sshd on this machine's loopback addresses.

The test suite's sshd (``tests/sshd.py``) listens on 127.0.0.1 and 127.0.0.2, two
"hosts" of this machine. Each figure is measured side by side with its baseline in
one run:

* the first call on a new SSH pool, to its result, against the first call on a new
  local pool (both in this process, each pool new);
* a warm call's round trip against ``client.submit(f, x).result()`` on the same
  SSH-started workers (the pool's own client);
* ``.map`` over 1,000 tiny inputs against ``client.map`` + ``client.gather`` there;
* 40 calls of 0.25 s on a pool of [0, 4] one-core workers over both hosts against the
  2.5 s ideal, and how long after the last result the pool is back to zero workers.

    python bench/ssh.py          # needs Debian's openssh-server (as .ci/run installs)
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
from common import toml_value

KEEPALIVE = 2.0


def tiny(x: int) -> int:
    return x + 1


def quarter(x: int) -> int:
    time.sleep(0.25)
    return x


def _write_profile(home: Path, options: dict[str, object]) -> None:
    lines = ["[providers.bench]", 'kind = "ssh"']
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    (home / "providers.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _first_call(provider: str | None, keepalive: str) -> float:
    import taskcloud

    # A keepalive of its own: a new spec, so a new pool.
    remote = taskcloud.function(n_workers=[0, 1], keepalive=keepalive, provider=provider)(tiny)
    start = time.perf_counter()
    assert remote(1) == 2
    return time.perf_counter() - start


def _warm(provider: str) -> tuple[float, float, float, float]:
    import taskcloud

    fixed = taskcloud.function(n_workers=2, keepalive="60 s", provider=provider)(tiny)
    fixed(0)
    client = fixed.pool.client
    client.wait_for_workers(2)
    ours = round_trips(lambda: fixed(1))
    raw = round_trips(lambda: client.submit(tiny, 1, pure=False).result())
    start = time.perf_counter()
    assert list(fixed.map(range(1000))) == [x + 1 for x in range(1000)]
    mapped = time.perf_counter() - start
    start = time.perf_counter()
    client.gather(client.map(tiny, range(1000), pure=False))
    raw_mapped = time.perf_counter() - start
    return ours, raw, mapped, raw_mapped


def _burst(provider: str) -> tuple[float, float, dict[str, int]]:
    import taskcloud

    burst = taskcloud.function(n_workers=[0, 4], keepalive=f"{KEEPALIVE} s", provider=provider)(
        quarter
    )
    start = time.perf_counter()
    assert list(burst.map(range(40))) == list(range(40))
    done = time.perf_counter()
    hosts: dict[str, int] = {}
    for worker in burst.pool.client.scheduler_info()["workers"]:
        host = worker.split("://")[-1].rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + 1
    deadline = done + 60
    while burst.pool.n_workers and time.perf_counter() < deadline:
        time.sleep(0.05)
    return done - start, time.perf_counter() - done, hosts


def main() -> None:
    from tests.sshd import SSHD

    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        home.mkdir(mode=0o700)
        os.environ["TASKCLOUD_HOME"] = str(home)
        (Path(scratch) / "sshd").mkdir()
        sshd = SSHD(Path(scratch) / "sshd")
        sshd.start()
        try:
            _write_profile(home, sshd.options())
            from taskcloud.pools import pools

            local_first = _first_call(None, "3 s")
            ssh_first = _first_call("bench", "4 s")
            pools.close_all()
            ours, raw, mapped, raw_mapped = _warm("bench")
            pools.close_all()
            total, to_zero, hosts = _burst("bench")
            pools.close_all()
        finally:
            from taskcloud.providers import kinds

            kinds.close_all()
            sshd.stop()
    rows = [
        (
            "first call on a new SSH pool",
            f"{ssh_first:.2f} s vs local {local_first:.2f} s",
            f"{ssh_first / local_first:.2f} x local (bar 2)",
            ssh_first <= 2 * local_first,
        ),
        (
            "warm call round trip",
            f"{ours * 1e3:.1f} ms vs raw {raw * 1e3:.1f} ms",
            f"{ours / raw:.2f} x raw (bar 1.5)",
            ours <= 1.5 * raw,
        ),
        (
            "map over 1,000 tiny inputs",
            f"{mapped:.2f} s vs raw {raw_mapped:.2f} s",
            f"{mapped / raw_mapped:.2f} x raw (bar 1.2)",
            mapped <= 1.2 * raw_mapped,
        ),
        (
            "40 x 0.25 s on [0, 4] over 2 hosts",
            f"{total:.2f} s vs ideal 2.50 s",
            f"{total / 2.5:.2f} x ideal (bar 1.3)",
            total <= 1.3 * 2.5,
        ),
        (
            "back to zero workers",
            f"{to_zero:.2f} s after the last result",
            f"keepalive {KEEPALIVE:.0f} s + {to_zero - KEEPALIVE:.2f} s (bar + 3 s)",
            to_zero <= KEEPALIVE + 3,
        ),
    ]
    print(f"(the burst's workers per host: {hosts})")
    for name, measured, ratio, ok in rows:
        print(f"  {name:36s} {measured:30s} {ratio:34s} {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
