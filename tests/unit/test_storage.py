"""The storage contract, run against both backends: SQLite files and a real PostgreSQL.

Each test gets a fresh store (a temp data dir, or a fresh database on the session's
throwaway cluster, see tests/postgres.py). "Two front-ends" are two independent storages
opened on the same database: nothing may be cached between them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dialects.openai_responses.store import ResponseStore, StoredResponse
from runtime.ir import ImagePart, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart
from runtime.keys import KeyStore
from runtime.storage import KeyStoreError, LastAdminKey, ResponseRow, Storage, StorageUnavailable, open_storage
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (a fixture)

Opener = Callable[[], Storage]


@pytest.fixture(params=["sqlite", "postgres"])
def open_shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a storage on this test's database; each call is another front-end on it."""
    if request.param == "sqlite":
        url = None
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()
    opened: list[Storage] = []

    def opener() -> Storage:
        opened.append(open_storage(url, tmp_path))
        return opened[-1]

    yield opener
    for storage in opened:
        storage.close()


@pytest.fixture
def keys(open_shared: Opener) -> KeyStore:
    return KeyStore(open_shared().keys)


def stored_text(storage: Storage) -> str:
    """Everything the key table holds, as text (to show what is and is not stored)."""
    if storage.shared:
        import psycopg

        with psycopg.connect(storage.keys.pool.conninfo) as conn:  # type: ignore[attr-defined]
            return "\n".join(str(row) for row in conn.execute("SELECT row_to_json(k) FROM api_keys k"))
    with contextlib.closing(sqlite3.connect(Path(storage.location) / "keys.sqlite3")) as conn:
        return "\n".join(conn.iterdump())


# -- keys ------------------------------------------------------------------------------------------


def test_a_created_key_verifies_and_others_do_not(keys: KeyStore) -> None:
    record, key = keys.create("alice", admin=True)
    assert re.fullmatch(r"sk-unsloth-[0-9a-f]{32}", key)
    verified = keys.verify(key)
    assert verified is not None and verified.id == record.id and verified.name == "alice" and verified.admin
    assert keys.verify(key[:-1] + ("0" if key[-1] != "0" else "1")) is None
    assert keys.verify("not-a-key") is None


def test_only_a_digest_is_stored(open_shared: Opener) -> None:
    storage = open_shared()
    _, key = KeyStore(storage.keys).create("alice")
    dump = stored_text(storage)
    assert "alice" in dump  # the dump does show the table
    assert key[len("sk-unsloth-") :] not in dump


def test_names_admin_flags_and_order(keys: KeyStore) -> None:
    keys.create()
    keys.create("ops", admin=True)
    keys.create()
    records = keys.list()
    assert [r.name for r in records] == ["key-1", "ops", "key-3"]
    assert [r.admin for r in records] == [False, True, False]
    assert records[0].id < records[1].id < records[2].id
    assert all(r.revoked is None and r.last_used is None for r in records)
    assert keys.has_active_keys()


def test_duplicate_and_empty_names_are_refused(keys: KeyStore) -> None:
    keys.create("same")
    with pytest.raises(KeyStoreError, match="already exists"):
        keys.create("same")
    with pytest.raises(KeyStoreError, match="empty"):
        keys.create("  ")
    assert [r.name for r in keys.list()] == ["same"]


def test_revoke_by_name_prefix_and_id(keys: KeyStore) -> None:
    _, a = keys.create("alice")
    _, b = keys.create("bob")
    c_record, c = keys.create("carol")
    assert keys.revoke("alice").revoked is not None
    assert keys.verify(a) is None and keys.verify(b) is not None
    keys.revoke(b[:20])
    assert keys.verify(b) is None
    assert keys.revoke_id(c_record.id).revoked is not None
    assert keys.verify(c) is None and not keys.has_active_keys()
    with pytest.raises(KeyStoreError):
        keys.revoke("alice")  # already revoked
    with pytest.raises(KeyStoreError):
        keys.revoke_id(c_record.id)
    with pytest.raises(KeyStoreError):
        keys.revoke("sk-unsloth-")  # too short to name one key


