"""The ``taskcloud`` command: manage saved state from a shell.

Tables by default, ``--json`` for scripts. Bad arguments are usage errors; taskcloud's
own errors are one line, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from taskcloud.configurations import create_cluster_configuration
from taskcloud.configurations import delete_cluster_configuration
from taskcloud.configurations import list_cluster_configurations
from taskcloud.errors import TaskcloudError
from taskcloud.units import format_bytes

__all__ = ["main"]


def _errors_as_messages(command: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _plain_warnings(warnings.showwarning)
            try:
                return command(*args, **kwargs)
            except TaskcloudError as exc:
                raise click.ClickException(str(exc)) from None

    return run


def _plain_warnings(shown: Callable[..., Any]) -> Callable[..., Any]:
    """A ``showwarning`` that says taskcloud's warnings (user warnings) as one plain
    line on stderr, without the file and line that raised them, and hands the others,
    such as Python's own, to ``shown``."""

    def say(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UserWarning):
            click.echo(f"Warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    return say


@click.group()
@click.version_option(package_name="taskcloud")
def main() -> None:
    """Manage taskcloud's clusters, cluster configurations, software environments and
    providers."""


@main.group()
def config() -> None:
    """Saved cluster configurations: named worker shapes."""


@config.command("create")
@click.argument("name")
@click.option("--worker-cpu", type=int, help="Cores per worker.")
@click.option("--worker-memory", help="Memory per worker, e.g. '8 GiB'.")
@click.option("--worker-gpu", type=int, help="GPUs per worker.")
@click.option("--software", help="Name of a software environment.")
@click.option("--n-workers", help="N for a fixed size, MIN,MAX for an adaptive range.")
@click.option("--keepalive", help="How long idle workers stay, e.g. '30 s'.")
@click.option("--threads-per-worker", type=int, help="Threads inside one worker.")
@click.option(
    "--dashboard/--no-dashboard",
    default=None,
    help="Whether pools get a dask dashboard (any local user can read it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the saved configuration as JSON.")
@_errors_as_messages
def config_create(name: str, n_workers: str | None, as_json: bool, **options: Any) -> None:
    """Save the configuration NAME (replacing one of that name)."""
    saved = create_cluster_configuration(name, n_workers=n_workers, **options)
    if as_json:
        click.echo(json.dumps({name: saved}, indent=2))
    else:
        click.echo(f"Saved cluster configuration {name!r}.")


@config.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_errors_as_messages
def config_list(as_json: bool) -> None:
    """List the saved configurations."""
    saved = list_cluster_configurations()
    if as_json:
        click.echo(json.dumps(saved, indent=2))
        return
    rows = []
    for name, options in saved.items():
        memory = options.get("worker_memory")
        rows.append(
            [
                name,
                str(options.get("worker_cpu", "")),
                format_bytes(memory) if memory else "",
                str(options.get("worker_gpu", "")),
                str(options.get("n_workers", "")),
                f"{options['keepalive']:g} s" if "keepalive" in options else "",
                options.get("software") or "",
            ]
        )
    columns = ("name", "cpu", "memory", "gpu", "n_workers", "keepalive", "software")
    _print_table("Cluster configurations", columns, rows)


def _print_table(
    title: str,
    columns: tuple[str, ...],
    rows: list[list[str]],
    *,
    compact: bool = False,
    whole: tuple[str, ...] = ("name",),
) -> None:
    """A table that wraps, rather than cuts, what does not fit the terminal: the
    ``whole`` columns (names and addresses, to be read and copied) keep their width;
    the others give way, each down to its longest word before any word is folded."""

    def table() -> Table:
        return Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE if compact else box.HEAVY_HEAD,
            collapse_padding=compact,
            pad_edge=not compact,
        )

    console = Console(file=sys.stdout)
    probe = table()
    for _ in columns:
        probe.add_column(width=1)
    room = console.measure(probe).maximum - len(columns)  # borders and padding
    widths = _fit(columns, rows, whole, console.width - room)
    shown = table()
    for column, width in zip(columns, widths, strict=True):
        shown.add_column(column, width=width, overflow="fold", no_wrap=column in whole)
    for row in rows:
        shown.add_row(*row)
    console.print(shown)


