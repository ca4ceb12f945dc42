"""The default backend: two SQLite files under the data directory (`keys.sqlite3`,
`responses.sqlite3`), as every version so far has kept them, so existing databases keep working.

WAL mode lets readers proceed beside a writer, including a writer in another process
(`toolstudio keys create` while a server runs, or two front-ends on one data directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.storage.base import (
    LAST_ADMIN_SQL,
    KeyRecord,
    KeyStoreError,
    LastAdminKey,
    ResponseRow,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

KEYS_FILE = "keys.sqlite3"
RESPONSES_FILE = "responses.sqlite3"

_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    last_used REAL,
    revoked REAL,
    admin INTEGER NOT NULL DEFAULT 0
)
"""
_KEY_COLUMNS = "id, name, prefix, created, last_used, revoked, admin"

_RESPONSES_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
)
"""


@contextlib.contextmanager
def _database(what: str, path: Path) -> Iterator[None]:
    """SQLite failures as one-line `StorageUnavailable`s, worded by error code."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            reason = "it is locked by another process; try again"
        elif code == sqlite3.SQLITE_READONLY:
            reason = "it is read-only; point --data-dir (or TOOLSTUDIO_HOME) at a writable directory"
        else:
            reason = str(exc)
        raise StorageUnavailable(f"the {what} database {path}: {reason}") from exc


def _key_record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


class SqliteKeys:
    """`KeyBackend` on one SQLite file. One connection, serialized by a lock (sqlite3
    connections must not be used by two threads at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_KEYS_SCHEMA)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"cannot open the key database {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._touch_db: sqlite3.Connection | None = None

    def _migrate(self) -> None:
        """Databases from before admin keys get the column; someone must be able to manage
        keys from the web page, so the oldest active key becomes the admin."""
        has_admin = lambda: "admin" in {row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")}  # noqa: E731
        if has_admin():
            return
        self._db.execute("BEGIN IMMEDIATE")  # another process may be upgrading it right now
        try:
            if not has_admin():
                self._db.execute("ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")
                oldest = self._db.execute(
                    "SELECT id, name FROM api_keys WHERE revoked IS NULL ORDER BY id LIMIT 1"
                ).fetchone()
                if oldest is not None:
                    self._db.execute("UPDATE api_keys SET admin = 1 WHERE id = ?", (oldest[0],))
                    log.info("key database upgraded: the oldest active key %r is now the admin key", oldest[1])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def insert(self, name: str | None, prefix: str, digest: str, created: float, admin: bool) -> KeyRecord:
        with self._lock, _database("key", self.path):
            # IMMEDIATE: the write lock first, so the count, the rename and the insert see
            # one state even with another process writing.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if name is None:
                    (count,) = self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()
                    name = f"key-{count + 1}"
                # A revoked key gives its name up (it keeps a marked one in `keys list`).
                self._db.execute(
                    "UPDATE api_keys SET name = name || ' (revoked #' || id || ')' "
                    "WHERE name = ? AND revoked IS NOT NULL",
                    (name,),
                )
                cur = self._db.execute(
                    "INSERT INTO api_keys (name, prefix, digest, created, admin) VALUES (?, ?, ?, ?, ?)",
                    (name, prefix, digest, created, int(admin)),
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise KeyStoreError(f"a key named {name!r} already exists") from exc
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return KeyRecord(cur.lastrowid or 0, name, prefix, created, None, None, admin)

    def records(self) -> list[KeyRecord]:
        with self._lock, _database("key", self.path):
            rows = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id").fetchall()
        return [_key_record(row) for row in rows]

    def has_active(self) -> bool:
        with self._lock, _database("key", self.path):
            return self._db.execute("SELECT 1 FROM api_keys WHERE revoked IS NULL LIMIT 1").fetchone() is not None

    def revoke(self, key_id: int, at: float, *, keep_an_admin: bool = False) -> bool:
        with self._lock, _database("key", self.path):
            # IMMEDIATE: the write lock before the check, so another process cannot revoke the
            # other admin key between the check and the update.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if keep_an_admin and self._db.execute(LAST_ADMIN_SQL.format(p="?"), (key_id, key_id)).fetchone():
                    raise LastAdminKey(f"key {key_id} is the last active admin key")
                changed = self._db.execute(
                    "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (at, key_id)
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return bool(changed)

    def lookup(self, digest: str) -> tuple[KeyRecord, str] | None:
        with self._lock, _database("key", self.path):
            row = self._db.execute(
                f"SELECT {_KEY_COLUMNS}, digest FROM api_keys WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else (_key_record(row), row[7])

    def touch(self, key_id: int, at: float) -> None:
        # Its own connection with a tiny busy timeout: a writer elsewhere (`keys create`)
        # must not stall a request for seconds over a "last used" stamp.
        try:
            with self._lock:
                if self._touch_db is None:
                    self._touch_db = sqlite3.connect(
                        self.path, check_same_thread=False, isolation_level=None, timeout=0.05
                    )
                self._touch_db.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (at, key_id))
        except sqlite3.Error:  # a read-only or busy database must not fail the request
            pass

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._touch_db is not None:
                self._touch_db.close()


class SqliteResponses:
    """`ResponseBackend` on one SQLite file. Each call opens its own short-lived connection:
    no handle to close at shutdown, and any thread may call. The file and table are created
    on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._ready = False
        self._schema_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0)
        if not self._ready:
            with self._schema_lock:
                if not self._ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(_RESPONSES_SCHEMA)
                    conn.commit()
                    self._ready = True
        return conn

    def put(self, row: ResponseRow) -> None:
        values = (
            row.id,
            row.key_id,
            row.created_at,
            json.dumps(row.body),
            json.dumps(row.input_items),
            json.dumps(row.conversation),
        )
        with _database("responses", self.path), contextlib.closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", values)

    def get(self, response_id: str, key_id: int) -> ResponseRow | None:
        with _database("responses", self.path), contextlib.closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT created_at, body, input_items, conversation FROM responses WHERE id = ? AND key_id = ?",
                (response_id, key_id),
            ).fetchone()
        if row is None:
            return None
        created_at, body, input_items, conversation = row
        return ResponseRow(
            response_id, key_id, created_at, json.loads(body), json.loads(input_items), json.loads(conversation)
        )

    def delete(self, response_id: str, key_id: int) -> bool:
        with _database("responses", self.path), contextlib.closing(self._connect()) as conn, conn:
            cursor = conn.execute("DELETE FROM responses WHERE id = ? AND key_id = ?", (response_id, key_id))
        return cursor.rowcount > 0

    def close(self) -> None:
        """Nothing is held between calls."""