def test_a_revoked_keys_name_can_be_reused(keys: KeyStore) -> None:
    old_record, old = keys.create("ci")
    keys.revoke("ci")
    _, new = keys.create("ci")
    assert keys.verify(new) is not None and keys.verify(old) is None
    names = {r.name: r.revoked is not None for r in keys.list()}
    assert names == {f"ci (revoked #{old_record.id})": True, "ci": False}


def test_last_used_is_recorded_once_a_minute(keys: KeyStore) -> None:
    _, key = keys.create()
    keys.verify(key)
    first = keys.list()[0].last_used
    assert first is not None
    keys.verify(key)
    assert keys.list()[0].last_used == first  # not rewritten on every request


def test_a_revoke_on_one_front_end_is_refused_by_the_other_at_once(open_shared: Opener) -> None:
    front, back = KeyStore(open_shared().keys), KeyStore(open_shared().keys)
    record, key = front.create("shared")
    assert back.verify(key) is not None  # created on one, accepted by the other
    assert front.verify(key) is not None  # (a cache of valid keys would now hold it)
    assert back.revoke_id(record.id).revoked is not None
    assert front.verify(key) is None  # no cache on the front: refused at the very next check
    assert [r.revoked is not None for r in front.list()] == [True]


def test_admins_revoking_each_other_on_two_front_ends_leave_one(open_shared: Opener) -> None:
    front, back = KeyStore(open_shared().keys), KeyStore(open_shared().keys)
    for _ in range(5):  # a race: several rounds
        a, _ = front.create(admin=True)
        b, _ = back.create(admin=True)
        others = [r.id for r in front.list() if r.admin and r.revoked is None and r.id not in (a.id, b.id)]
        for key_id in others:  # from the earlier rounds
            front.revoke_id(key_id)
        start = threading.Barrier(2)

        def revoke(store: KeyStore, key_id: int, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                return "revoked" if store.revoke_id(key_id, keep_an_admin=True).revoked else "?"
            except LastAdminKey:
                return "refused"

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(revoke, (front, back), (b.id, a.id)))
        assert outcomes == ["refused", "revoked"]
        assert len([r for r in back.list() if r.admin and r.revoked is None]) == 1
    last = next(r for r in front.list() if r.admin and r.revoked is None)
    with pytest.raises(LastAdminKey):
        front.revoke_id(last.id, keep_an_admin=True)
    user, _ = front.create()
    assert back.revoke_id(user.id, keep_an_admin=True).revoked is not None  # not an admin: no check
    assert front.revoke_id(last.id).revoked is not None  # the CLI's way: no check (it can make another)


