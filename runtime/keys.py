"""API keys: `sk-unsloth-<32 hex>`, stored hashed, in SQLite under the data directory or in the
PostgreSQL database front-ends share (runtime/storage).

Keys carry 128 random bits, so a fast SHA-256 digest is the right hash (a slow password
hash would only add latency to every request); lookups compare digests in constant time.
Nothing here caches a key: `verify` reads the database every time, so a key revoked by any
front-end (or the CLI) is refused by every front-end from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from pathlib import Path

from runtime.storage import KeyBackend, KeyRecord, KeyStoreError, LastAdminKey, StorageUnavailable
from runtime.storage.sqlite import SqliteKeys

__all__ = ["KeyRecord", "KeyStore", "KeyStoreError", "LastAdminKey", "StorageUnavailable", "digest", "new_key"]

KEY_PREFIX = "sk-unsloth-"
DISPLAY_CHARS = len(KEY_PREFIX) + 8  # what `keys list` shows: enough to tell keys apart
LAST_USED_RESOLUTION = 60.0  # seconds: don't write to the database on every request


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(16)


class KeyStore:
    """The key operations the CLI, the auth guard and /v1/keys use, over any `KeyBackend`.

    `KeyStore(path)` opens the SQLite file `path` (as before storage backends existed);
    `KeyStore(backend)` uses a backend from `runtime.storage.open_storage`. Every method
    blocks on the database: async code calls them through `asyncio.to_thread`.
    Raises `KeyStoreError` for a refused operation and `StorageUnavailable` (a subclass)
    when the database cannot answer."""

    def __init__(self, source: Path | KeyBackend) -> None:
        self.backend: KeyBackend = SqliteKeys(source) if isinstance(source, Path) else source
        self.location = self.backend.location
        self._touched: dict[int, float] = {}  # key id -> when this process last wrote last_used
        self._touched_lock = threading.Lock()

    def close(self) -> None:
        self.backend.close()

    def create(self, name: str | None = None, admin: bool = False) -> tuple[KeyRecord, str]:
        """A new key: its record and the secret (shown once, never stored)."""
        if name is not None and not name.strip():
            raise KeyStoreError("a key name cannot be empty")
        if name is not None and name.strip().startswith(KEY_PREFIX):
            # `keys revoke NAME_OR_PREFIX` tries names first: such a name would shadow the prefix
            # of another key, and revoking "that key" would revoke this one.
            raise KeyStoreError(f"a key name cannot start with {KEY_PREFIX!r} (it would read as a key's prefix)")
        key = new_key()
        record = self.backend.insert(name, key[:DISPLAY_CHARS], digest(key), time.time(), admin)
        return record, key

    def list(self) -> list[KeyRecord]:
        return self.backend.records()

    def has_active_keys(self) -> bool:
        return self.backend.has_active()

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
        return self.revoke_id(matches[0].id)

    def revoke_id(self, key_id: int, *, keep_an_admin: bool = False) -> KeyRecord:
        """Revoke the active key `key_id`; its record, with `revoked` set. The next request
        with it is refused, on every front-end (`verify` reads the database every time).
        `keep_an_admin`: raise `LastAdminKey` rather than revoke the last active admin key."""
        changed = self.backend.revoke(key_id, time.time(), keep_an_admin=keep_an_admin)
        record = next((r for r in self.list() if r.id == key_id), None)
        if not changed or record is None:
            raise KeyStoreError(f"no active key with id {key_id}")
        return record

    def verify(self, key: str) -> KeyRecord | None:
        """The active key record for `key`, or None. Constant-time on the digest."""
        if not key.startswith(KEY_PREFIX):
            return None
        wanted = digest(key)
        found = self.backend.lookup(wanted)
        if found is None:
            return None
        record, stored = found
        if not hmac.compare_digest(stored, wanted) or record.revoked is not None:
            return None
        self._touch(record.id)
        return record

    def _touch(self, key_id: int) -> None:
        now = time.time()
        with self._touched_lock:
            if now - self._touched.get(key_id, 0.0) < LAST_USED_RESOLUTION:
                return
            self._touched[key_id] = now
        self.backend.touch(key_id, now)
