"""The one SQLite file that holds taskcloud's state.

It lives in the user's data directory, or in ``$TASKCLOUD_HOME`` when that is set.
Several processes may write at once: the file runs in WAL mode, and every change is
one ``BEGIN IMMEDIATE`` transaction that waits for the others.

The state holds secrets (``environ`` values, workers' ``env``), so the directory is
kept to its owner (no access for group or others) and so are the database and its
``-wal``, ``-shm`` and ``-journal`` files, checked each time the store is opened. A
directory this user may not write is still read, as a read-only snapshot.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from taskcloud.errors import StoreError

__all__ = ["TABLES", "Store", "home"]

#: Every table holds named JSON records.
TABLES = ("clusters", "configurations", "environments")

_SCHEMA = tuple(
    f"CREATE TABLE IF NOT EXISTS {table} "
    "(name TEXT PRIMARY KEY, options TEXT NOT NULL, created REAL NOT NULL)"
    for table in TABLES
)

#: The files SQLite keeps beside the database.
_SIDE_FILES = ("-wal", "-shm", "-journal")

_NOT_WRITABLE_HINT = "Make it writable by you, or set TASKCLOUD_HOME to a directory of your own."


def home() -> Path:
    """The directory of taskcloud's state: ``$TASKCLOUD_HOME`` or the user data dir."""
    configured = os.environ.get("TASKCLOUD_HOME")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("taskcloud", appauthor=False))


def _private(path: Path, allowed: int) -> bool:
    """Take from ``path`` every permission outside ``allowed``; False if it may not be."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~allowed:
            path.chmod(mode & allowed)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


class Store:
    """Named records in ``taskcloud.sqlite`` below :func:`home`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or home() / "taskcloud.sqlite"

    def _unwritable(self) -> str:
        """Make the directory and files private; why they cannot be written, or ''."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return f"it cannot be created ({exc.strerror or exc})"
        if not _private(directory, 0o700):
            return "its permissions cannot be limited to you (it belongs to another user)"
        self._private_files()
        if not os.access(directory, os.W_OK | os.X_OK) or (
            self.path.exists() and not os.access(self.path, os.W_OK)
        ):
            return "it is not writable by you"
        return ""

    def _private_files(self) -> None:
        for suffix in ("", *_SIDE_FILES):
            _private(Path(f"{self.path}{suffix}"), 0o600)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        reason = self._unwritable()
        if reason:
            raise StoreError(self.path.parent, reason, what="directory", hint=_NOT_WRITABLE_HINT)
        with self._writing() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(self.path, str(exc)) from None
        try:
            connection.execute("PRAGMA busy_timeout = 30000")
            connection.execute("PRAGMA journal_mode = WAL")
            # SQLite made the file, or its -wal and -shm, with the umask's permissions.
            self._private_files()
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            yield connection
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise StoreError(self.path, str(exc)) from None
        finally:
            connection.close()

    def _rows(self, table: str, query: str, *parameters: Any) -> list[Any]:
        """The rows of a read-only ``query``; from a snapshot where writing is refused."""
        sql = query.format(table=_table(table))
        if not self._unwritable():
            with self._writing() as db:
                return db.execute(sql, parameters).fetchall()
        if not self.path.exists():
            return []
        try:
            try:
                return self._read("mode=ro", sql, parameters)
            except sqlite3.OperationalError:
                # Even read-only, SQLite makes a -shm file beside a WAL database; where
                # it may not, it can only read the file as it stands.
                return self._read("mode=ro&immutable=1", sql, parameters)
        except sqlite3.Error as exc:
            raise StoreError(self.path, str(exc)) from None

    def _read(self, options: str, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        uri = f"file:{quote(str(self.path.absolute()))}?{options}"
        connection = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            return connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if str(exc).startswith("no such table"):  # nothing was written there yet
                return []
            raise
        finally:
            connection.close()

    def _decode(self, table: str, name: str, text: str) -> dict[str, Any]:
        """A record's options; a record that is not a JSON object is named."""
        try:
            options = json.loads(text)
        except ValueError as exc:
            options, problem = None, f"not valid JSON ({exc})"
        else:
            problem = f"a JSON {type(options).__name__}, not an object"
        if isinstance(options, dict):
            return options
        raise StoreError(
            self.path,
            f"the record {name!r} in the table {table!r} is {problem}",
            hint="Delete that record, or move the file away and taskcloud starts a new one.",
        )

    def put(self, table: str, name: str, options: dict[str, Any]) -> None:
        """Create or replace the record ``name`` in ``table``."""
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO {_table(table)} (name, options, created) VALUES (?, ?, ?)",
                (name, json.dumps(options, sort_keys=True), time.time()),
            )

    def get(self, table: str, name: str) -> dict[str, Any] | None:
        """The options of record ``name``, or None."""
        rows = self._rows(table, "SELECT options FROM {table} WHERE name = ?", name)
        return self._decode(table, name, rows[0][0]) if rows else None

    def all(self, table: str) -> dict[str, dict[str, Any]]:
        """Every record of ``table``, by name."""
        rows = self._rows(table, "SELECT name, options FROM {table} ORDER BY name")
        return {name: self._decode(table, name, options) for name, options in rows}

    def update(
        self,
        table: str,
        name: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Read, change and write record ``name`` in one transaction.

        ``change`` gets the current options (None if there is no record) and returns
        the new ones, or None to remove the record. Returns what was written.
        """
        with self._transaction() as db:
            row = db.execute(
                f"SELECT options, created FROM {_table(table)} WHERE name = ?", (name,)
            ).fetchone()
            new = change(None if row is None else self._decode(table, name, row[0]))
            if new is None:
                db.execute(f"DELETE FROM {_table(table)} WHERE name = ?", (name,))
            else:
                created = time.time() if row is None else row[1]
                db.execute(
                    f"INSERT OR REPLACE INTO {_table(table)} (name, options, created)"
                    " VALUES (?, ?, ?)",
                    (name, json.dumps(new, sort_keys=True), created),
                )
            return new

    def delete(self, table: str, name: str) -> bool:
        """Remove record ``name``; False if there was none."""
        with self._transaction() as db:
            cursor = db.execute(f"DELETE FROM {_table(table)} WHERE name = ?", (name,))
            return cursor.rowcount > 0


def _table(name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}")
    return name
