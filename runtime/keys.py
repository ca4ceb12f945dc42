"""API keys: `sk-unsloth-<32 hex>`, stored hashed in SQLite under the data directory.

Keys carry 128 random bits, so a fast SHA-256 digest is the right hash (a slow password
hash would only add latency to every request); lookups compare digests in constant time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "sk-unsloth-"
DISPLAY_CHARS = len(KEY_PREFIX) + 8  # what `keys list` shows: enough to tell keys apart
LAST_USED_RESOLUTION = 60.0  # seconds: don't write to SQLite on every request

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    last_used REAL,
    revoked REAL
)
"""


class KeyStoreError(Exception):
    pass


@contextlib.contextmanager
def _database(path: Path) -> Iterator[None]:
    """SQLite failures as one-line `KeyStoreError`s, worded by error code."""
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
        raise KeyStoreError(f"the key database {path}: {reason}") from exc


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    name: str
    prefix: str
    created: float
    last_used: float | None
    revoked: float | None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(16)


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"cannot open the key database {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._touched: dict[int, float] = {}
        self._touch_db: sqlite3.Connection | None = None

    def close(self) -> None:
        self._db.close()
        if self._touch_db is not None:
            self._touch_db.close()

    def create(self, name: str | None = None) -> tuple[KeyRecord, str]:
        key = new_key()
        now = time.time()
        if name is not None and not name.strip():
            raise KeyStoreError("a key name cannot be empty")
        with self._lock, _database(self.path):
            if name is None:
                (count,) = self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()
                name = f"key-{count + 1}"
            # A revoked key gives its name up (it keeps a marked one in `keys list`).
            self._db.execute(
                "UPDATE api_keys SET name = name || ' (revoked #' || id || ')' WHERE name = ? AND revoked IS NOT NULL",
                (name,),
            )
            try:
                cur = self._db.execute(
                    "INSERT INTO api_keys (name, prefix, digest, created) VALUES (?, ?, ?, ?)",
                    (name, key[:DISPLAY_CHARS], digest(key), now),
                )
            except sqlite3.IntegrityError as exc:
                raise KeyStoreError(f"a key named {name!r} already exists") from exc
        record = KeyRecord(cur.lastrowid or 0, name, key[:DISPLAY_CHARS], now, None, None)
        return record, key

    def list(self) -> list[KeyRecord]:
        with self._lock, _database(self.path):
            rows = self._db.execute(
                "SELECT id, name, prefix, created, last_used, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def has_active_keys(self) -> bool:
        with self._lock, _database(self.path):
            return self._db.execute("SELECT 1 FROM api_keys WHERE revoked IS NULL LIMIT 1").fetchone() is not None

    def revoke(self, name_or_prefix: str) -> KeyRecord:
        """Revoke by name, or by a prefix of the key (at least 4 characters after `sk-unsloth-`)."""
        active = [r for r in self.list() if r.revoked is None]
        matches = [r for r in active if r.name == name_or_prefix]
        if not matches and len(name_or_prefix) >= len(KEY_PREFIX) + 4:
            matches = [r for r in active if r.prefix.startswith(name_or_prefix[:DISPLAY_CHARS])]
        if not matches:
            raise KeyStoreError(f"no active key named or starting with {name_or_prefix!r}")
        if len(matches) > 1:
            names = ", ".join(r.name for r in matches)
            raise KeyStoreError(f"{name_or_prefix!r} matches several keys ({names}): use the name")
        with self._lock, _database(self.path):
            self._db.execute("UPDATE api_keys SET revoked = ? WHERE id = ?", (time.time(), matches[0].id))
        return matches[0]

    def verify(self, key: str) -> KeyRecord | None:
        """The active key record for `key`, or None. Constant-time on the digest."""
        if not key.startswith(KEY_PREFIX):
            return None
        wanted = digest(key)
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, prefix, created, last_used, revoked, digest FROM api_keys WHERE digest = ?",
                (wanted,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[6], wanted) or row[5] is not None:
            return None
        record = KeyRecord(*row[:6])
        self._touch(record.id)
        return record

    def _touch(self, key_id: int) -> None:
        now = time.time()
        if now - self._touched.get(key_id, 0.0) < LAST_USED_RESOLUTION:
            return
        self._touched[key_id] = now
        # Its own connection with a tiny busy timeout: a writer elsewhere (`keys create`)
        # must not stall a request for seconds over a "last used" stamp.
        try:
            if self._touch_db is None:
                self._touch_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=0.05)
            with self._lock:
                self._touch_db.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (now, key_id))
        except sqlite3.Error:  # a read-only or busy database must not fail the request
            pass
