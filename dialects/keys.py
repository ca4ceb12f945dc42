"""Key management over HTTP, for the web page's Settings → API (OpenAI-style bodies and errors).

GET /v1/me               any valid key: `{"name", "prefix", "admin"}` of the key that asks
GET /v1/keys             admin: `{"object": "list", "data": [record, ...]}`, oldest first
POST /v1/keys            admin: body `{"name"?: str, "admin"?: bool}` -> 201, the record plus
                         `"key"` (the only time the secret is shown)
DELETE /v1/keys/{id}     admin: the record with `revoked_at` set; the key is refused from the
                         next request on (keys are checked against the database every time)

A record is `{"id", "object": "api_key", "name", "prefix", "admin", "created_at",
"last_used_at", "revoked_at"}`, times in unix seconds or null. A key that is not an admin gets
403 `permission_error` on the three admin routes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, delete, get, post
from litestar.params import FromPath

from dialects.common import decode_body
from runtime.errors import InvalidRequest, NotFound, PermissionDenied
from runtime.http import api_key_of, runtime_of
from runtime.keys import KeyRecord, KeyStoreError, LastAdminKey, StorageUnavailable

MAX_NAME_CHARS = 64


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    admin: bool = False


def record_body(record: KeyRecord) -> dict[str, Any]:
    stamp = lambda t: None if t is None else int(t)  # noqa: E731
    return {
        "id": record.id,
        "object": "api_key",
        "name": record.name,
        "prefix": record.prefix,
        "admin": record.admin,
        "created_at": int(record.created),
        "last_used_at": stamp(record.last_used),
        "revoked_at": stamp(record.revoked),
    }


def _admin(request: Request[Any, Any, Any]) -> KeyRecord:
    me = api_key_of(request)
    if not me.admin:
        raise PermissionDenied("only an admin key may manage keys (`toolstudio keys create --admin` makes one)")
    return me


@get("/v1/me")
async def who_am_i(request: Request[Any, Any, Any]) -> dict[str, Any]:
    me = api_key_of(request)
    return {"name": me.name, "prefix": me.prefix, "admin": me.admin}


@get("/v1/keys")
async def list_keys(request: Request[Any, Any, Any]) -> dict[str, Any]:
    _admin(request)
    records = await asyncio.to_thread(runtime_of(request).keys.list)  # a database read: off the event loop
    return {"object": "list", "data": [record_body(r) for r in records]}


@post("/v1/keys", status_code=201)
async def create_key(request: Request[Any, Any, Any]) -> dict[str, Any]:
    _admin(request)
    body = decode_body(await request.body(), CreateKey)
    name = body.name.strip() if body.name is not None else None
    if name is not None and not name:
        raise InvalidRequest("a key name cannot be empty", param="name")
    if name is not None and (len(name) > MAX_NAME_CHARS or not name.isprintable()):
        raise InvalidRequest(f"a key name is at most {MAX_NAME_CHARS} printable characters", param="name")
    keys = runtime_of(request).keys
    if name is not None and any(r.name == name and r.revoked is None for r in await asyncio.to_thread(keys.list)):
        raise InvalidRequest(f"a key named {name!r} already exists", param="name")
    try:
        record, secret = await asyncio.to_thread(keys.create, name, body.admin)
    except StorageUnavailable:
        raise
    except KeyStoreError as exc:  # the same name, created meanwhile by another front-end or the CLI
        raise InvalidRequest(str(exc), param="name") from exc
    return {**record_body(record), "key": secret}


@delete("/v1/keys/{key_id:str}", status_code=200)
async def revoke_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> dict[str, Any]:
    _admin(request)
    keys = runtime_of(request).keys
    records = await asyncio.to_thread(keys.list)
    record = next((r for r in records if str(r.id) == key_id), None)
    if record is None:
        raise NotFound(f"no key with id {key_id!r}")
    if record.revoked is not None:
        return record_body(record)  # revoking twice changes nothing
    try:
        # The database checks and revokes in one transaction: two admins revoking each other at
        # once (here or on another front-end) cannot both succeed.
        return record_body(await asyncio.to_thread(keys.revoke_id, record.id, keep_an_admin=True))
    except LastAdminKey as exc:  # nobody could manage keys from the page any more (the CLI still could)
        raise InvalidRequest("this is the last active admin key: create another admin key first", param="id") from exc
    except StorageUnavailable:
        raise
    except KeyStoreError as exc:  # revoked meanwhile by another request or the CLI
        raise NotFound(str(exc)) from exc


route_handlers = [who_am_i, list_keys, create_key, revoke_key]
