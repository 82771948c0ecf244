"""The SSH provider: workers on other hosts, reached over SSH (asyncssh).

The scheduler runs in this process on 127.0.0.1, with TLS and credentials of the
pool's own (as a local pool's does); nothing here listens beyond loopback. Each host
gets one SSH connection per pool, opened as the pool's scaling is set, with a reverse
tunnel from the host's 127.0.0.1 to the scheduler. On that connection runs one agent,
:mod:`taskcloud.hostside`, which imports distributed once and forks each worker's
nanny; the workers' specs (TLS credentials as PEM text among them) arrive on its
standard input, never its command line, and everything it started ends when its
input does. So a pool's close, a dropped connection and a SIGKILLed owner all leave
nothing on the hosts.

Options (a profile's keys, or ``provider_options``):

``hosts``
    a list of ``"[user@]host[:port]"``, or tables
    ``{host = ..., user = ..., port = ..., max_workers = ...}``;
``user``, ``port`` (22), ``identity`` (a private key file), ``known_hosts``
    (``~/.ssh/known_hosts``), ``connect_timeout`` (10 s), ``max_workers`` (per host);
``python``
    the interpreter on the hosts (this one's by default: the hosts share the
    filesystem).

Host keys are checked strictly against ``known_hosts``; private keys never leave
this machine (no agent forwarding).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import getpass
import ipaddress
import itertools
import json
import logging
import re
import shlex
import sys
import threading
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from typing import TypeVar

from attrs import field
from attrs import frozen
from distributed.core import Status
from distributed.deploy.spec import ProcessInterface

from taskcloud.capacity import _DEFAULT
from taskcloud.capacity import Capacity
from taskcloud.capacity import Host as Hardware
from taskcloud.capacity import Shape
from taskcloud.errors import HostUnreachableError
from taskcloud.errors import InvalidOptionError
from taskcloud.providers.protocol import HostReport
from taskcloud.providers.protocol import WorkerRequest

__all__ = [
    "Host",
    "HostInfo",
    "SSHCapacity",
    "SSHOptions",
    "SSHProvider",
    "SSHWorker",
]

logger = logging.getLogger("taskcloud")

_T = TypeVar("_T")

#: How long a worker may take to start once its channel is open.
WORKER_START_TIMEOUT = 60.0

#: What reads a host's cores, memory and GPUs, without Python.
_HARDWARE = "nproc; grep MemTotal /proc/meminfo; nvidia-smi -L 2>/dev/null || true"

_OPTIONS = (
    "hosts",
    "user",
    "port",
    "identity",
    "known_hosts",
    "python",
    "connect_timeout",
    "max_workers",
)
_HOST_KEYS = ("host", "user", "port", "max_workers")


# --------------------------------------------------------------------------- options


@frozen
class Host:
    """One host of the provider: where to connect, as whom, and how many workers."""

    address: str
    user: str
    port: int
    max_workers: int | None = None

    def __str__(self) -> str:
        return self.address


@frozen(kw_only=True)
class SSHOptions:
    """An SSH provider's options, checked."""

    hosts: tuple[Host, ...]
    identity: str | None
    known_hosts: str
    python: str
    connect_timeout: float


