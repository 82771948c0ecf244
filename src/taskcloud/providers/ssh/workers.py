"""One worker on a host: a child of the host's agent, its spec on the agent's stdin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface

from taskcloud.providers.ssh.connections import HostAgent
from taskcloud.providers.ssh.connections import _Link
from taskcloud.providers.ssh.options import Host

logger = logging.getLogger("taskcloud")

#: How long a worker on a host may take to start.
WORKER_START_TIMEOUT = 60.0


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
        provider: Any,
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
