"""What runs on a host of the SSH provider: one agent per connection, and its workers.

The provider starts ``PYTHON -m taskcloud.hostside agent`` on a channel of its
connection to the host, with nothing else on its command line. The agent imports
distributed once, then reads requests on its standard input, one JSON object a line
(:func:`read_request`):

* ``{"start": ID, "spec": {...}}`` forks a child that runs one nanny (which forks
  its worker) from the spec: the scheduler's address (the end of an SSH tunnel on
  the host), the TLS CA, certificate and key as PEM text, the worker's threads,
  memory limit, resources, name and environment (the worker's process alone gets
  it), and the address to listen on. The agent answers ``{"id": ID, "address":
  ...}`` or ``{"id": ID, "error": ...}``;
* ``{"kill": ID}`` kills that worker's process at once (its nanny starts another);
* ``{"stop": ID}`` ends that child and its worker;

and says ``{"id": ID, "exit": STATUS}`` when a child has ended. When its input ends
(the channel or the connection closed, the user's process gone) the agent SIGKILLs
every process it started and exits. Each child watches a pipe that only the agent
writes: when the agent is gone, even SIGKILLed, the pipe ends and the child kills
its worker and exits. So nothing outlives the connection that started it.

``PYTHON -m taskcloud.hostside report`` prints what the host offers instead (see
:func:`report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
from typing import Any

from taskcloud.processes import kill

__all__ = ["Agent", "main", "read_request", "read_spec", "report"]

#: The keys a spec must have.
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

#: What the agent imports once, before it forks any worker's child.
PRELOAD = ("distributed", "distributed.nanny", "distributed.worker", "taskcloud.worker")

#: The requests the agent answers, by their one key besides ``spec``.
REQUESTS = ("start", "kill", "stop")

#: How often the agent looks for ended children where it cannot wait on them.
_REAP_INTERVAL = 0.5


def read_spec(spec: Any) -> dict[str, Any]:
    """A worker's spec, checked; a missing key is a ``ValueError``."""
    if not isinstance(spec, dict):
        raise ValueError(f"expected a JSON object, got {type(spec).__name__}")
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise ValueError(f"the spec lacks {', '.join(missing)}")
    return spec


def read_request(line: str) -> tuple[str, str, dict[str, Any] | None]:
    """A request line's kind (one of :data:`REQUESTS`), worker id and spec (for
    ``start``); a line of another form is a ``ValueError`` that says which."""
    request = json.loads(line)
    kinds = [kind for kind in REQUESTS if isinstance(request, dict) and kind in request]
    if len(kinds) != 1:
        raise ValueError(f"expected one of {', '.join(REQUESTS)} with a worker id, got {line:.80}")
    kind = kinds[0]
    spec = read_spec(request.get("spec")) if kind == "start" else None
    return kind, str(request[kind]), spec


def _ident_of(line: str) -> str | None:
    """The worker id a request line names, if any: so that a bad one is answered."""
    with contextlib.suppress(ValueError, AttributeError):
        request = json.loads(line)
        for kind in REQUESTS:
            if kind in request:
                return str(request[kind])
    return None


def _write_line(fd: int, message: dict[str, Any]) -> None:
    # An end that is gone (the channel closed) is met by the input's end soon after.
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ a worker's child


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


def _kill_worker(nanny: Any) -> None:
    kill(getattr(nanny, "pid", None))


async def _start(spec: dict[str, Any]) -> Any:
    import dask

    from taskcloud.providers.nanny import PoolNanny

    config = {
        # Forked from this process, the worker starts with dask imported already.
        "distributed.worker.multiprocessing-method": "fork",
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.http.routes": ["distributed.http.health"],
    }
    with dask.config.set(config):
        settings: dict[str, Any] = {
            "name": spec["name"],
            "nthreads": int(spec["nthreads"]),
            "memory_limit": spec["memory_limit"],
            "resources": spec["resources"],
            "dashboard": False,
            "dashboard_address": f"{spec['listen']}:0",
            "silence_logs": int(os.environ.get("TASKCLOUD_HOSTSIDE_LOGS", "50")),
            # A worker whose scheduler is gone (its tunnel closed) stops trying.
            "death_timeout": float(spec.get("timeout", 60)),
            # A named cluster's worker_options.
            **spec.get("options", {}),
            "env": dict(spec["env"]),  # the worker's process alone gets these
            "security": _security(spec),
            "host": spec["listen"],
            "protocol": "tls",
        }
        nanny = PoolNanny(spec["scheduler"], **settings)
        await nanny
    return nanny


def _end_children() -> None:
    """SIGKILL every process this one started, and everything they began."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        kill(child.pid)


def _control_lines(fd: int) -> asyncio.Queue[str | None]:
    """The lines the agent writes to ``fd``, on this loop; ``None`` when it ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    pending = [b""]

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            loop.remove_reader(fd)
            queue.put_nowait(None)
            return
        *lines, pending[0] = (pending[0] + chunk).split(b"\n")
        for line in lines:
            queue.put_nowait(line.decode().strip())

    loop.add_reader(fd, readable)
    return queue


async def _follow_control(queue: asyncio.Queue[str | None], state: dict[str, Any]) -> None:
    """Act on the agent's lines until they end."""
    while (line := await queue.get()) is not None:
        if line == "kill" and "nanny" in state:
            _kill_worker(state["nanny"])


