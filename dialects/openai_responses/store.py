"""Stored responses (`store: true`), in the storage backend the server runs with (runtime/storage:
SQLite under the data directory, or the PostgreSQL database front-ends share).

Each row keeps what the three read paths need: the response object (GET), the turn's input
items (GET .../input_items), and the conversation as IR messages up to and including this
response (`previous_response_id`). Rows belong to the API key that created them; another
key sees a 404, exactly as if the id did not exist.

Backend calls block; they run in a worker thread. Nothing is cached, so a response stored by
one front-end can be read, continued or deleted through any other at once.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.ir import ImagePart, Message, Part, ReasoningPart, TextPart, ToolCallPart, ToolResultPart
from runtime.storage import RESPONSES_FILE, ResponseBackend, ResponseRow
from runtime.storage.sqlite import SqliteResponses

STORE_FILE = RESPONSES_FILE  # the SQLite file under the data directory (the default backend)


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
    """Async save/get/delete of `StoredResponse`s over a `ResponseBackend`.

    `ResponseStore(path)` uses the SQLite file `path`; `ResponseStore(backend)` any backend
    (`runtime.storage.open_storage(...).responses`). Database failures raise
    `runtime.storage.StorageUnavailable` (a 503)."""

    def __init__(self, source: Path | ResponseBackend) -> None:
        self.backend: ResponseBackend = SqliteResponses(source) if isinstance(source, Path) else source

    # The JSON work (base64 of images included) runs in the worker thread with the I/O.

    def _put(self, record: StoredResponse) -> None:
        conversation = messages_to_json(record.conversation)
        row = ResponseRow(record.id, record.key_id, record.created_at, record.body, record.input_items, conversation)
        self.backend.put(row)

    def _get(self, response_id: str, key_id: int) -> StoredResponse | None:
        row = self.backend.get(response_id, key_id)
        if row is None:
            return None
        conversation = messages_from_json(row.conversation)
        return StoredResponse(row.id, row.key_id, row.created_at, row.body, row.input_items, conversation)

    async def save(self, record: StoredResponse) -> None:
        await asyncio.to_thread(self._put, record)

    async def get(self, response_id: str, key_id: int) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id, key_id)

    async def delete(self, response_id: str, key_id: int) -> bool:
        return await asyncio.to_thread(self.backend.delete, response_id, key_id)
