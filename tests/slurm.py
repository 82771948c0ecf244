"""A real single-node Slurm for the tests: munged, slurmctld and slurmd, started by hand.

Debian's ``slurm-wlm`` and ``munge`` packages provide the daemons; there is no init
system, so :class:`Slurm` writes a ``slurm.conf`` into a directory of its own, starts
each daemon with it, and stops them all again. Commands (``sbatch``, ``squeue``) and
the jobs they start find the configuration through ``SLURM_CONF``.

The node has this host's cores and about 95 % of its memory. Two partitions:
``debug`` (the default, up) and ``down`` (down: its jobs pend with ``PartitionDown``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: The daemons and commands the fixture needs.
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "srun")

NODE = "tcnode"
PARTITION = "debug"
DOWN_PARTITION = "down"

CONF = """\
ClusterName=taskcloud-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
EnforcePartLimits=NO
ReturnToService=2
MinJobAge=300
KillWait=2
SlurmdTimeout=30
InactiveLimit=0
DefMemPerCPU={mem_per_cpu}
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={down} Nodes={node} Default=NO MaxTime=INFINITE State=DOWN
"""


class SlurmUnavailable(Exception):
    """Slurm cannot be installed or started here; the reason is the message."""


def missing_binaries() -> list[str]:
    """The Slurm and munge programs this host lacks."""
    return [name for name in BINARIES if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("/proc/meminfo has no MemTotal")


class Slurm:
    """One running single-node Slurm; :meth:`stop` leaves no daemon behind."""

    def __init__(self) -> None:
        # munged runs as user munge and must reach its socket: a world-readable tree.
        self.dir = Path(tempfile.mkdtemp(prefix="taskcloud-slurm-"))
        self.dir.chmod(0o755)
        self.cpus = len(os.sched_getaffinity(0))
        self.memory = int(_memory_mib() * 0.95)  # MiB, as Slurm counts
        self.conf = self.dir / "slurm.conf"
        self.socket = self.dir / "munge" / "munge.socket"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- starting ----------------------------------------------------------------------

    def start(self) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("the Slurm fixture starts its daemons as root")
        missing = missing_binaries()
        if missing:
            raise SlurmUnavailable(
                f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
            )
        self._start_munge()
        self._write_conf()
        self._daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
        self.wait(self._controller_up, 60, "slurmctld answers")
        self._daemon("slurmd", "-D", "-N", NODE, "-f", str(self.conf))
        self.wait(self._node_idle, 60, f"node {NODE} is idle")

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        home = self.socket.parent
        home.mkdir(mode=0o755)
        key = home / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (home, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self._daemon(
            "runuser",
            "-u",
            "munge",
            "--",
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={self.socket}",
            f"--pid-file={home}/munged.pid",
            f"--log-file={home}/munged.log",
            f"--seed-file={home}/munged.seed",
        )
        self.wait(self.socket.exists, 10, "munged's socket appears")

    def _write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir()
        self.conf.write_text(
            CONF.format(
                host=socket.gethostname(),
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                socket=self.socket,
                dir=self.dir,
                node=NODE,
                cpus=self.cpus,
                memory=self.memory,
                mem_per_cpu=max(100, self.memory // (8 * self.cpus)),
                partition=PARTITION,
                down=DOWN_PARTITION,
            )
        )

    def _daemon(self, *command: str) -> None:
        log = (self.dir / f"{Path(command[0]).name}-{len(self.processes)}.out").open("wb")
        process = subprocess.Popen(
            command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes.append(process)

    def _controller_up(self) -> bool:
        return self.run("scontrol", "ping", check=False).returncode == 0

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-n", NODE, "-p", PARTITION, "-o", "%t", check=False)
        return out.stdout.strip() == "idle"

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{dead[0]} exited: {self.logs()}")
            time.sleep(0.1)
        raise SlurmUnavailable(f"{what}: not within {timeout} s. {self.logs()}")

    def logs(self) -> str:
        tails = []
        for path in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-8:]))
        return "\n".join(tails)

    # -- using -------------------------------------------------------------------------

    def run(self, *command: str, check: bool = True, timeout: float = 30):
        """Run a Slurm command against this Slurm."""
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def jobs(self) -> list[str]:
        """Every job id in the queue (any state ``squeue`` lists)."""
        out = self.run("squeue", "-h", "-o", "%i")
        return out.stdout.split()

    def state(self, job: str) -> str:
        """``STATE REASON`` of a queued job, as squeue says it."""
        return self.run("squeue", "-h", "-j", job, "-o", "%T %r", check=False).stdout.strip()

    def cancel_all(self) -> None:
        self.run("scancel", "--full", "-u", pwd.getpwuid(os.getuid()).pw_name, check=False)

    def stop_controller(self) -> subprocess.Popen[bytes]:
        """Stop slurmctld (for a test of an unreachable Slurm); :meth:`restart_controller`."""
        ctld = next(p for p in self.processes if p.args[0] == "slurmctld")
        ctld.terminate()
        ctld.wait(10)
        self.processes.remove(ctld)
        return ctld

    def restart_controller(self) -> None:
        self._daemon("slurmctld", "-D", "-f", str(self.conf))
        self.wait(self._controller_up, 30, "slurmctld answers again")
        self.wait(self._node_idle, 60, f"node {NODE} is idle again")

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, stop every daemon and remove the directory."""
        with contextlib.suppress(Exception):
            self.cancel_all()
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
