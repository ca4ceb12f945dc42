"""Where keys and stored Responses live: SQLite files under the data directory (the default),
or one PostgreSQL database that several front-ends share (`--database-url postgresql://...`).

`open_storage(database_url, data_dir)` picks the backend; `runtime.keys.KeyStore` and
`dialects.openai_responses.store.ResponseStore` are the front doors the rest of the code uses.
See docs/scale-out.md for what is shared and how revocation reaches every front-end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from runtime.storage.base import (
    KeyBackend,
    KeyRecord,
    KeyStoreError,
    LastAdminKey,
    ResponseBackend,
    ResponseRow,
    StorageUnavailable,
)
from runtime.storage.postgres import is_postgres_url
from runtime.storage.sqlite import KEYS_FILE, RESPONSES_FILE, SqliteKeys, SqliteResponses

__all__ = [
    "KEYS_FILE",
    "RESPONSES_FILE",
    "KeyBackend",
    "KeyRecord",
    "KeyStoreError",
    "LastAdminKey",
    "ResponseBackend",
    "ResponseRow",
    "Storage",
    "StorageUnavailable",
    "open_storage",
]


class Storage:
    """Both interfaces of one backend. Each is opened on first use (a caller that brings its
    own key store never opens this one's); `close()` closes what was opened, once."""

    def __init__(
        self,
        location: str,
        make_keys: Callable[[], KeyBackend],
        make_responses: Callable[[], ResponseBackend],
        *,
        shared: bool,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.location = location  # for logs: the data directory, or the URL without password
        self.shared = shared  # a database other processes on other machines may use too
        self._make_keys = make_keys
        self._make_responses = make_responses
        self._on_close = on_close
        self._closed = False

    @functools.cached_property
    def keys(self) -> KeyBackend:
        return self._make_keys()

    @functools.cached_property
    def responses(self) -> ResponseBackend:
        return self._make_responses()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in ("keys", "responses"):
            if name in self.__dict__:  # opened
                self.__dict__[name].close()
        if self._on_close is not None:
            self._on_close()


def open_storage(database_url: str | None, data_dir: Path) -> Storage:
    """The storage `database_url` names: None (or empty) is the SQLite files under `data_dir`;
    `postgresql://...` / `postgres://...` is that database, connected to (and its tables made)
    before this returns. Raises `StorageUnavailable` when it cannot be reached, and
    `KeyStoreError` for a URL of another kind."""
    if not database_url:
        return Storage(
            str(data_dir),
            lambda: SqliteKeys(data_dir / KEYS_FILE),
            lambda: SqliteResponses(data_dir / RESPONSES_FILE),
            shared=False,
        )
    if is_postgres_url(database_url):
        from runtime.storage.postgres import PostgresStorage

        database = PostgresStorage(database_url)
        return Storage(
            database.location,
            lambda: database.keys,
            lambda: database.responses,
            shared=True,
            on_close=database.close,
        )
    scheme = database_url.partition(":")[0]
    raise KeyStoreError(
        f"--database-url: unsupported kind {scheme!r}: give postgresql://user:password@host:port/dbname, "
        "or leave it out for SQLite files under the data directory"
    )
