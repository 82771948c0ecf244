"""How functions travel: code pickled by value arrives with its own file name."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import traceback
import types

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