def test_front_ends_creating_keys_at_once_get_distinct_names(open_shared: Opener) -> None:
    stores = [KeyStore(open_shared().keys) for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        created = list(pool.map(lambda i: stores[i % 3].create(), range(12)))
    names = [r.name for r in stores[0].list()]
    assert len(names) == 12 and len(set(names)) == 12
    assert sorted(names) == sorted(r.name for r, _ in created)
    assert all(stores[(i + 1) % 3].verify(key) is not None for i, (_, key) in enumerate(created))


# -- responses -------------------------------------------------------------------------------------


def row(response_id: str = "resp_1", key_id: int = 1, **changes: object) -> ResponseRow:
    fields: dict[str, object] = {
        "id": response_id,
        "key_id": key_id,
        "created_at": 1_700_000_000,
        # Key order and non-ASCII text must come back exactly as stored.
        "body": {"id": response_id, "status": "completed", "output": [{"text": "héllo ✓"}], "a": None, "0": 1.5},
        "input_items": [{"id": "msg_1", "type": "message", "content": [{"type": "input_text", "text": "hi"}]}],
        "conversation": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    return ResponseRow(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_stored_response_reads_back_exactly(open_shared: Opener) -> None:
    responses = open_shared().responses
    stored = row()
    responses.put(stored)
    got = responses.get("resp_1", 1)
    assert got == stored
    assert got is not None and json.dumps(got.body) == json.dumps(stored.body)  # same key order


def test_another_keys_response_does_not_exist(open_shared: Opener) -> None:
    responses = open_shared().responses
    responses.put(row(key_id=1))
    assert responses.get("resp_1", 2) is None
    assert responses.delete("resp_1", 2) is False
    assert responses.get("resp_1", 1) is not None


def test_put_replaces_and_delete_removes(open_shared: Opener) -> None:
    responses = open_shared().responses
    responses.put(row(body={"status": "in_progress"}))
    responses.put(row(body={"status": "completed"}))
    got = responses.get("resp_1", 1)
    assert got is not None and got.body == {"status": "completed"}
    assert responses.delete("resp_1", 1) is True
    assert responses.get("resp_1", 1) is None
    assert responses.delete("resp_1", 1) is False


def test_a_response_stored_by_one_front_end_is_read_and_deleted_by_another(open_shared: Opener) -> None:
    first, second = open_shared().responses, open_shared().responses
    first.put(row("resp_a"))
    assert second.get("resp_a", 1) == row("resp_a")
    assert second.delete("resp_a", 1)
    assert first.get("resp_a", 1) is None


def test_the_async_store_keeps_every_kind_of_message_part(open_shared: Opener) -> None:
    store = ResponseStore(open_shared().responses)
    conversation = [
        Message("user", [TextPart("look"), ImagePart(data=b"\x89PNG\x00\xff", media_type="image/png")]),
        Message("user", [ImagePart(url="https://example.com/cat.png")]),
        Message(
            "assistant",
            [ReasoningPart("thinking"), ToolCallPart("call_1", "python", '{"code": "1+1"}'), TextPart("ok")],
        ),
        Message("tool", [ToolResultPart("call_1", "2", is_error=False, name="python")]),
    ]
    record = StoredResponse("resp_x", 7, 1_700_000_000, {"status": "completed"}, [{"id": "msg_1"}], conversation)

    async def roundtrip() -> tuple[StoredResponse | None, StoredResponse | None, bool]:
        await store.save(record)
        return await store.get("resp_x", 7), await store.get("resp_x", 8), await store.delete("resp_x", 7)

    got, other_key, deleted = asyncio.run(roundtrip())
    assert got == record and other_key is None and deleted


# -- opening ---------------------------------------------------------------------------------------


def test_front_ends_starting_together_create_the_schema_once(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    url = postgres_cluster.new_database()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        storages = list(pool.map(lambda _: open_storage(url, Path("/nonexistent")), range(4)))
    try:
        record, key = KeyStore(storages[0].keys).create("k")
        assert all(getattr(KeyStore(s.keys).verify(key), "id", None) == record.id for s in storages[1:])
    finally:
        for storage in storages:
            storage.close()


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    from tests.servers import free_port

    url = f"postgresql://someone:s3cret-pw@127.0.0.1:{free_port()}/db"
    with pytest.raises(StorageUnavailable) as caught:
        open_storage(url, tmp_path)
    assert "127.0.0.1" in str(caught.value) and "s3cret-pw" not in str(caught.value)
    assert caught.value.status == 503


def test_a_database_that_goes_away_is_a_503_not_a_crash(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    import psycopg

    url = postgres_cluster.new_database()
    storage = open_storage(url, Path("/nonexistent"))
    try:
        keys = KeyStore(storage.keys)
        _, key = keys.create("k")
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
            # Every connection of this database ends, as when the server restarts.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (url.rsplit("/", 1)[1],)
            )
        with pytest.raises(StorageUnavailable):
            keys.verify(key)
        # The pool replaces broken connections: once the database answers again, so do we.
        assert any(_verified(keys, key) for _ in range(10))
    finally:
        storage.close()


def _verified(keys: KeyStore, key: str) -> bool:
    try:
        return keys.verify(key) is not None
    except StorageUnavailable:
        return False


def test_an_unknown_database_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="unsupported"):
        open_storage("mysql://x@y/z", tmp_path)


def test_sqlite_storage_reads_the_files_earlier_versions_wrote(tmp_path: Path) -> None:
    old = KeyStore(tmp_path / "keys.sqlite3")  # how every version so far opened it
    _, key = old.create("before")
    old.close()
    asyncio.run(ResponseStore(tmp_path / "responses.sqlite3").save(StoredResponse("resp_old", 1, 1, {}, [], [])))
    storage = open_storage(None, tmp_path)
    try:
        assert KeyStore(storage.keys).verify(key) is not None
        assert storage.responses.get("resp_old", 1) is not None
    finally:
        storage.close()
