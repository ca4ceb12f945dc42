"""Key management over HTTP (/v1/me, /v1/keys) on a real server (FakeEngine), driven with the
`openai` SDK and raw HTTP; admin keys in the key store and the CLI; the upgrade of a key
database from before admin keys."""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from runtime.engine.fake import FakeEngine
from runtime.keys import KeyStore
from tests.conftest import FakeServer, serve_fake
from tests.servers import cli


@pytest.fixture
def server(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, fake_engine) as fake:
        yield fake


@pytest.fixture
def admin(server: FakeServer) -> str:
    return server.keys.create("boss", admin=True)[1]


def call(server: FakeServer, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method, f"{server.base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_me_says_who_the_key_is(server: FakeServer, admin: str) -> None:
    assert call(server, admin, "GET", "/v1/me").json() == {"name": "boss", "prefix": admin[:19], "admin": True}
    assert call(server, server.key, "GET", "/v1/me").json()["admin"] is False


def test_an_admin_creates_a_key_the_sdk_uses_until_it_is_revoked(server: FakeServer, admin: str) -> None:
    created = call(server, admin, "POST", "/v1/keys", {"name": "ci"})
    assert created.status_code == 201
    record = created.json()
    key = record.pop("key")
    assert key.startswith("sk-unsloth-") and key[:19] == record["prefix"]
    assert record["name"] == "ci" and record["admin"] is False and record["object"] == "api_key"
    assert record["revoked_at"] is None and record["last_used_at"] is None
    assert abs(record["created_at"] - time.time()) < 60

    client = server.openai(key)
    server.engine.enqueue("hello there")
    reply = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "hello there"

    listed = {r["name"]: r for r in call(server, admin, "GET", "/v1/keys").json()["data"]}
    assert set(listed) == {"test", "boss", "ci"}
    assert listed["ci"]["last_used_at"] is not None  # the SDK call above
    assert "key" not in listed["ci"]  # the secret is never listed

    revoked = call(server, admin, "DELETE", f"/v1/keys/{record['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    # Refused at once: no cache keeps a revoked key alive.
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    # Revoking again changes nothing.
    again = call(server, admin, "DELETE", f"/v1/keys/{record['id']}")
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_a_new_admin_key_may_manage_keys(server: FakeServer, admin: str) -> None:
    key = call(server, admin, "POST", "/v1/keys", {"admin": True}).json()["key"]
    assert call(server, key, "GET", "/v1/keys").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v1/keys", None), ("POST", "/v1/keys", {"name": "sneaky"}), ("DELETE", "/v1/keys/1", None)],
)
def test_a_non_admin_key_gets_403(server: FakeServer, admin: str, method: str, path: str, body: Any) -> None:
    denied = call(server, server.key, method, path, body)
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert {r.name for r in server.keys.list() if r.revoked is None} == {"test", "boss"}  # nothing changed


def test_the_sdk_sees_403_as_permission_denied(server: FakeServer) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        server.openai().get("/keys", cast_to=object)


def test_without_a_valid_key_the_key_routes_are_401(server: FakeServer) -> None:
    assert httpx.get(f"{server.base_url}/v1/me").status_code == 401
    assert call(server, "sk-unsloth-" + "0" * 32, "GET", "/v1/keys").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 65},
        {"name": "line\nbreak"},
        {"name": "sk-unsloth-0123abcd"},  # would shadow that key's prefix in `keys revoke`
        {"name": 5},
        {"admin": "yes"},
        {"unknown": 1},
        [],
        "not an object",
    ],
)
def test_bad_create_bodies_are_400(server: FakeServer, admin: str, body: Any) -> None:
    refused = call(server, admin, "POST", "/v1/keys", body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["type"] == "invalid_request_error"


def test_a_duplicate_name_is_400_and_a_revoked_name_is_free(server: FakeServer, admin: str) -> None:
    first = call(server, admin, "POST", "/v1/keys", {"name": "dup"}).json()
    assert call(server, admin, "POST", "/v1/keys", {"name": "dup"}).status_code == 400
    call(server, admin, "DELETE", f"/v1/keys/{first['id']}")
    assert call(server, admin, "POST", "/v1/keys", {"name": "dup"}).status_code == 201


def test_unknown_key_ids_are_404(server: FakeServer, admin: str) -> None:
    for key_id in ("999", "abc", "-1"):
        missing = call(server, admin, "DELETE", f"/v1/keys/{key_id}")
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["type"] == "not_found_error"


def test_the_last_admin_key_cannot_be_revoked(server: FakeServer, admin: str) -> None:
    me = next(r for r in server.keys.list() if r.name == "boss")
    refused = call(server, admin, "DELETE", f"/v1/keys/{me.id}")
    assert refused.status_code == 400
    assert call(server, admin, "GET", "/v1/me").status_code == 200  # still works
    second = call(server, admin, "POST", "/v1/keys", {"name": "deputy", "admin": True}).json()
    assert call(server, admin, "DELETE", f"/v1/keys/{me.id}").status_code == 200
    assert call(server, admin, "GET", "/v1/me").status_code == 401
    assert call(server, second["key"], "GET", "/v1/keys").status_code == 200


def test_two_admins_revoking_each_other_at_once_leave_one(server: FakeServer, admin: str) -> None:
    # Checked, then revoked, in two steps, both DELETEs once saw the other admin still active
    # and both succeeded: no admin key left. Several rounds, since it is a race.
    survivor = admin
    for round_ in range(6):
        new = call(server, survivor, "POST", "/v1/keys", {"name": f"deputy-{round_}", "admin": True}).json()
        ids = {r.name: r.id for r in server.keys.list() if r.admin and r.revoked is None}
        assert len(ids) == 2, ids
        old_id = next(i for name, i in ids.items() if name != new["name"])
        start = threading.Barrier(2)

        def revoke(key: str, key_id: int, start: threading.Barrier = start) -> int:
            start.wait()
            return call(server, key, "DELETE", f"/v1/keys/{key_id}").status_code

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(revoke, (survivor, new["key"]), (new["id"], old_id)))
        active = [r for r in server.keys.list() if r.admin and r.revoked is None]
        assert len(active) == 1, (statuses, active)
        assert statuses[0] == 200 and statuses[1] in (400, 401), statuses  # 401: its key went first
        survivor = survivor if active[0].id == old_id else new["key"]


