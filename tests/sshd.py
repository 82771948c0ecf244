"""A real OpenSSH server for the SSH provider's tests, started by the test suite.

It is Debian's ``/usr/sbin/sshd`` with a configuration of its own in a temporary
directory: it listens on 127.0.0.1 and 127.0.0.2 (two "hosts" of one machine) at a
free port, has a generated host key, lets the current user in with a generated key
alone, and comes with a ``known_hosts`` that names both addresses. The system's
sshd service, if any, is left alone.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

#: The two loopback addresses the server listens on, one "host" each.
HOSTS = ("127.0.0.1", "127.0.0.2")

#: The names of OpenSSH's own processes: the listener and each connection's.
SSHD_NAMES = ("sshd", "sshd-session", "sshd-auth")

_CONFIG = """\
ListenAddress {host1}:{port}
ListenAddress {host2}:{port}
HostKey {directory}/host_key
AuthorizedKeysFile {directory}/authorized_keys
PidFile {directory}/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
PrintMotd no
MaxSessions 200
MaxStartups 100
LogLevel ERROR
"""


class SSHDUnavailable(Exception):
    """sshd is not installed here, or would not start; the message says which."""


def sshd_path() -> str | None:
    """Where this machine's sshd is, if it has one."""
    return shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    """A port free on both of :data:`HOSTS`."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((HOSTS[0], 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind((HOSTS[1], port))
                except OSError:
                    continue
                return int(port)
    raise SSHDUnavailable("no port was free on both 127.0.0.1 and 127.0.0.2")


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "taskcloud-tests", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


class SSHD:
    """One running sshd and what a client needs to log in to it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hosts = HOSTS
        self.user = getpass.getuser()
        self.identity = directory / "user_key"
        self.known_hosts = directory / "known_hosts"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "sshd.log"

    def start(self) -> None:
        """Start the server; it answers on every host before this returns."""
        executable = sshd_path()
        if executable is None:
            raise SSHDUnavailable("no sshd on this machine (apt-get install openssh-server)")
        if shutil.which("ssh-keygen") is None:
            raise SSHDUnavailable("no ssh-keygen on this machine")
        self.directory.chmod(0o700)
        host_key = _keygen(self.directory / "host_key").split()
        (self.directory / "authorized_keys").write_text(_keygen(self.identity) + "\n")
        self.port = _free_port()
        entry = " ".join(host_key[:2])
        self.known_hosts.write_text(
            "".join(f"[{host}]:{self.port} {entry}\n" for host in self.hosts)
        )
        config = self.directory / "sshd_config"
        config.write_text(
            _CONFIG.format(
                host1=self.hosts[0], host2=self.hosts[1], port=self.port, directory=self.directory
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
        self.process = subprocess.Popen(
            [executable, "-D", "-f", str(config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_listening(timeout=20)

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        waiting = list(self.hosts)
        while waiting and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SSHDUnavailable(f"sshd exited with {self.process.returncode}: {self._log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((waiting[0], self.port), timeout=1),
            ):
                waiting.pop(0)
                continue
            time.sleep(0.05)
        if waiting:
            self.stop()
            raise SSHDUnavailable(f"sshd did not listen on {waiting} within {timeout} s")

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text().strip()[-2000:]
        return ""

    def stop(self) -> None:
        """Stop the server and every connection it serves."""
        if self.process is None:
            return
        for process in self._tree():
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def _tree(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def profile(self, **over: Any) -> dict[str, Any]:
        """The options of a ``[tool.taskcloud.providers.NAME]`` table for this server."""
        options: dict[str, Any] = {
            "kind": "ssh",
            "hosts": list(self.hosts),
            "user": self.user,
            "port": self.port,
            "identity": str(self.identity),
            "known_hosts": str(self.known_hosts),
        }
        options.update(over)
        return options

    def options(self, **over: Any) -> dict[str, Any]:
        """The same options, without ``kind``: what ``SSHProvider(name, options)`` takes."""
        options = self.profile(**over)
        del options["kind"]
        return options

    def processes(self) -> list[psutil.Process]:
        """Every process started through this server: users' commands and theirs."""
        return [p for p in self._tree() if _name(p) not in SSHD_NAMES]

    def cmdlines(self) -> list[str]:
        """The command lines of :meth:`processes`, as ``ps`` shows them."""
        lines = []
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                lines.append(" ".join(process.cmdline()))
        return lines

    def drop(self, host: str) -> int:
        """Drop every connection of clients to ``host``, as a network fault would:
        the server's processes for them are killed. Returns how many went."""
        dropped = 0
        for process in self._tree():
            if _name(process) in SSHD_NAMES and _serves(process, host, self.port):
                with contextlib.suppress(psutil.Error):
                    for child in process.children(recursive=True):
                        if _name(child) in SSHD_NAMES:
                            child.kill()
                    process.kill()
                    dropped += 1
        return dropped


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _serves(process: psutil.Process, host: str, port: int) -> bool:
    """Whether ``process`` holds a connection accepted at ``host:port``."""
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        c.laddr and c.laddr.ip == host and c.laddr.port == port and c.raddr for c in connections
    )
