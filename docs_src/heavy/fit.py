"""Use ``@taskcloud.function`` outside pytask: run with ``python docs_src/heavy/fit.py``."""

import math

import taskcloud


@taskcloud.function(cpu=1, memory="512 MiB", n_workers=[0, 2], keepalive="5 s")
def simulate(seed: int, n: int = 200_000) -> float:
    """Estimate pi from ``n`` pseudo-random points."""
    state, inside = seed or 1, 0
    for _ in range(n):
        state = (1103515245 * state + 12345) % 2**31
        x = state / 2**31
        state = (1103515245 * state + 12345) % 2**31
        y = state / 2**31
        inside += x * x + y * y <= 1
    return 4 * inside / n


if __name__ == "__main__":
    print("one call:", simulate(1))
    future = simulate.submit(2)  # a concurrent.futures.Future
    estimates = list(simulate.map(range(3, 11)))  # in input order
    estimates.append(future.result())
    print(f"mean of {len(estimates)} estimates: {sum(estimates) / len(estimates):.4f}")
    print(f"error: {abs(sum(estimates) / len(estimates) - math.pi):.4f}")
    print("locally, for debugging:", simulate.local(1, n=1_000))
