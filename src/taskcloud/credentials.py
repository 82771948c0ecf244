"""TLS credentials of one cluster: a key and a self-signed certificate in its directory.

The certificate is both the cluster's CA and the identity every party presents, so
only a process that can read the key (files mode 0600, directory 0700, owned by the
user who started the cluster) can talk to the scheduler or join as a worker.

A named cluster keeps its credentials in its own directory. A pool, or the dask
backend's cluster, gets :func:`ephemeral` ones: a fresh key in a private directory
of the system's temporary directory, named after the process that made it, removed
by :func:`discard` when the pool closes, at the latest when that process exits; those
of a process that was killed are removed by the next one that makes credentials.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from taskcloud.processes import alive

if TYPE_CHECKING:
    from distributed.security import Security

__all__ = ["create", "discard", "ephemeral", "load"]

CERT = "tls-cert.pem"
KEY = "tls-key.pem"

#: The start of the name of an ephemeral credentials directory; the owner's pid follows.
EPHEMERAL_PREFIX = "taskcloud-run-"


def ephemeral(name: str, under: Path | None = None) -> tuple[Security, Path]:
    """New credentials for ``name`` in a private directory of their own, and that
    directory; :func:`discard` removes it, and so does this process's exit.

    The directory is made in the system's temporary directory, or in ``under`` (made
    0700 when missing): a provider's ``shared_directory``, which its workers' hosts
    read, so that the workers read the key files by path.
    """
    _reap_orphans()
    pid = os.getpid()
    if _OURS.get(pid) is None:
        _OURS[pid] = set()
        atexit.register(_discard_ours, pid)
    # mkdtemp makes a directory of a new name, mode 0700, that no one else can own.
    if under is not None:
        under.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{EPHEMERAL_PREFIX}{pid}-", dir=under))
    _OURS[pid].add(directory)
    return create(directory, name), directory


def discard(directory: Path) -> None:
    """Remove the ephemeral credentials in ``directory``."""
    _OURS.get(os.getpid(), set()).discard(directory)
    shutil.rmtree(directory, ignore_errors=True)


#: The ephemeral credentials not yet discarded, by the process that made them.
_OURS: dict[int, set[Path]] = {}


def _discard_ours(pid: int) -> None:
    # A child forked from this process inherits the exit hook, not the credentials.
    if os.getpid() == pid:
        for directory in list(_OURS.get(pid, ())):
            discard(directory)


def _reap_orphans() -> None:
    """Remove this user's ephemeral credentials whose process is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{EPHEMERAL_PREFIX}*-*"):
        pid = path.name[len(EPHEMERAL_PREFIX) :].split("-", 1)[0]
        try:
            info = path.lstat()
        except OSError:
            continue
        mine = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        if mine and pid.isdigit() and not alive(int(pid)):
            discard(path)


def create(directory: Path, name: str) -> Security:
    """Write new credentials for the cluster ``name`` into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"taskcloud {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(
        directory / KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(directory / CERT, certificate.public_bytes(serialization.Encoding.PEM))
    return load(directory)


def _write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to a file that only its owner can read, from its first byte."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def load(directory: Path) -> Security:
    """The credentials in ``directory`` for every role: client, scheduler and worker."""
    from distributed.security import Security

    cert, key = str(directory / CERT), str(directory / KEY)
    return Security(
        tls_ca_file=cert,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        require_encryption=True,
    )
