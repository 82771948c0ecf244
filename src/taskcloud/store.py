"""The one SQLite file that holds taskcloud's state.

It lives in the user's data directory, or in ``$TASKCLOUD_HOME`` when that is set.
Several processes may write at once: the file runs in WAL mode, and every change is
one ``BEGIN IMMEDIATE`` transaction that waits for the others.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from taskcloud.errors import StoreError

__all__ = ["TABLES", "Store", "home"]

#: Every table holds named JSON records.
TABLES = ("clusters", "configurations", "environments")

_SCHEMA = tuple(
    f"CREATE TABLE IF NOT EXISTS {table} "
    "(name TEXT PRIMARY KEY, options TEXT NOT NULL, created REAL NOT NULL)"
    for table in TABLES
)


def home() -> Path:
    """The directory of taskcloud's state: ``$TASKCLOUD_HOME`` or the user data dir."""
    configured = os.environ.get("TASKCLOUD_HOME")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("taskcloud", appauthor=False))


class Store:
    """Named records in ``taskcloud.sqlite`` below :func:`home`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or home() / "taskcloud.sqlite"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(self.path, str(exc)) from None
        try:
            connection.execute("PRAGMA busy_timeout = 30000")
            connection.execute("PRAGMA journal_mode = WAL")
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

    def put(self, table: str, name: str, options: dict[str, Any]) -> None:
        """Create or replace the record ``name`` in ``table``."""
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO {_table(table)} (name, options, created) VALUES (?, ?, ?)",
                (name, json.dumps(options, sort_keys=True), time.time()),
            )

    def get(self, table: str, name: str) -> dict[str, Any] | None:
        """The options of record ``name``, or None."""
        with self._transaction() as db:
            row = db.execute(
                f"SELECT options FROM {_table(table)} WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def all(self, table: str) -> dict[str, dict[str, Any]]:
        """Every record of ``table``, by name."""
        with self._transaction() as db:
            rows = db.execute(f"SELECT name, options FROM {_table(table)} ORDER BY name")
            return {name: json.loads(options) for name, options in rows.fetchall()}

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
            new = change(None if row is None else json.loads(row[0]))
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