def _port(parameter: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidOptionError(parameter, value, "a port number from 1 to 65535")
    return value


def _count(parameter: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(parameter, value, "a whole number of workers, 1 or more")
    return value


def _text(parameter: str, value: Any, accepted: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(parameter, value, accepted)
    return value


_HOST_FORM = '"[user@]host[:port]" or a table {host=, user=, port=, max_workers=}'

#: A user name (``alice``, ``alice@corp.example``) and a host name or IPv4 address.
_USER = re.compile(r"[^\s@:/]+(@[^\s@:/]+)*")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _is_address(text: str) -> bool:
    """Whether ``text`` is a host name, an IPv4 address or an IPv6 address."""
    if _NAME.fullmatch(text):
        return True
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _host_of_text(entry: str, user: str, port: int, max_workers: int | None) -> Host:
    given, at, text = entry.rpartition("@")
    number = None
    if text.count(":") == 1:  # more colons: an IPv6 address, without a port
        text, _, number = text.partition(":")
    if (
        (at and not _USER.fullmatch(given))
        or not _is_address(text)
        or (number is not None and not number.isdigit())
    ):
        raise InvalidOptionError("hosts", entry, _HOST_FORM)
    if number is not None:
        port = _port(f"hosts[{entry!r}].port", int(number))
    return Host(text, given if at else user, port, max_workers)


def _host_of_table(table: dict[str, Any], user: str, port: int, most: int | None) -> Host:
    unknown = sorted(set(table) - set(_HOST_KEYS))
    if unknown:
        raise InvalidOptionError(
            f"hosts.{unknown[0]}", table[unknown[0]], f"one of {', '.join(_HOST_KEYS)}"
        )
    address = _text("hosts.host", table.get("host"), "a host name or address")
    if not _is_address(address):
        raise InvalidOptionError("hosts.host", address, "a host name or address")
    return Host(
        address,
        _text("hosts.user", table.get("user", user), "a user name"),
        _port("hosts.port", table.get("port", port)),
        _count("hosts.max_workers", table.get("max_workers", most)),
    )


def _hosts(value: Any, user: str, port: int, most: int | None) -> tuple[Host, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise InvalidOptionError("hosts", value, f"a non-empty list of {_HOST_FORM}")
    hosts = []
    for entry in value:
        if isinstance(entry, str):
            hosts.append(_host_of_text(entry, user, port, most))
        elif isinstance(entry, dict):
            hosts.append(_host_of_table(entry, user, port, most))
        else:
            raise InvalidOptionError("hosts", entry, _HOST_FORM)
    return tuple(hosts)


def _timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidOptionError("connect_timeout", value, "seconds, a number above 0")
    return float(value)


def parse_options(options: dict[str, Any]) -> SSHOptions:
    """Check an SSH provider's ``options``; an unknown key is an error naming the known."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise InvalidOptionError(unknown[0], options[unknown[0]], f"one of {', '.join(_OPTIONS)}")
    user = _text("user", options.get("user", getpass.getuser()), "a user name")
    port = _port("port", options.get("port", 22))
    most = _count("max_workers", options.get("max_workers"))
    identity = options.get("identity")
    if identity is not None:
        key = Path(_text("identity", identity, "a private key file")).expanduser()
        if not key.is_file():
            raise InvalidOptionError(
                "identity", identity, f"a private key file; there is no file at {key}"
            )
        identity = str(key)
    known = _text("known_hosts", options.get("known_hosts", "~/.ssh/known_hosts"), "a file")
    return SSHOptions(
        hosts=_hosts(options.get("hosts"), user, port, most),
        identity=identity,
        known_hosts=str(Path(known).expanduser()),
        python=_text("python", options.get("python", sys.executable), "an interpreter path"),
        connect_timeout=_timeout(options.get("connect_timeout", 10)),
    )


# ----------------------------------------------------------------------- connections


def _keyscan_hint(host: Host, known_hosts: str) -> str:
    port = f"-p {host.port} " if host.port != 22 else ""
    return (
        f"its host key is not in {known_hosts}; if it is the host you mean, add it with "
        f"`ssh-keyscan {port}{host.address} >> {known_hosts}`"
    )


def _reason(exc: BaseException, host: Host, options: SSHOptions) -> str:
    """Why ``host`` could not be reached, in words that say what to do."""
    import asyncssh

    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return _keyscan_hint(host, options.known_hosts)
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"permission denied for user {host.user!r}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {options.connect_timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at port {host.port}: no SSH server listens there"
    return str(exc) or type(exc).__name__


async def connect(host: Host, options: SSHOptions) -> Any:
    """An SSH connection to ``host``, its key checked against ``known_hosts``; raises
    :class:`HostUnreachableError` naming the host and why."""
    import asyncssh

    known: Any = options.known_hosts
    if not Path(known).is_file():  # trust nothing, rather than asyncssh's default file
        known = asyncssh.import_known_hosts("")
    connecting = asyncssh.connect(
        host.address,
        port=host.port,
        username=host.user,
        known_hosts=known,  # strict: a key not in the file is refused
        client_keys=[options.identity] if options.identity else (),
        agent_path=None if options.identity else (),
        agent_forwarding=False,
        connect_timeout=options.connect_timeout,
    )
    try:
        return await asyncio.wait_for(connecting, options.connect_timeout)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        reason = _reason(exc, host, options)
    raise HostUnreachableError({host.address: reason})


class HostAgent:
    """The host's agent (``PYTHON -m taskcloud.hostside agent``) on one channel of a
    link: it starts, kills and stops that link's workers, each its own child there."""

    def __init__(self, process: Any, python: str) -> None:
        self.process = process
        self.python = python
        self.errors: collections.deque[str] = collections.deque(maxlen=40)
        self.ended = False
        self._ids = itertools.count()
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[str, asyncio.Future[None]] = {}
        self._stderr = asyncio.ensure_future(self._read_errors())
        self._stdout = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, connection: Any, python: str) -> HostAgent:
        """Start the agent on a new channel of ``connection``."""
        command = f"{shlex.quote(python)} -m taskcloud.hostside agent"
        return cls(await connection.create_process(command, encoding="utf-8"), python)

    @property
    def lost(self) -> bool:
        return self.ended

    async def start(self, spec: dict[str, Any], timeout: float) -> tuple[str, dict[str, Any]]:
        """Ask for a worker of ``spec``: its id and the agent's answer (its address, or
        an error that says why not, and then the worker is stopped)."""
        ident = str(next(self._ids))
        loop = asyncio.get_running_loop()
        answer = self._answers[ident] = loop.create_future()
        self._exits[ident] = loop.create_future()
        if self.ended:
            self._finish_one(ident)
        else:
            self._send({"start": ident, "spec": spec})
        try:
            reply = await asyncio.wait_for(asyncio.shield(answer), timeout)
        except asyncio.TimeoutError:
            reply = {"error": f"no answer within {timeout:g} s"}
        except BaseException:  # cancelled: the worker must not start behind our back
            self.stop(ident)
            raise
        finally:
            self._answers.pop(ident, None)
        if "address" not in reply:
            self.stop(ident)
        return ident, reply

    def kill(self, ident: str) -> None:
        """Kill that worker's process at once; its nanny starts another."""
        self._send({"kill": ident})

    def stop(self, ident: str) -> None:
        """End that worker and its nanny at once."""
        self._send({"stop": ident})

    async def ended_of(self, ident: str) -> None:
        """Until that worker's child on the host has ended, or the agent has."""
        exit_ = self._exits.get(ident)
        if exit_ is not None:
            await asyncio.shield(exit_)

    def _send(self, request: dict[str, Any]) -> None:
        if not self.ended:
            with contextlib.suppress(Exception):
                self.process.stdin.write(json.dumps(request) + "\n")

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for line in self.process.stdout:
                self._on_line(line)
        await self._finish()

    def _on_line(self, line: str) -> None:
        try:
            message = json.loads(line)
            ident = str(message["id"])
        except (ValueError, TypeError, KeyError):
            self.errors.append(line.rstrip())
            return
        if "exit" in message:
            answer = self._answers.get(ident)
            if answer is not None and not answer.done():
                answer.set_result({"error": f"its process ended with {message['exit']}"})
            self._finish_one(ident)
        elif ident in self._answers and not self._answers[ident].done():
            self._answers[ident].set_result(message)

    async def _finish(self) -> None:
        """The agent's channel ended: every worker it had has ended with it."""
        self.ended = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._stderr), 5)
        status = self.process.exit_status
        reason = f"`{self.python} -m taskcloud.hostside agent` exited with {status}"
        for answer in self._answers.values():
            if not answer.done():
                answer.set_result({"error": reason})
        for ident in list(self._exits):
            self._finish_one(ident)

    def _finish_one(self, ident: str) -> None:
        exit_ = self._exits.pop(ident, None)
        if exit_ is not None and not exit_.done():
            exit_.set_result(None)

    async def _read_errors(self) -> None:
        # The workers' own output (what a task prints under pytask -s, say, or a
        # decorated function in a script) comes here, and reaches this terminal as
        # a local worker's would; the last lines also explain a failed start.
        with contextlib.suppress(Exception):
            async for line in self.process.stderr:
                if line:  # the stream's end reads as ""
                    self.errors.append(line.rstrip())
                    _relay(line)


def _relay(line: str) -> None:
    """Write a line a host's worker printed to this process's standard error."""
    with contextlib.suppress(Exception):
        sys.stderr.write(line if line.endswith("\n") else line + "\n")
        sys.stderr.flush()


class _Link:
    """One host's connection, its tunnel to the scheduler and its agents (one per
    Python), shared by its workers."""

    def __init__(self, connection: Any, port: int) -> None:
        self.connection = connection
        self.port = port
        self.users = 0
        self.agents: dict[str, HostAgent] = {}
        # asyncssh before 2.17 has no is_closed(); wait_closed() is in every release.
        self._closed = False
        self._watch = asyncio.ensure_future(self._until_closed())

    async def _until_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.wait_closed()
        self._closed = True

    @property
    def lost(self) -> bool:
        return self._closed

    async def agent(self, python: str) -> HostAgent:
        """The agent that runs ``python`` on this host, started if it has none."""
        agent = self.agents.get(python)
        if agent is None or agent.lost:
            agent = self.agents[python] = await HostAgent.open(self.connection, python)
        return agent


class Links:
    """A pool's connections, one per host, opened for its first worker and closed
    after its last."""

    def __init__(self, options: SSHOptions, scheduler_port: int) -> None:
        self.options = options
        self.scheduler_port = scheduler_port
        self._links: dict[Host, _Link] = {}
        self._locks: dict[Host, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.closed = False

    async def _open(self, host: Host) -> _Link:
        """The link to ``host``, opened if it has none (or lost the one it had); the
        caller holds its lock."""
        link = self._links.get(host)
        if link is None or link.lost:
            connection = await connect(host, self.options)
            if self.closed:  # the pool closed while this connection opened
                connection.close()
                raise RuntimeError(f"the pool closed while its connection to {host} opened")
            listener = await connection.forward_remote_port(
                "127.0.0.1", 0, "127.0.0.1", self.scheduler_port
            )
            link = self._links[host] = _Link(connection, listener.get_port())
        return link

    async def acquire(self, host: Host, python: str) -> tuple[_Link, HostAgent]:
        """The link to ``host`` and its agent for ``python``, for one more worker."""
        async with self._locks[host]:
            link = await self._open(host)
            link.users += 1
            try:
                return link, await link.agent(python)
            except BaseException:
                link.users -= 1
                raise

    async def warm(self, host: Host, python: str) -> None:
        """Open the link to ``host`` and start its agent for ``python`` ahead of its
        first worker, so that the agent's import of distributed overlaps the pool's
        start; a failure is left for the worker's start to report."""
        try:
            async with self._locks[host]:
                await (await self._open(host)).agent(python)
        except Exception as exc:
            logger.debug("the connection to %s did not open ahead of its workers: %s", host, exc)

    async def warm_all(self, hosts: list[Host], python: str) -> None:
        """:meth:`warm` each of ``hosts`` at once."""
        await asyncio.gather(*(self.warm(host, python) for host in hosts))

    async def release(self, host: Host, link: _Link) -> None:
        """One worker fewer on ``host``; the last one closes its connection, and its
        agents end with it. The pool's last worker closes every connection, those
        opened ahead of workers that never came too."""
        async with self._locks[host]:
            link.users -= 1
            if link.users <= 0 and self._links.get(host) is link:
                del self._links[host]
                link.connection.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.connection.wait_closed(), 5)
        if not any(other.users for other in self._links.values()):
            self.close_all()

    def close_all(self) -> None:
        """Close every connection at once (their workers end with them), and open no
        more."""
        self.closed = True
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.connection.close()


# --------------------------------------------------------------------------- workers


def _pem(path: str) -> str:
    return Path(path).read_text()


class SSHWorker(ProcessInterface):
    """A nanny and its worker on a host: a child of the host's agent."""

    def __init__(
        self,
        scheduler: str,
        name: Any = None,
        *,
        host: Host,
        provider: SSHProvider,
        python: str,
        nthreads: int,
        memory_limit: int,
        resources: dict[str, Any],
        env: dict[str, str] | None = None,
        security: Any = None,
        options: dict[str, Any] | None = None,
        **ignored: Any,
    ) -> None:
        super().__init__(scheduler, name)
        self.name = name
        self.host = host
        self.links, new = provider.links(int(scheduler.rsplit(":", 1)[1]))
        self.python = python
        if new:
            # A pool that asks for one worker soon asks for more: connect to the other
            # hosts and start their agents meanwhile.
            others = [info.host for info in provider.capacity().reachable if info.host != host]
            self._warming = asyncio.ensure_future(self.links.warm_all(others, python))
        self.settings = {
            "name": name,
            "nthreads": nthreads,
            "memory_limit": memory_limit,
            "resources": resources,
            "env": dict(env or {}),
            "options": dict(options or {}),
        }
        self.security = security
        self.agent: HostAgent | None = None
        self.ident: str | None = None
        self._link: _Link | None = None
        self._closing = False
        #: What follows the worker's end on the host.
        self._tasks: set[asyncio.Future[None]] = set()

    def _spec(self, port: int) -> dict[str, Any]:
        assert self.security is not None
        return {
            **self.settings,
            "scheduler": f"tls://127.0.0.1:{port}",
            "listen": self.host.address,
            "tls_ca": _pem(self.security.tls_ca_file),
            "tls_cert": _pem(self.security.tls_worker_cert),
            "tls_key": _pem(self.security.tls_worker_key),
            "timeout": WORKER_START_TIMEOUT,
        }

    async def start(self) -> None:
        try:
            self._link, self.agent = await self.links.acquire(self.host, self.python)
            self.ident, reply = await self.agent.start(
                self._spec(self._link.port), WORKER_START_TIMEOUT
            )
            answer = self._address(reply)
        except BaseException:
            self.status = Status.failed
            await self._let_go()
            raise
        self.address = answer
        self._tasks.add(asyncio.ensure_future(self._follow()))
        await super().start()

    def _address(self, reply: dict[str, Any]) -> str:
        """The worker's address, from the agent's answer; else why it did not start."""
        if "address" not in reply:
            lines = "\n".join(self.agent.errors) if self.agent is not None else ""
            raise RuntimeError(
                f"the worker on {self.host} did not start: {reply.get('error')}\n{lines}".strip()
            )
        return str(reply["address"])

    async def _follow(self) -> None:
        """When the worker ends without a close (the connection dropped, its process on
        the host died), it is finished: the cluster forgets it, and scaling replaces it."""
        assert self.agent is not None
        assert self.ident is not None
        with contextlib.suppress(Exception):
            await self.agent.ended_of(self.ident)
        if not self._closing:
            logger.debug(
                "the worker %s on %s ended: %s", self.name, self.host, list(self.agent.errors)[-3:]
            )
            await self._let_go()
            await ProcessInterface.close(self)

    async def _let_go(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await self.links.release(self.host, link)

    def _stop(self) -> None:
        if self.agent is not None and self.ident is not None:
            self.agent.stop(self.ident)

    def kill_worker(self, for_good: bool = False) -> None:
        """Kill the worker process at once; its nanny starts another, unless
        ``for_good``: then the nanny ends too."""
        if for_good:
            self._closing = True
            self._stop()
        elif self.agent is not None and self.ident is not None:
            self.agent.kill(self.ident)

    async def close(self) -> None:
        self._closing = True
        self._stop()
        if self.agent is not None and self.ident is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.agent.ended_of(self.ident), 10)
        await self._let_go()
        await super().close()


# -------------------------------------------------------------------------- capacity


def _gpu_ids(gpus: int | Iterable[str]) -> tuple[str, ...]:
    return tuple(str(i) for i in range(gpus)) if isinstance(gpus, int) else tuple(gpus)


@frozen
class HostInfo:
    """What one host has, read once; ``reason`` says why a host could not be read."""

    host: Host
    cores: int = 0
    memory: int = 0
    #: The host's GPU ids (a count stands for ids ``"0"``, ``"1"``, ...).
    gpus: tuple[str, ...] = field(default=(), converter=_gpu_ids)
    reason: str = ""

    @property
    def hardware(self) -> Hardware:
        """The host as a capacity counts it, by its address."""
        return Hardware(str(self.host), self.cores, self.memory, self.gpus)


def parse_hardware(text: str) -> tuple[int, int, tuple[str, ...]]:
    """Cores, bytes of memory and GPU ids (``nvidia-smi -L``'s indices) from the
    output of :data:`_HARDWARE`."""
    lines = text.splitlines()
    cores = int(lines[0].strip())
    memory = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemTotal:"))
    gpus = tuple(m.group(1) for line in lines if (m := re.match(r"GPU (\d+):", line)))
    return cores, memory, gpus


class SSHCapacity(Capacity):
    """The reachable hosts' capacity, shared with every taskcloud process through the
    hosts' ledger; beside it, the hosts that could not be read and why."""

    def __init__(self, provider: str, hosts: list[HostInfo], ledger: Any = _DEFAULT) -> None:
        self.infos = list(hosts)
        reachable = self.reachable
        if not reachable:
            raise HostUnreachableError(self.unreachable, provider)
        super().__init__(
            provider,
            [info.hardware for info in reachable],
            ledger=ledger,
            max_workers={str(info.host): info.host.max_workers for info in reachable},
        )

    @property
    def reachable(self) -> list[HostInfo]:
        return [info for info in self.infos if not info.reason]

    @property
    def unreachable(self) -> dict[str, str]:
        return {str(info.host): info.reason for info in self.infos if info.reason}

    def room(self, host: HostInfo | str, shape: Shape) -> int:
        """How many more workers of ``shape`` fit on ``host`` beside every holder's."""
        return super().room(str(host.host) if isinstance(host, HostInfo) else host, shape)


# -------------------------------------------------------------------------- provider


def _in_thread(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine on an event loop of its own, whatever loop the caller runs."""

    async def run() -> _T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, run()).result()


#: The worker classes the hosts' agents start.
_NANNIES = ("", "distributed.Nanny", "taskcloud.providers.nanny.PoolNanny")


class SSHProvider:
    """Workers on hosts reached over SSH (see the module's docstring)."""

    form = "workers"
    kind = "ssh"

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = parse_options(dict(options))
        self._capacity: SSHCapacity | None = None
        self._links: dict[int, Links] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SSHProvider({self.name!r}, hosts={[str(h) for h in self.options.hosts]})"

    async def _hardware(self, host: Host) -> HostInfo:
        try:
            connection = await connect(host, self.options)
        except HostUnreachableError as exc:
            return HostInfo(host, reason=exc.reasons[host.address])
        async with connection:
            result = await connection.run(_HARDWARE, check=False)
        try:
            cores, memory, gpus = parse_hardware(str(result.stdout))
        except (ValueError, IndexError, StopIteration):
            return HostInfo(host, reason=f"could not read its hardware: {result.stderr!s:.200}")
        return HostInfo(host, cores, memory, gpus)

    def capacity(self) -> SSHCapacity:
        """The hosts' capacity, read once; unreachable hosts are left out, with a warning."""
        with self._lock:
            if self._capacity is None:
                self._capacity = self._read_capacity()
            return self._capacity

    def _read_capacity(self) -> SSHCapacity:
        async def read() -> list[HostInfo]:
            return list(await asyncio.gather(*(self._hardware(h) for h in self.options.hosts)))

        capacity = SSHCapacity(self.name, _in_thread(read))
        for host, reason in capacity.unreachable.items():
            logger.warning("%s: host %s is left out: %s", self.name, host, reason)
        return capacity

    def links(self, scheduler_port: int) -> tuple[Links, bool]:
        """The connections of the cluster whose scheduler listens on ``scheduler_port``
        here (one per host, each with its tunnel to that port), and whether they are
        new."""
        with self._lock:
            links = self._links.get(scheduler_port)
            if links is None or links.closed:
                links = self._links[scheduler_port] = Links(self.options, scheduler_port)
                return links, True
            return links, False

    def worker(self, request: WorkerRequest) -> dict[str, Any]:
        """A nanny and its worker on ``request.host``, a child of the host's agent."""
        if request.worker_class not in _NANNIES:
            raise InvalidOptionError(
                "worker_class",
                request.worker_class,
                "'distributed.Nanny' on the ssh provider: its hosts' agents start nannies",
            )
        hosts = {str(info.host): info.host for info in self.capacity().reachable}
        shape = request.shape
        options = {
            "host": hosts[request.host],
            "provider": self,
            "python": request.python or self.options.python,
            "nthreads": request.threads,
            "memory_limit": shape.memory,
            "resources": {"cpu": shape.cpu, "memory": shape.memory, "gpu": shape.gpu},
            "env": dict(request.environ),
            "security": request.security,
            "options": dict(request.worker_options),
        }
        return {"cls": SSHWorker, "options": options}

    async def _report(self, host: Host) -> HostReport:
        from importlib.metadata import version

        try:
            connection = await connect(host, self.options)
        except HostUnreachableError as exc:
            return HostReport(host=str(host), reachable=False, reason=exc.reasons[host.address])
        async with connection:
            command = f"{shlex.quote(self.options.python)} -m taskcloud.hostside report"
            result = await connection.run(command, check=False)
        try:
            found = json.loads(str(result.stdout).strip().splitlines()[-1])
        except (ValueError, IndexError):
            reason = f"{self.options.python} -m taskcloud.hostside failed: {result.stderr!s:.300}"
            return HostReport(host=str(host), reachable=True, reason=reason.strip())
        ours = (version("distributed"), version("taskcloud"))
        match = (found["distributed"], found["taskcloud"]) == ours
        return HostReport(host=str(host), reachable=True, versions_match=match, **found)

    def check(self) -> list[HostReport]:
        """Connect to every host and report what it offers."""

        async def reports() -> list[HostReport]:
            return list(await asyncio.gather(*(self._report(h) for h in self.options.hosts)))

        return _in_thread(reports)

    def close(self) -> None:
        """Close every connection this provider opened; their workers end with them."""
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for each in links:
            each.close_all()
