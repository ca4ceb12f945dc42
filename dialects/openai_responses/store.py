"""Stored responses (`store: true`) in SQLite under the data directory.

Each row keeps what the three read paths need: the response object (GET), the turn's input
items (GET .../input_items), and the conversation as IR messages up to and including this
response (`previous_response_id`). Rows belong to the API key that created them; another
key sees a 404, exactly as if the id did not exist.

SQLite calls run in a worker thread, each on its own short-lived connection: no handle to
close at shutdown, and WAL lets readers proceed while a writer commits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.ir import ImagePart, Message, Part, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

STORE_FILE = "responses.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    key_id: int
    created_at: int
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[Message]


# -- IR messages <-> JSON -------------------------------------------------------------------------


def _part_to_json(part: Part) -> dict[str, Any]:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ReasoningPart(text=text):
            return {"type": "reasoning", "text": text}
        case ToolCallPart(id=call_id, name=name, arguments=arguments):
            return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}
        case ToolResultPart(call_id=call_id, content=content, is_error=is_error, name=name):
            return {"type": "tool_result", "call_id": call_id, "content": content, "is_error": is_error, "name": name}
        case ImagePart(data=data, url=url, media_type=media_type):
            encoded = base64.b64encode(data).decode() if data is not None else None
            return {"type": "image", "data": encoded, "url": url, "media_type": media_type}
    raise TypeError(f"unknown message part {part!r}")


def _part_from_json(raw: dict[str, Any]) -> Part:
    match raw["type"]:
        case "text":
            return TextPart(raw["text"])
        case "reasoning":
            return ReasoningPart(raw["text"])
        case "tool_call":
            return ToolCallPart(raw["id"], raw["name"], raw["arguments"])
        case "tool_result":
            return ToolResultPart(raw["call_id"], raw["content"], is_error=raw["is_error"], name=raw["name"])
        case "image":
            data = base64.b64decode(raw["data"]) if raw["data"] is not None else None
            return ImagePart(data=data, url=raw["url"], media_type=raw["media_type"])
    raise ValueError(f"unknown stored part type {raw['type']!r}")


def messages_to_json(messages: list[Message]) -> list[dict[str, Any]]:
    return [{"role": m.role, "parts": [_part_to_json(p) for p in m.parts]} for m in messages]


def messages_from_json(raw: list[dict[str, Any]]) -> list[Message]:
    return [Message(m["role"], [_part_from_json(p) for p in m["parts"]]) for m in raw]


# -- the store ----------------------------------------------------------------------------------


class ResponseStore:
    def __init__(self, path: Path) -> None:
        self.path = path
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
                    conn.execute(_SCHEMA)
                    conn.commit()
                    self._ready = True
        return conn

    # Blocking versions, run in a worker thread by the async API below.

    def _save(self, record: StoredResponse) -> None:
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.key_id,
                        record.created_at,
                        json.dumps(record.body),
                        json.dumps(record.input_items),
                        json.dumps(messages_to_json(record.conversation)),
                    ),
                )
        finally:
            conn.close()

    def _get(self, response_id: str, key_id: int) -> StoredResponse | None:
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT created_at, body, input_items, conversation FROM responses WHERE id = ? AND key_id = ?",
                (response_id, key_id),
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        created_at, body, input_items, conversation = row
        return StoredResponse(
            id=response_id,
            key_id=key_id,
            created_at=created_at,
            body=json.loads(body),
            input_items=json.loads(input_items),
            conversation=messages_from_json(json.loads(conversation)),
        )

    def _delete(self, response_id: str, key_id: int) -> bool:
        conn = self._connect()
        try:
            with conn:
                cursor = conn.execute("DELETE FROM responses WHERE id = ? AND key_id = ?", (response_id, key_id))
            return cursor.rowcount > 0
        finally:
            conn.close()

    async def save(self, record: StoredResponse) -> None:
        await asyncio.to_thread(self._save, record)

    async def get(self, response_id: str, key_id: int) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id, key_id)

    async def delete(self, response_id: str, key_id: int) -> bool:
        return await asyncio.to_thread(self._delete, response_id, key_id)