# -- the key store and the CLI -----------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, digest TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, last_used REAL, revoked REAL
)
"""


def test_a_database_from_before_admin_keys_makes_its_oldest_active_key_admin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.sqlite3"
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    rows = [("gone", "sk-unsloth-0", "d0", 1.0, 5.0), ("first", "sk-unsloth-1", "d1", 2.0, None)]
    rows.append(("second", "sk-unsloth-2", "d2", 3.0, None))
    db.executemany("INSERT INTO api_keys (name, prefix, digest, created, revoked) VALUES (?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    with caplog.at_level(logging.INFO):
        store = KeyStore(path)
    try:
        assert {r.name: r.admin for r in store.list()} == {"gone": False, "first": True, "second": False}
        assert "first" in caplog.text
    finally:
        store.close()
    store = KeyStore(path)  # opening it again changes nothing
    try:
        assert [r.name for r in store.list() if r.admin] == ["first"]
    finally:
        store.close()


def test_cli_creates_admin_keys_and_lists_roles(tmp_path: Path) -> None:
    boss = cli("keys", "create", "--name", "boss", "--admin", home=tmp_path)
    assert boss.returncode == 0, boss.stderr
    assert cli("keys", "create", "--name", "worker", home=tmp_path).returncode == 0
    listing = cli("keys", "list", home=tmp_path).stdout.splitlines()
    assert "ROLE" in listing[0]
    roles = {line.split()[0]: line.split()[-2] for line in listing[1:]}
    assert roles == {"boss": "admin", "worker": "user"}
    store = KeyStore(tmp_path / "keys.sqlite3")
    try:
        verified = store.verify(boss.stdout.strip())
        assert verified is not None and verified.admin
    finally:
        store.close()
