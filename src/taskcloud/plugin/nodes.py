"""Loads a task's arguments from its nodes and stores what a worker produced.

Loading and storing happen in pytask's process, as in a serial run, so every node
type (paths, pickles, ``PythonNode``s, custom nodes) keeps its own semantics. For
backends whose workers cannot see this file system (``remote=True``), local files
travel as :class:`~taskcloud.call.RemoteFile` and products travel back.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path
from typing import Any

from attrs import define
from attrs import field
from pytask import NodeLoadError
from pytask import PNode
from pytask import PPathNode
from pytask import PProvisionalNode
from pytask import PTask
from pytask import PythonNode
from pytask.tree_util import tree_leaves
from pytask.tree_util import tree_map
from pytask.tree_util import tree_structure

from taskcloud.call import RemoteFile

__all__ = ["Arguments", "load_arguments", "store_carried", "store_files", "store_return"]

_KEYS = itertools.count()


@define
class Arguments:
    """A task's loaded arguments and, for remote workers, the files that travel."""

    kwargs: dict[str, Any]
    products: dict[int, Path] = field(factory=dict)
    has_files: bool = False
    #: Product ``PythonNode``s the task receives itself and may ``save`` into; a
    #: worker's copies come back with their values.
    nodes: list[PythonNode] = field(factory=list)


def load_arguments(task: PTask, *, remote: bool) -> Arguments:
    """Load the values a task function receives, as pytask's serial run does."""
    arguments = Arguments(kwargs={})
    parameters = inspect.signature(task.function).parameters

    def load(node: PNode | PProvisionalNode, *, is_product: bool) -> Any:
        try:
            value = node.load(is_product=is_product)
        except Exception as exc:
            msg = f"Exception while loading node {node.name!r} of task {task.name!r}"
            raise NodeLoadError(msg) from exc
        if remote and isinstance(node, PPathNode) and _is_local_file(value, node):
            return _travel(arguments, Path(value), is_product=is_product)
        if is_product and value is node and isinstance(node, PythonNode):
            arguments.nodes.append(node)
        return value

    for name, tree in task.depends_on.items():
        arguments.kwargs[name] = tree_map(lambda n: load(n, is_product=False), tree)
    for name, tree in task.produces.items():
        if name in parameters:
            arguments.kwargs[name] = tree_map(lambda n: load(n, is_product=True), tree)
    return arguments


def _is_local_file(value: Any, node: PPathNode) -> bool:
    return isinstance(value, Path) and value == node.path and not value.is_dir()


def _travel(arguments: Arguments, path: Path, *, is_product: bool) -> RemoteFile:
    key = next(_KEYS)
    arguments.has_files = True
    if is_product:
        arguments.products[key] = path
        return RemoteFile(key=key, name=path.name, content=None)
    return RemoteFile(key=key, name=path.name, content=path.read_bytes())


def store_files(arguments: Arguments, files: dict[int, bytes]) -> None:
    """Write product files that travelled back from a remote worker."""
    for key, content in files.items():
        arguments.products[key].write_bytes(content)


def store_carried(arguments: Arguments, values: tuple[Any, ...]) -> None:
    """Save what a worker's copies of the task's product ``PythonNode``s hold."""
    for node, value in zip(arguments.nodes, values, strict=False):
        node.save(value)


def store_return(task: PTask, value: Any) -> None:
    """Save a task's return value into the nodes of its return annotation."""
    if "return" not in task.produces:
        return
    structure_out = tree_structure(value)
    structure_return = tree_structure(task.produces["return"])
    # strict must be false because None is a leaf.
    if not structure_return.is_prefix(structure_out, strict=False):
        msg = (
            "The structure of the return annotation is not a subtree of the "
            f"structure of the function return.\n\nFunction return: {structure_out}"
            f"\n\nReturn annotation: {structure_return}"
        )
        raise ValueError(msg)
    nodes: list[Any] = tree_leaves(task.produces["return"])
    values = structure_return.flatten_up_to(value)
    for node, leaf in zip(nodes, values, strict=False):
        if not isinstance(node, PProvisionalNode):
            node.save(leaf)
