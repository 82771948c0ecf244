"""Connections to the hosts: strict host keys, one connection per host and pool with
its tunnel to the scheduler, and the host's agent on it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from taskcloud.errors import HostUnreachableError
from taskcloud.providers.ssh.options import Host
from taskcloud.providers.ssh.options import SSHOptions

logger = logging.getLogger("taskcloud")


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
