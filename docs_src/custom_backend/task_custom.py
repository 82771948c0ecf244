"""Register a custom executor, as a pytask-parallel project would, and use it.

Run with ``pytask --parallel-backend custom -n 2``.
"""

from concurrent.futures import Executor
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated

from pytask import Product

from taskcloud import ParallelBackend
from taskcloud import WorkerType
from taskcloud import registry


def build_executor(n_workers: int) -> Executor:
    return ProcessPoolExecutor(max_workers=n_workers)


registry.register_parallel_backend(
    ParallelBackend.CUSTOM, build_executor, worker_type=WorkerType.PROCESSES, remote=False
)


def task_hello(
    path: Annotated[Path, Product] = Path(__file__).parent / "bld" / "hello.txt",
) -> None:
    path.write_text("Hello from a custom executor.")