def _fit(
    columns: tuple[str, ...], rows: list[list[str]], whole: tuple[str, ...], room: int
) -> list[int]:
    """Column widths within ``room``. The widest column that may wrap gives way first:
    down to its longest word, then to its values' longest word with its header on at
    most two lines, then below."""
    cells = [[column, *(row[i] for row in rows)] for i, column in enumerate(columns)]
    widths = [
        max(cell_len(line) for text in texts for line in text.splitlines() or [""])
        for texts in cells
    ]
    values = [
        max((cell_len(w) for text in texts[1:] for w in text.split()), default=1) for texts in cells
    ]
    pairs = list(zip(columns, values, strict=True))
    words = [max(cell_len(column), value) for column, value in pairs]
    folded = [max(-(-cell_len(column) // 2), value) for column, value in pairs]
    for floors in (words, folded, [1] * len(columns)):
        while sum(widths) > room:
            free = [i for i, c in enumerate(columns) if c not in whole and widths[i] > floors[i]]
            if not free:
                break
            widths[max(free, key=lambda i: widths[i])] -= 1
    return widths


@config.command("delete")
@click.argument("name")
@_errors_as_messages
def config_delete(name: str) -> None:
    """Delete the configuration NAME."""
    delete_cluster_configuration(name)
    click.echo(f"Deleted cluster configuration {name!r}.")


@main.group()
def env() -> None:
    """Software environments: packages that workers run with."""


@env.command("create")
@click.argument("name")
@click.option("--pip", "pip", multiple=True, help="A pip requirement; repeat for more.")
@click.option("--requirements", type=click.Path(dir_okay=False), help="A requirements.txt.")
@click.option("--conda", "conda", multiple=True, help="A conda package; repeat for more.")
@click.option("--conda-file", type=click.Path(dir_okay=False), help="An environment.yml.")
@click.option("--container", help="A container image, e.g. ghcr.io/org/image:tag.")
@click.option("--force-rebuild", is_flag=True, help="Build again even if a build exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the saved record as JSON.")
@_errors_as_messages
def env_create(
    name: str,
    pip: tuple[str, ...],
    requirements: str | None,
    conda: tuple[str, ...],
    conda_file: str | None,
    container: str | None,
    force_rebuild: bool,
    as_json: bool,
) -> None:
    """Build (or reuse) the software environment NAME."""
    from taskcloud.environments import create_software_environment

    given = {
        "--pip": list(pip) or None,
        "--requirements": requirements,
        "--conda": list(conda) or None,
        "--conda-file": conda_file,
        "--container": container,
    }
    chosen = [option for option, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise click.UsageError(
            f"give one kind of spec: --pip (repeatable) or --requirements, --conda "
            f"(repeatable) or --conda-file, or --container; got {', '.join(chosen) or 'none'}"
        )
    record = create_software_environment(
        name,
        pip=given["--pip"] or given["--requirements"],
        conda=given["--conda"] or given["--conda-file"],
        container=container,
        force_rebuild=force_rebuild,
        progress=not as_json,
    )
    if as_json:
        click.echo(json.dumps({name: record}, indent=2))


@env.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_errors_as_messages
def env_list(as_json: bool) -> None:
    """List the software environments."""
    from taskcloud.environments import list_software_environments

    saved = list_software_environments()
    if as_json:
        click.echo(json.dumps(saved, indent=2))
        return
    rows = [
        [name, record["kind"], _describe_spec(record["spec"]), record["python"], record["key"]]
        for name, record in saved.items()
    ]
    _print_table("Software environments", ("name", "kind", "spec", "python", "build"), rows)


def _describe_spec(spec: dict[str, Any]) -> str:
    if "file" in spec:
        return str(spec["file"])
    for key in ("requirements", "packages", "dependencies"):
        if key in spec:
            return " ".join(str(item) for item in spec[key])
    return str(spec.get("image", spec))


@env.command("delete")
@click.argument("name")
@_errors_as_messages
def env_delete(name: str) -> None:
    """Delete the software environment NAME (and its build, when unused)."""
    from taskcloud.environments import delete_software_environment

    delete_software_environment(name)
    click.echo(f"Deleted software environment {name!r}.")


@main.group()
def cluster() -> None:
    """Clusters that run detached until idle or stopped."""


@cluster.command("start")
@click.argument("name")
@click.option("--n-workers", help="N for a fixed size, MIN,MAX for an adaptive range.")
@click.option("--worker-cpu", type=int, help="Cores per worker.")
@click.option("--worker-memory", help="Memory per worker, e.g. '8 GiB'.")
@click.option("--software", help="Name of a software environment.")
@click.option("--idle-timeout", help="Stop after this long without work, e.g. '20 minutes'.")
@click.option("--configuration", help="Name of a saved cluster configuration.")
@click.option("--json", "as_json", is_flag=True, help="Print the cluster as JSON.")
@_errors_as_messages
def cluster_start(name: str, n_workers: str | None, as_json: bool, **options: Any) -> None:
    """Start the cluster NAME (or find it running) and leave it running."""
    from taskcloud.clusters import Cluster
    from taskcloud.clusters import list_clusters

    started = Cluster(name=name, n_workers=n_workers, shutdown_on_close=False, **options)
    verb = "Started" if started.created else "Found running"
    started.close()
    listing = list_clusters()[name]
    if as_json:
        click.echo(json.dumps({name: listing}, indent=2))
    else:
        click.echo(f"{verb} cluster {name!r} at {listing['address']}.")


@cluster.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_errors_as_messages
def cluster_list(as_json: bool) -> None:
    """List the running clusters."""
    from taskcloud.clusters import list_clusters

    running = list_clusters()
    if as_json:
        click.echo(json.dumps(running, indent=2))
        return
    rows = []
    for name, info in running.items():
        spec = info["spec"]
        memory = spec.get("worker_memory")
        rows.append(
            [
                name,
                info["status"],
                info["address"],
                str(info["workers"]),
                f"cpu={spec['worker_cpu']}" + (f" memory={format_bytes(memory)}" if memory else ""),
                f"{info['age']:.0f} s",
                info["provider"],
                info["where"],
                info["dashboard"] or "",
            ]
        )
    columns = (
        "name",
        "status",
        "address",
        "workers",
        "worker",
        "age",
        "provider",
        "where",
        "dashboard",
    )
    _print_table("Clusters", columns, rows, compact=True, whole=("name", "status", "address"))


@cluster.command("stop")
@click.argument("name")
@_errors_as_messages
def cluster_stop(name: str) -> None:
    """Stop the cluster NAME and its workers."""
    from taskcloud.clusters import delete_cluster

    delete_cluster(name)
    click.echo(f"Stopped cluster {name!r}.")


@main.group()
def provider() -> None:
    """Providers: the kinds of place workers run, and the profiles that configure them."""


@provider.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_errors_as_messages
def provider_list(as_json: bool) -> None:
    """List the profiles of this project and of $TASKCLOUD_HOME, the registered kinds
    and the default provider (secrets shown as ***)."""
    from taskcloud import profiles
    from taskcloud.providers import kinds

    found = profiles.load()
    default, default_source = profiles.default_choice()
    described = {kind: kinds.describe(target) for kind, target in kinds.kinds().items()}
    if as_json:
        listing = {
            "default": {"name": default, "source": default_source},
            "profiles": {name: _profile_json(profile) for name, profile in found.profiles.items()},
            "kinds": described,
        }
        click.echo(json.dumps(listing, indent=2))
        return
    _print_profiles(found.profiles, default)
    rows = [[kind, target, "yes" if kind == default else ""] for kind, target in described.items()]
    _print_table("Provider kinds", ("kind", "class", "default"), rows)
    click.echo(f"Default provider: {default} (set in {default_source}).")


def _profile_json(profile: Any) -> dict[str, Any]:
    return {"kind": profile.kind, "source": profile.source, "options": profile.public_options()}


def _print_profiles(found: dict[str, Any], default: str) -> None:
    rows = [
        [
            name,
            profile.kind,
            _describe_options(profile.public_options()),
            profile.source,
            "yes" if name == default else "",
        ]
        for name, profile in found.items()
    ]
    _print_table("Provider profiles", ("name", "kind", "options", "source", "default"), rows)


def _describe_options(options: dict[str, Any]) -> str:
    parts = []
    for option, value in options.items():
        shown = ",".join(str(item) for item in value) if isinstance(value, list) else value
        parts.append(f"{option}={shown}")
    return " ".join(parts)


@provider.command("check")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_errors_as_messages
def provider_check(name: str, as_json: bool) -> None:
    """Connect to every host of the provider NAME (a profile or a kind) and say what it
    offers. Exits with 1 when the provider's options are invalid, or a host is
    unreachable, cannot report its versions or runs other versions than ours."""
    import distributed

    import taskcloud
    from taskcloud.errors import ProviderNotFoundError
    from taskcloud.providers import kinds

    try:
        resolved = kinds.resolve(name)
    except ProviderNotFoundError as exc:
        raise _UnknownName(str(exc)) from None
    built = kinds.build(resolved)
    try:
        reports = built.check()
    finally:
        built.close()
    ours = {"distributed": distributed.__version__, "taskcloud": taskcloud.__version__}
    healthy = all(report.reachable and report.versions_match for report in reports)
    if as_json:
        listing = {"provider": resolved.name, "kind": resolved.kind, **ours, "ok": healthy}
        listing["hosts"] = [report.to_json() for report in reports]
        click.echo(json.dumps(listing, indent=2))
    else:
        title = (
            f"Provider {resolved.name!r} ({resolved.kind}); here distributed "
            f"{ours['distributed']}, taskcloud {ours['taskcloud']}"
        )
        rows = [_report_row(report) for report in reports]
        _print_table(title, _REPORT_COLUMNS, rows, compact=True, whole=("host", "status"))
        _print_reasons(reports)
    if not healthy:
        sys.exit(1)


class _UnknownName(click.ClickException):
    """A name that is no provider kind or profile: a usage error's exit status."""

    exit_code = 2


_REPORT_COLUMNS = (
    "host",
    "status",
    "python",
    "distributed",
    "taskcloud",
    "cores",
    "memory",
    "gpus",
)


def _status(report: Any) -> str:
    if not report.reachable:
        return "unreachable"
    if report.versions_match:
        return "ok"
    return "no report" if report.reason and not report.distributed else "versions differ"


def _report_row(report: Any) -> list[str]:
    if not report.reachable:
        return [report.host, _status(report), *[""] * (len(_REPORT_COLUMNS) - 2)]
    return [
        report.host,
        _status(report),
        report.python,
        report.distributed,
        report.taskcloud,
        str(report.cores),
        format_bytes(report.memory) if report.memory else "",
        str(report.gpus),
    ]


#: A command in a host's reason, as providers quote it: `ssh-keyscan node1 >> ...`.
_COMMAND = re.compile(r"`([^`]+)`")


def _print_reasons(reports: list[Any]) -> None:
    """Why hosts are not ok, below the table and unwrapped (hosts with one reason
    together); a command that fixes it on a line of its own, whole, to be copied."""
    hosts: dict[tuple[str, str], list[str]] = {}
    for report in reports:
        if report.reason:
            hosts.setdefault((_status(report), report.reason), []).append(report.host)
    for (status, reason), names in hosts.items():
        click.echo(f"{', '.join(names)}: {status}: {_COMMAND.sub('the command below', reason)}")
        for command in _COMMAND.findall(reason):
            click.echo(command)
