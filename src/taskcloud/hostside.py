"""What runs on a host of the SSH provider: one nanny and its worker, for one channel.

The provider starts ``PYTHON -m taskcloud.hostside`` over SSH, with nothing on its
command line, and writes one JSON line to its standard input (:func:`read_spec`):
the scheduler's address (the end of an SSH tunnel on the host), the TLS CA,
certificate and key as PEM text, the worker's threads, memory limit, resources,
name and environment, and the address to listen on. It starts a nanny, prints one
JSON line (``{"address": ...}`` or ``{"error": ...}``) and then reads on:

* a line ``kill`` kills the worker process at once (its nanny starts another);
* the end of its input (the channel or the connection closed, the user's process
  gone) kills the worker and ends this process.

So nothing outlives the connection that started it. ``PYTHON -m taskcloud.hostside
report`` prints what the host offers instead (see :func:`report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from typing import Any

__all__ = ["main", "read_spec", "report"]

#: The keys a spec line must have.
SPEC_KEYS = (
    "scheduler",
    "listen",
    "name",
    "nthreads",
    "memory_limit",
    "resources",
    "env",
    "tls_ca",
    "tls_cert",
    "tls_key",
)


def read_spec(line: str) -> dict[str, Any]:
    """The worker's spec from its JSON line; a missing key is a ``ValueError``."""
    spec = json.loads(line)
    if not isinstance(spec, dict):
        raise ValueError(f"expected a JSON object, got {type(spec).__name__}")
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise ValueError(f"the spec lacks {', '.join(missing)}")
    return spec


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _security(spec: dict[str, Any]) -> Any:
    from distributed.security import Security

    # PEM text in place of file names: nothing secret touches the host's disk here.
    return Security(
        tls_ca_file=spec["tls_ca"],
        tls_worker_cert=spec["tls_cert"],
        tls_worker_key=spec["tls_key"],
        tls_client_cert=spec["tls_cert"],
        tls_client_key=spec["tls_key"],
        require_encryption=True,
    )


def _lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read standard input in a thread; ``None`` when it ends.

    It reads the descriptor itself, not ``sys.stdin``: a worker forked while this
    thread holds ``sys.stdin``'s lock would hang closing it.
    """
    pending = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            loop.call_soon_threadsafe(queue.put_nowait, line.decode().strip())
    loop.call_soon_threadsafe(queue.put_nowait, None)


def _kill_worker(nanny: Any) -> None:
    pid = getattr(nanny, "pid", None)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def _start(spec: dict[str, Any]) -> Any:
    import dask

    from taskcloud.providers.local import PoolNanny

    settings = {
        # Forked from this process, the worker starts with dask imported already.
        "distributed.worker.multiprocessing-method": "fork",
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.http.routes": ["distributed.http.health"],
    }
    with dask.config.set(settings):
        nanny = PoolNanny(
            spec["scheduler"],
            name=spec["name"],
            nthreads=int(spec["nthreads"]),
            memory_limit=spec["memory_limit"],
            resources=spec["resources"],
            env=dict(spec["env"]),  # the worker's process alone gets these
            security=_security(spec),
            host=spec["listen"],
            protocol="tls",
            dashboard=False,
            dashboard_address=f"{spec['listen']}:0",
            silence_logs=int(os.environ.get("TASKCLOUD_HOSTSIDE_LOGS", "50")),
            # A worker whose scheduler is gone (its tunnel closed) stops trying.
            death_timeout=float(spec.get("timeout", 60)),
        )
        await nanny
    return nanny


def _end_children() -> None:
    """SIGKILL every process this one started: its worker, and anything the worker began."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


async def _follow_input(queue: asyncio.Queue[str | None], state: dict[str, Any]) -> None:
    """Act on the input's lines until it ends."""
    while (line := await queue.get()) is not None:
        if line == "kill" and "nanny" in state:
            _kill_worker(state["nanny"])


async def serve(spec: dict[str, Any], queue: asyncio.Queue[str | None]) -> int:
    """Run the worker until the input ends, even while it starts (a worker that cannot
    reach its scheduler would try for ever); the exit status of this process."""
    state: dict[str, Any] = {}
    ended = asyncio.ensure_future(_follow_input(queue, state))
    starting = asyncio.ensure_future(asyncio.wait_for(_start(spec), float(spec.get("timeout", 60))))
    try:
        await asyncio.wait({ended, starting}, return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            starting.cancel()
            return 1
        try:
            nanny = state["nanny"] = starting.result()
        except BaseException as exc:
            _say({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        _say({"address": nanny.worker_address, "nanny": nanny.address, "pid": os.getpid()})
        await ended
        return 0
    finally:
        _end_children()


async def _main() -> int:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_lines, args=(loop, queue), daemon=True).start()
    first = await queue.get()
    if first is None:
        return 1
    try:
        spec = read_spec(first)
    except ValueError as exc:
        _say({"error": f"a bad spec line: {exc}"})
        return 1
    return await serve(spec, queue)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed there
        return ""


def _gpus() -> int:
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU"))


def report() -> dict[str, Any]:
    """What this host offers: Python, distributed and taskcloud versions, and hardware."""
    memory = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "python": platform.python_version(),
        "distributed": _version("distributed"),
        "taskcloud": _version("taskcloud"),
        "cores": len(os.sched_getaffinity(0)),
        "memory": memory,
        "gpus": _gpus(),
    }


def main() -> int:
    """Serve one worker (no arguments), or print :func:`report` (``report``)."""
    if sys.argv[1:] == ["report"]:
        _say(report())
        return 0
    # Ctrl-C or a hangup of the session ends the input; the worker goes with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return asyncio.run(_main())


if __name__ == "__main__":
    raise SystemExit(main())