async def serve(spec: dict[str, Any], control: int, answer: int) -> int:
    """Run one worker until ``control`` ends, even while it starts (a worker that
    cannot reach its scheduler would try for ever); the child's exit status.

    Its address, or why it did not start, is one line on ``answer``."""
    state: dict[str, Any] = {}
    ended = asyncio.ensure_future(_follow_control(_control_lines(control), state))
    starting = asyncio.ensure_future(asyncio.wait_for(_start(spec), float(spec.get("timeout", 60))))
    try:
        await asyncio.wait({ended, starting}, return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            starting.cancel()
            return 1
        try:
            nanny = state["nanny"] = starting.result()
        except BaseException as exc:
            _write_line(answer, {"error": f"{type(exc).__name__}: {exc}"})
            return 1
        reply = {"address": nanny.worker_address, "nanny": nanny.address, "pid": os.getpid()}
        _write_line(answer, reply)
        await ended
        return 0
    finally:
        _end_children()


# ------------------------------------------------------------------------ the agent


class _Child:
    """One worker's child, as the agent sees it: its pid and the ends of its pipes."""

    def __init__(self, ident: str, pid: int, control: int, answer: int) -> None:
        self.ident = ident
        self.pid = pid
        self.control: int | None = control
        self.answer: int | None = answer
        self.pidfd: int | None = None
        self.pending = b""

    def fds(self) -> list[int]:
        return [fd for fd in (self.control, self.answer, self.pidfd) if fd is not None]


class Agent:
    """A host's agent: one child per worker, forked with distributed imported; its
    input's end ends them all (see the module's docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.selector = selectors.DefaultSelector()
        self.children: dict[str, _Child] = {}
        self._input = b""
        self._running = True

    def run(self) -> int:
        """Serve requests until the input ends; every child is SIGKILLed then."""
        self.selector.register(0, selectors.EVENT_READ, self._on_input)
        waits = hasattr(os, "pidfd_open")
        try:
            while self._running:
                for key, _ in self.selector.select(None if waits else _REAP_INTERVAL):
                    key.data()
                self._reap()
        finally:
            _end_children()
        return 0

    def _on_input(self) -> None:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._running = False
            return
        *lines, self._input = (self._input + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(line.decode())

    def _handle(self, line: str) -> None:
        try:
            kind, ident, spec = read_request(line)
        except ValueError as exc:
            _say({"id": _ident_of(line), "error": f"a bad request line: {exc}"})
            return
        child = self.children.get(ident)
        if kind == "start" and spec is not None:
            if child is not None:
                _say({"id": ident, "error": f"worker {ident!r} is running already"})
            else:
                self._fork(ident, spec)
        elif kind == "kill" and child is not None and child.control is not None:
            self._send(child, "kill")
        elif kind == "stop" and child is not None:
            self._close_control(child)

    def _send(self, child: _Child, line: str) -> None:
        with contextlib.suppress(OSError):
            assert child.control is not None
            os.write(child.control, (line + "\n").encode())

    def _close_control(self, child: _Child) -> None:
        """The child's lifeline ends: it kills its worker and exits."""
        if child.control is not None:
            os.close(child.control)
            child.control = None

    def _fork(self, ident: str, spec: dict[str, Any]) -> None:
        control_read, control_write = os.pipe()
        answer_read, answer_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(control_write)  # else its own lifeline would never end
            os.close(answer_read)
            os._exit(self._child(spec, control_read, answer_write))
        os.close(control_read)
        os.close(answer_write)
        os.set_blocking(answer_read, False)
        child = self.children[ident] = _Child(ident, pid, control_write, answer_read)
        self.selector.register(answer_read, selectors.EVENT_READ, lambda: self._on_answer(child))
        with contextlib.suppress(OSError, AttributeError):
            child.pidfd = os.pidfd_open(pid)
            self.selector.register(child.pidfd, selectors.EVENT_READ, self._reap)

    def _child(self, spec: dict[str, Any], control: int, answer: int) -> int:
        """In the forked child: serve one worker until its lifeline ends."""
        try:
            if os.getppid() != self.pid:  # the agent died as this child began
                return 1
            self.selector.close()
            for other in self.children.values():
                for fd in other.fds():
                    os.close(fd)
            # Only the agent speaks on the channel, and only it reads the channel.
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.dup2(2, 1)
            return asyncio.run(serve(spec, control, answer))
        except BaseException as exc:
            _write_line(answer, {"error": f"{type(exc).__name__}: {exc}"})
            return 1

    def _on_answer(self, child: _Child) -> None:
        if child.answer is None:  # forgotten earlier in this round
            return
        try:
            chunk = os.read(child.answer, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the child and its worker are gone
            self._unregister(child.answer)
            os.close(child.answer)
            child.answer = None
            return
        *lines, child.pending = (child.pending + chunk).split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    _say({**message, "id": child.ident})

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    def _reap(self) -> None:
        """Say which children have ended, and forget them."""
        for child in list(self.children.values()):
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, 0
            if pid:
                if child.answer is not None:
                    self._on_answer(child)  # its last words first
                self._forget(child)
                _say({"id": child.ident, "exit": os.waitstatus_to_exitcode(status)})

    def _forget(self, child: _Child) -> None:
        del self.children[child.ident]
        for fd in child.fds():
            self._unregister(fd)
            os.close(fd)
        child.control = child.answer = child.pidfd = None


def agent() -> int:
    """Import what workers need, then serve as the host's agent until the input ends."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    return Agent().run()


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
    """Serve as the host's agent (``agent``), or print :func:`report` (``report``)."""
    if sys.argv[1:] == ["report"]:
        _say(report())
        return 0
    if sys.argv[1:] != ["agent"]:
        sys.stderr.write("usage: python -m taskcloud.hostside agent|report\n")
        return 2
    # Ctrl-C or a hangup of the session ends the input; the workers go with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return agent()


if __name__ == "__main__":
    raise SystemExit(main())
