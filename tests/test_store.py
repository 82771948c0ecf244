"""The state file: private to its owner, readable where it cannot be written, and
records that cannot be read are named."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import taskcloud
from taskcloud import StoreError
from taskcloud.cli import main
from taskcloud.store import Store

#: Another user, for a root test run: root may write any directory.
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_state_is_private(tmp_path) -> None:
    """A new state directory is 0700 and its files 0600."""
    home = tmp_path / "new" / "home"
    Store(home / "taskcloud.sqlite").put("configurations", "big", {"worker_cpu": 2})
    assert _mode(home) == 0o700
    files = [path for path in home.iterdir() if path.name.startswith("taskcloud.sqlite")]
    assert files
    assert {path.name: _mode(path) for path in files} == dict.fromkeys(
        (path.name for path in files), 0o600
    )


def test_open_state_is_made_private_again(tmp_path) -> None:
    """State that others could read (0755, 0644, as older versions left it) is made
    private when it is next opened, for reading as for writing."""
    home = tmp_path / "home"
    store = Store(home / "taskcloud.sqlite")
    store.put("configurations", "big", {"environ": {"TOKEN": "s3cret"}})
    home.chmod(0o755)
    side = [Path(f"{store.path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    for path in side:
        path.touch()
        path.chmod(0o644)
    assert store.all("configurations")
    assert _mode(home) == 0o700
    left = [path for path in side if path.exists()]  # SQLite removes an empty -wal
    assert store.path in left
    assert [_mode(path) for path in left] == [0o600] * len(left)


def test_read_only_state_is_listed_and_refuses_changes() -> None:
    """Where the directory cannot be written, listing still works and a change gives a
    StoreError naming the directory."""
    # Not below tmp_path: pytest keeps that to this user, and the reader may be another.
    home = Path(tempfile.mkdtemp(prefix="taskcloud-read-only-"))
    store = Store(home / "taskcloud.sqlite")
    taskcloud.create_cluster_configuration("big", worker_cpu=2, store=store)
    try:
        listed, refused = _as_reader_only(home, lambda: _list_and_change(store))
    finally:
        home.chmod(0o700)
        shutil.rmtree(home)
    assert listed == {"big": {"worker_cpu": 2}}
    assert refused.startswith(
        f"taskcloud's state directory {home} cannot be used: it is not writable by you. "
        "Nothing was changed. Make it writable by you, or set TASKCLOUD_HOME"
    )


def _list_and_change(store: Store) -> list[object]:
    listed = taskcloud.list_cluster_configurations(store=store)
    try:
        taskcloud.create_cluster_configuration("small", worker_cpu=1, store=store)
    except StoreError as exc:
        return [listed, str(exc)]
    return [listed, "the change was saved"]


def _as_reader_only(home: Path, check: Callable[[], object]) -> object:
    """Run ``check`` in a forked child that may read ``home`` and not write it (as
    another user, when this is root, whom permissions do not stop); its JSON result."""
    home.chmod(0o500)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            os.close(reading)
            if os.geteuid() == 0:
                for path in (home, *home.iterdir()):
                    os.chown(path, NOBODY, -1)
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.write(writing, json.dumps(check()).encode())
            code = 0
        except BaseException:
            os.write(writing, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(writing)
    with os.fdopen(reading) as answer:
        output = answer.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return json.loads(output)


def test_a_home_that_cannot_be_created_is_named(tmp_path, monkeypatch) -> None:
    """TASKCLOUD_HOME below a file: writing names the directory; listing finds nothing."""
    (tmp_path / "file").write_text("")
    home = tmp_path / "file" / "home"
    monkeypatch.setenv("TASKCLOUD_HOME", str(home))
    with pytest.raises(StoreError, match=rf"state directory {home} cannot be used: it cannot"):
        taskcloud.create_cluster_configuration("big", worker_cpu=2)
    assert taskcloud.list_cluster_configurations() == {}


def _damage(path: Path, name: str, options: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE configurations SET options = ? WHERE name = ?", (options, name))


@pytest.mark.parametrize(
    ("options", "problem"),
    [("{not json", "not valid JSON"), ("[1, 2]", "a JSON list, not an object")],
)
def test_a_bad_record_is_named_in_one_line(taskcloud_home, options, problem) -> None:
    """A record that is not a JSON object gives one line naming it, not a traceback;
    the record can still be deleted."""
    taskcloud.create_cluster_configuration("good", worker_cpu=1)
    taskcloud.create_cluster_configuration("broken", worker_cpu=2)
    _damage(taskcloud_home / "taskcloud.sqlite", "broken", options)
    with pytest.raises(
        StoreError, match=rf"the record 'broken' in the table 'configurations' is {problem}"
    ):
        taskcloud.list_cluster_configurations()

    result = CliRunner().invoke(main, ["config", "list"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith(
        f"Error: taskcloud's state file {taskcloud_home / 'taskcloud.sqlite'} cannot be used: "
        f"the record 'broken' in the table 'configurations' is {problem}"
    )
    taskcloud.delete_cluster_configuration("broken")
    assert list(taskcloud.list_cluster_configurations()) == ["good"]
