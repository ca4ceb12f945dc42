"""Pieces every dialect shares: body decoding, ids, data-URI images, the server-tools fields."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any, TypeVar

import msgspec

from runtime.errors import InvalidRequest
from runtime.events import ToolResult
from runtime.ir import ImagePart, ServerTools, ToolSpec
from runtime.tools import DEFAULT_SERVER_TOOLS

T = TypeVar("T")


def decode_body(body: bytes, wire_type: type[T]) -> T:
    """Decode a JSON body into a wire struct; every failure is a 400 naming the problem."""
    if not body.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=wire_type)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}") from exc
    except msgspec.DecodeError as exc:
        # msgspec words invalid UTF-8 differently across versions (and older ones raise
        # UnicodeDecodeError): tell it apart ourselves, only on this error path.
        utf8_error(body)
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    except RecursionError as exc:
        raise InvalidRequest("the request body is nested too deeply") from exc


def utf8_error(body: bytes) -> None:
    """Raise `InvalidRequest` naming the first byte that is not valid UTF-8, if there is one."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from exc


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def image_from_url(url: str, *, param: str) -> ImagePart:
    """A `data:` URI becomes inline bytes; an http(s) URL is kept for the fetcher."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidRequest("image data URIs must be base64 (data:<type>;base64,...)", param=param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"the image data URI is not valid base64: {exc}", param=param) from exc
        return ImagePart(data=data, media_type=header[5:].split(";")[0] or None, where=param)
    if url.startswith(("http://", "https://")):
        return ImagePart(url=url, where=param)
    raise InvalidRequest("image URLs must be http(s) or data: URIs", param=param)


def tool_result_body(result: ToolResult) -> dict[str, Any]:
    """A server-side tool run, as every dialect shows it (stream frames and the
    `tool_results` extension field of non-streaming bodies). `attachments` is a list of
    `{"type": "image"|"html"|"file", "media_type": ..., "data": base64}` (runtime/tools.py
    `Attachment.wire`), the same in every dialect: see docs/plugins.md."""
    return {
        "call_id": result.call_id,
        "name": result.name,
        "arguments": result.arguments,
        "output": result.output,
        "is_error": result.is_error,
        "attachments": result.attachments,
        "session_restored": result.session_restored,
    }


class _ForcibleNames(set[str]):
    """The names a `tool_choice` may force. An enabled name may be an MCP server's, which
    enables all of its `SERVER__TOOL` tools (plugins/mcp): those are forcible too."""

    def __contains__(self, name: object) -> bool:
        if super().__contains__(name):
            return True
        server, sep, _ = str(name).partition("__")
        return bool(sep) and super().__contains__(server)


def forcible_tool_names(client_tools: list[ToolSpec], server: ServerTools) -> set[str]:
    """Names a `tool_choice` may force: the client's tools, plus the server tools the request
    enables (their exact set is checked again once the server knows what is installed)."""
    names = _ForcibleNames(t.name for t in client_tools)
    if server.enabled:
        names |= set(server.names or DEFAULT_SERVER_TOOLS)
        if "terminal" in names:
            names.add("bash")
    return names


MAX_SESSION_ID = 256  # characters


def check_session_id(session_id: str | None, *, param: str = "session_id") -> None:
    """A session id must be reachable as one path segment of `/v1/sessions/{id}/...`: 1 to
    256 characters, no `/` and no control characters. Raises `InvalidRequest` (400)."""
    if session_id is None:
        return
    if not 0 < len(session_id) <= MAX_SESSION_ID:
        raise InvalidRequest(f"session_id must be 1 to {MAX_SESSION_ID} characters", param=param)
    if "/" in session_id or any(ord(c) < 32 or ord(c) == 127 for c in session_id):
        raise InvalidRequest("session_id cannot contain '/' or control characters", param=param)


def server_tools(
    enable: bool | None, names: list[str] | None, session_id: str | None, max_calls: int | None
) -> ServerTools:
    """The toolstudio extension fields, identical in every dialect; a bad `session_id` is a 400."""
    check_session_id(session_id)
    return ServerTools(
        enabled=enable,
        names=list(names or []),
        session_id=session_id,
        max_calls=max_calls,
    )
