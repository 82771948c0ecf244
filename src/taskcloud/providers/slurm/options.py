"""The slurm provider's options, each validated, and its timing constants."""

from __future__ import annotations

import logging
import re
from typing import Any

from attrs import fields_dict
from attrs import frozen

from taskcloud.errors import InvalidOptionError
from taskcloud.units import parse_duration

logger = logging.getLogger("taskcloud")

#: How often the job monitor asks ``squeue`` about a pool's jobs.
POLL_INTERVAL = 0.5

#: How long a Slurm command may take before Slurm counts as unreachable.
COMMAND_TIMEOUT = 15.0

#: How long ``taskcloud provider check`` waits for its report from a node.
REPORT_TIMEOUT = 60.0

#: How long a worker waits for a lost scheduler before it exits, and its job ends.
DEATH_TIMEOUT = 10

#: Workers retire this long before their job's walltime, staggered by up to as much
#: again, so that they do not all leave at once.
WALLTIME_MARGIN = 60.0

#: Job states after which a job runs nothing.
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}


def _strings(parameter: str, value: Any) -> tuple[str, ...]:
    # A lone string is refused, not taken as a list of one: the TOML asks for a list.
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidOptionError(parameter, value, "a list of strings")
    return tuple(value)


def _text(parameter: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(parameter, value, "a non-empty string")
    return value


def _walltime(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _walltime_seconds(value) is None:
        raise InvalidOptionError(
            "walltime", value, "a Slurm time limit such as '30:00', '02:00:00' or '1-12:00:00'"
        )
    return value


def _walltime_seconds(value: str) -> float | None:
    """Seconds of a Slurm time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if match is None:
        return None
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:
        hours, minutes, seconds = ([*parts, 0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, ([*parts, 0])[:2]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60.0 + seconds


def _positive(parameter: str, value: Any, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(parameter, value, "a positive integer")
    return value


def _processes(value: Any) -> int:
    processes = _positive("processes", value, 1) or 1
    if processes != 1:
        # The cluster base starts, counts and replaces one worker per job.
        raise InvalidOptionError(
            "processes",
            value,
            "1: one worker per job (a pool of several workers runs several jobs)",
        )
    return processes


def _timeout(value: Any) -> float:
    seconds = parse_duration(value, "pending_timeout")
    if seconds <= 0:
        raise InvalidOptionError(
            "pending_timeout", value, "a positive duration: seconds, or '10 min', '30 s'"
        )
    return float(seconds)


def _allocation(value: Any) -> str | None:
    if value in (None, "current"):
        return value
    raise InvalidOptionError("allocation", value, "'current' (the job SLURM_JOB_ID names), or none")


@frozen(kw_only=True)
class SlurmOptions:
    """A Slurm profile's options, validated: see ``docs/slurm.md``."""

    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    python: str | None = None
    processes: int = 1
    interface: str | None = None
    scheduler_host: str | None = None
    pending_timeout: float = 600.0
    max_jobs: int | None = None
    allocation: str | None = None
    #: How long a worker waits for a lost scheduler (its owner killed) before exiting.
    death_timeout: int = DEATH_TIMEOUT

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SlurmOptions:
        """Check each option; an unknown key is an error that lists the known ones."""
        known = set(fields_dict(cls))
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidOptionError(
                "provider_options",
                {key: options[key] for key in unknown},
                f"Slurm options among {', '.join(sorted(known))}",
            )
        get = options.get
        return cls(
            queue=_text("queue", get("queue")),
            account=_text("account", get("account")),
            walltime=_walltime(get("walltime")),
            job_extra_directives=_strings("job_extra_directives", get("job_extra_directives", [])),
            job_script_prologue=_strings("job_script_prologue", get("job_script_prologue", [])),
            python=_text("python", get("python")),
            processes=_processes(get("processes")),
            interface=_text("interface", get("interface")),
            scheduler_host=_text("scheduler_host", get("scheduler_host")),
            pending_timeout=_timeout(get("pending_timeout", 600)),
            max_jobs=_positive("max_jobs", get("max_jobs"), None),
            allocation=_allocation(get("allocation")),
            death_timeout=_positive("death_timeout", get("death_timeout"), DEATH_TIMEOUT)
            or DEATH_TIMEOUT,
        )
