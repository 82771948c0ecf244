"""How functions travel: code pickled by value arrives with its own file name."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import traceback
import types
import uuid

import cloudpickle
import pytest

from taskcloud.pickling import dumps
from taskcloud.pickling import ship

RENAMED = "<renamed-by-cloudpickle>"


def _renamed(rebuild, args):
    return rebuild(*args).replace(co_filename=RENAMED)


@pytest.fixture
def renaming_cloudpickle(monkeypatch):
    """cloudpickle as if it named all code it pickles by value something of its own."""
    original = cloudpickle.Pickler.dispatch_table[types.CodeType]

    def reduce(code):
        rebuild, args = original(code)[:2]
        return _renamed, (rebuild, args)

    monkeypatch.setitem(cloudpickle.Pickler.dispatch_table, types.CodeType, reduce)


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_code_keeps_its_file_whatever_cloudpickle_names_it(
    tmp_path, write, renaming_cloudpickle
) -> None:
    """Every frame of a task module, helpers and nested code included, names its file."""
    path = write(
        "task_divide.py",
        """
        def inverses(values):
            return [1 / value for value in values]

        def task_divide():
            divide = lambda: inverses([1, 0])
            return divide()
        """,
    )
    module = _load(path, "task_divide")
    function = ship(module.task_divide, path)
    assert pickle.loads(cloudpickle.dumps(function)).__code__.co_filename == RENAMED
    blob = dumps(function)
    del sys.modules["task_divide"]

    with pytest.raises(ZeroDivisionError) as info:
        pickle.loads(blob)()
    frames = traceback.extract_tb(info.value.__traceback__)[1:]
    # Python 3.12 runs comprehensions inline, before it in a code object of their own.
    names = ["task_divide", "<lambda>", "inverses"]
    names += ["<listcomp>"] if sys.version_info < (3, 12) else []
    assert [(frame.filename, frame.name) for frame in frames] == [(str(path), n) for n in names]
    assert frames[-1].line == "return [1 / value for value in values]"


#: Unpickles a function from stdin in a fresh process and prints what it returns.
LOAD = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())())"


def test_a_module_found_through_an_added_path_entry_loads_where_that_entry_is_missing(
    tmp_path, write, monkeypatch
) -> None:
    """A pickle carries the entries added to sys.path since start: a process without
    them (a worker started before) imports such a helper module as this one did, by
    name from its file. Installed packages still travel by reference."""
    name = f"helpers_{uuid.uuid4().hex[:8]}"
    helper = write(f"lib/{name}.py", "def answer():\n    return 42\n")
    monkeypatch.syspath_prepend(str(helper.parent))
    path = write(
        "task_helped.py",
        f"""
        import sys

        import attrs
        import {name}

        def task_helped():
            imported = sys.modules["{name}"] is {name}, sys.modules["attrs"] is attrs
            return {name}.answer(), {name}.__file__, *imported
        """,
    )
    try:
        blob = dumps(ship(_load(path, "task_helped").task_helped, path))
    finally:
        sys.modules.pop(name, None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = subprocess.run(
        [sys.executable, "-c", LOAD], input=blob, cwd=elsewhere, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == repr((42, str(helper), True, True))
