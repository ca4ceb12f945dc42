"""What the storage backends store, and the two small interfaces they implement.

Two kinds of state outlive a request and may be shared by several front-ends: API keys and
stored Responses. Each backend (SQLite files under the data directory, or one PostgreSQL
database) implements `KeyBackend` and `ResponseBackend`. Their methods block (file or network
I/O) and are thread-safe: async callers run them with `asyncio.to_thread`, never on the event
loop. Neither interface caches anything, so what one front-end writes (a revoked key, a stored
response) is what the next read on any front-end sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from runtime import errors


class KeyStoreError(Exception):
    """A key operation failed; the message is one line, fit for the CLI and for API errors."""


class LastAdminKey(KeyStoreError):
    """A revocation that would leave no active admin key was refused (`keep_an_admin`)."""


class StorageUnavailable(KeyStoreError, errors.ToolstudioError):
    """The database cannot answer (unreachable, locked, read-only, broken): not the caller's
    fault, so HTTP answers 503 (`server_error` / `api_error`, code `storage_unavailable`).

    `str(exc)` is the detail, for the CLI and the server log: which database and why.
    `exc.message`, what API clients see, names neither (a client, even one without a valid
    key, has no business learning the database's host)."""

    status = 503

    def __init__(self, detail: str) -> None:
        errors.ToolstudioError.__init__(self, detail, code="storage_unavailable")
        self.message = "the server's database is not answering; try again shortly"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored (never the secret). Times are unix seconds."""

    id: int
    name: str
    prefix: str  # the first `DISPLAY_CHARS` of the key, what `keys list` shows
    created: float
    last_used: float | None
    revoked: float | None
    admin: bool = False  # may manage keys (GET/POST/DELETE /v1/keys)


@dataclass(frozen=True, slots=True)
class ResponseRow:
    """One stored Response, as JSON-ready values (the dialect maps them to and from its types).

    `body` is the response object GET returns; `input_items` the turn's input items;
    `conversation` the IR messages up to and including this response, as JSON dicts.
    `created_at` is unix seconds."""

    id: str
    key_id: int
    created_at: int
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]


# Whether key `id` is an active admin key that no other active key shares the role with; `{p}`
# is the driver's placeholder, bound to the id twice. Backends run it inside the revoking
# transaction, with other writers locked out.
LAST_ADMIN_SQL = (
    "SELECT 1 FROM api_keys WHERE id = {p} AND admin AND revoked IS NULL AND NOT EXISTS "
    "(SELECT 1 FROM api_keys WHERE admin AND revoked IS NULL AND id <> {p})"
)


class KeyBackend(Protocol):
    """API keys, stored as digests. Blocking and thread-safe; every call reads the database."""

    location: str  # for messages: a file path, or a URL without its password

    def insert(self, name: str | None, prefix: str, digest: str, created: float, admin: bool) -> KeyRecord:
        """Store a new active key, in one transaction: `name` None picks `key-<count+1>`;
        a revoked key holding `name` is renamed `<name> (revoked #<id>)` to free it.
        Raises `KeyStoreError` when an active key already has the name."""
        ...

    def records(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        ...

    def has_active(self) -> bool: ...

    def revoke(self, key_id: int, at: float, *, keep_an_admin: bool = False) -> bool:
        """Mark key `key_id` revoked at `at`; False when no active key has that id.
        `keep_an_admin`: raise `LastAdminKey` instead when it is the last active admin key,
        checked and written in one transaction (two admins revoking each other at once must
        not both succeed, on one front-end or several)."""
        ...

    def lookup(self, digest: str) -> tuple[KeyRecord, str] | None:
        """The key whose digest is `digest` (revoked or not) with its stored digest, or None."""
        ...

    def touch(self, key_id: int, at: float) -> None:
        """Best effort: set `last_used`; never raises, never waits long for a lock."""
        ...

    def close(self) -> None: ...


class ResponseBackend(Protocol):
    """Stored Responses, each readable only with the key id that stored it. Blocking and
    thread-safe."""

    location: str

    def put(self, row: ResponseRow) -> None:
        """Insert or replace the row with `row.id`."""
        ...

    def get(self, response_id: str, key_id: int) -> ResponseRow | None: ...

    def delete(self, response_id: str, key_id: int) -> bool:
        """True when a row was deleted."""
        ...

    def close(self) -> None: ...
