"""The SSH provider's options: hosts, user, port, identity, known hosts, python and
timeouts, each validated."""

from __future__ import annotations

import getpass
import ipaddress
import logging
import re
import sys
from pathlib import Path
from typing import Any

from attrs import frozen

from taskcloud.errors import InvalidOptionError

logger = logging.getLogger("taskcloud")

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
