from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from runtime.keys import KeyStore, KeyStoreError


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys.sqlite3")


def test_created_keys_have_the_documented_format_and_verify(store: KeyStore) -> None:
    _, key = store.create("alice")
    assert re.fullmatch(r"sk-unsloth-[0-9a-f]{32}", key)
    verified = store.verify(key)
    assert verified is not None and verified.name == "alice"
    assert store.verify(key[:-1] + ("0" if key[-1] != "0" else "1")) is None
    assert store.verify("not-a-key") is None


def test_only_a_digest_is_stored(store: KeyStore, tmp_path: Path) -> None:
    _, key = store.create("alice")
    dump = "\n".join(sqlite3.connect(tmp_path / "keys.sqlite3").iterdump())
    assert key not in dump
    assert key[len("sk-unsloth-") :] not in dump


def test_revoke_by_name_or_prefix(store: KeyStore) -> None:
    _, a = store.create("alice")
    _, b = store.create("bob")
    store.revoke("alice")
    assert store.verify(a) is None
    assert store.verify(b) is not None
    store.revoke(b[:20])
    assert store.verify(b) is None
    with pytest.raises(KeyStoreError):
        store.revoke("alice")  # already revoked
    with pytest.raises(KeyStoreError):
        store.revoke("sk-unsloth-")  # too short to name one key


def test_duplicate_names_are_refused(store: KeyStore) -> None:
    store.create("same")
    with pytest.raises(KeyStoreError, match="already exists"):
        store.create("same")


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_names_are_refused(store: KeyStore, name: str) -> None:
    with pytest.raises(KeyStoreError, match="empty"):
        store.create(name)
    assert store.list() == []


def test_a_revoked_keys_name_can_be_reused(store: KeyStore) -> None:
    _, old = store.create("ci")
    store.revoke("ci")
    _, new = store.create("ci")
    assert store.verify(new) is not None and store.verify(old) is None
    names = {r.name: r.revoked is not None for r in store.list()}
    assert names["ci"] is False
    assert [revoked for name, revoked in names.items() if name != "ci"] == [True]  # the old one, renamed


def test_last_used_is_recorded(store: KeyStore) -> None:
    _, key = store.create()
    assert store.list()[0].last_used is None
    store.verify(key)
    assert store.list()[0].last_used is not None


def test_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KeyStoreError, match="cannot open the key database"):
        KeyStore(blocker / "keys.sqlite3")
