"""The ``taskcloud`` command: manage saved state from a shell.

Tables by default, ``--json`` for scripts. Bad arguments are usage errors; taskcloud's
own errors are one line, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from taskcloud.configurations import create_cluster_configuration
from taskcloud.configurations import delete_cluster_configuration
from taskcloud.configurations import list_cluster_configurations
from taskcloud.errors import TaskcloudError
from taskcloud.specs import format_bytes

__all__ = ["main"]


def _errors_as_messages(command: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TaskcloudError as exc:
            raise click.ClickException(str(exc)) from None

    return run


def _n_workers(value: str | None) -> int | list[int] | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give N or MIN,MAX, e.g. 0,4") from None
    return numbers[0] if len(numbers) == 1 else numbers


@click.group()
@click.version_option(package_name="taskcloud")
def main() -> None:
    """Manage taskcloud's saved cluster configurations."""


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
@click.option("--json", "as_json", is_flag=True, help="Print the saved configuration as JSON.")
@_errors_as_messages
def config_create(name: str, n_workers: str | None, as_json: bool, **options: Any) -> None:
    """Save the configuration NAME (replacing one of that name)."""
    saved = create_cluster_configuration(name, n_workers=_n_workers(n_workers), **options)
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
    table = Table(title="Cluster configurations", title_justify="left")
    for column in ("name", "cpu", "memory", "gpu", "n_workers", "keepalive", "software"):
        table.add_column(column)
    for name, options in saved.items():
        memory = options.get("worker_memory")
        table.add_row(
            name,
            str(options.get("worker_cpu", "")),
            format_bytes(memory) if memory else "",
            str(options.get("worker_gpu", "")),
            str(options.get("n_workers", "")),
            f"{options['keepalive']:g} s" if "keepalive" in options else "",
            options.get("software") or "",
        )
    Console(file=sys.stdout).print(table)


@config.command("delete")
@click.argument("name")
@_errors_as_messages
def config_delete(name: str) -> None:
    """Delete the configuration NAME."""
    delete_cluster_configuration(name)
    click.echo(f"Deleted cluster configuration {name!r}.")
