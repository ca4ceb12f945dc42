"""`/mcp` through the real server (`toolstudio run`, the real sandboxed tools) and the `mcp`
SDK's own client (`streamable_http_client` + `ClientSession`), as Claude Code or Cursor would
connect: tools listed from the registry, a persistent python kernel per session, sessions
selected by `X-Session-Id` (or one per MCP session), figures as `ImageContent`, exceptions as
`isError`, and the API key checked before any MCP processing.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import io
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from dialects.mcp.results import attachment_block
from tests.servers import CliServer, session_tool, toolstudio

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


@asynccontextmanager
async def mcp_session(server: CliServer, key: str | None, **headers: str) -> AsyncIterator[ClientSession]:
    """An initialised MCP client session on /mcp; `key` goes in `Authorization: Bearer`."""
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60.0, read=300.0)) as client,
        streamable_http_client(f"{server.base_url}/mcp", http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def http_status_in(exc: BaseException) -> int | None:
    """The status of the `httpx.HTTPStatusError` inside `exc` (the SDK client raises it from its
    task group, so it arrives wrapped in exception groups)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    for inner in getattr(exc, "exceptions", ()):
        if (status := http_status_in(inner)) is not None:
            return status
    return None


def sse_json(body: str) -> dict[str, Any]:
    """The JSON-RPC message of a one-event SSE body (the transport's default for POST answers)."""
    data = [line[len("data:") :].strip() for line in body.splitlines() if line.startswith("data:")]
    assert len(data) == 1, body
    return json.loads(data[0])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def other_key(real_server: CliServer) -> str:
    return toolstudio("keys", "create", "--name", "mcp-other-tenant", data_dir=real_server.data_dir).strip()


async def test_lists_the_registered_tools_with_their_schemas(real_server: CliServer, real_key: str) -> None:
    async with mcp_session(real_server, real_key) as session:
        listed = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert {"python", "bash", "web_search"} <= set(listed)
    assert listed["python"].inputSchema["type"] == "object"
    assert "code" in listed["python"].inputSchema["properties"]
    assert all(tool.description for tool in listed.values())
    # A third-party plugin's tool is served too: the list comes from the registry.
    try:
        importlib.metadata.distribution("toolstudio-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        return
    assert "word_count" in listed


async def test_enabled_tools_header_narrows_the_list_and_the_calls(real_server: CliServer, real_key: str) -> None:
    async with mcp_session(real_server, real_key, **{"X-Enabled-Tools": "python, terminal"}) as session:
        names = [tool.name for tool in (await session.list_tools()).tools]
        refused = await session.call_tool("web_search", {"query": "anything"})
    assert names == ["python", "bash"]  # in the header's order; `terminal` is bash
    assert refused.isError
    assert "web_search" in text_of(refused)


def test_unknown_tool_in_the_header_is_a_400_json_rpc_error(real_server: CliServer, real_key: str) -> None:
    response = httpx.post(
        f"{real_server.base_url}/mcp",
        json=INITIALIZE,
        headers={**ACCEPT, "Authorization": f"Bearer {real_key}", "X-Enabled-Tools": "python,teleport"},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None
    assert "teleport" in body["error"]["message"]


async def test_python_state_is_kept_between_calls(real_server: CliServer, real_key: str) -> None:
    async with mcp_session(real_server, real_key, **{"X-Session-Id": "mcp-persist"}) as session:
        first = await session.call_tool("python", {"code": "x = 41"})
        second = await session.call_tool("python", {"code": "x + 1"})
    assert not first.isError, text_of(first)
    assert not second.isError, text_of(second)
    assert "42" in text_of(second)


async def test_the_session_header_selects_the_same_session_as_the_http_route(
    real_server: CliServer, real_key: str
) -> None:
    async with mcp_session(real_server, real_key, **{"X-Session-Id": "mcp-and-http"}) as session:
        await session.call_tool("python", {"code": "shared = 'set over MCP'"})
    result = session_tool(real_server.base_url, real_key, "mcp-and-http", "python", {"code": "print(shared)"})
    assert "set over MCP" in result["output"]


async def test_two_session_headers_do_not_share_state(real_server: CliServer, real_key: str) -> None:
    async with (
        mcp_session(real_server, real_key, **{"X-Session-Id": "mcp-alice"}) as alice,
        mcp_session(real_server, real_key, **{"X-Session-Id": "mcp-bob"}) as bob,
    ):
        await alice.call_tool("python", {"code": "secret = 'alice'"})
        theirs = await bob.call_tool("python", {"code": "print(secret)"})
        mine = await alice.call_tool("python", {"code": "print(secret)"})
    assert theirs.isError and "NameError" in text_of(theirs)
    assert "alice" in text_of(mine)


async def test_without_a_header_each_mcp_session_has_its_own_deleted_at_the_end(
    real_server: CliServer, real_key: str
) -> None:
    headers = {"Authorization": f"Bearer {real_key}"}
    async with mcp_session(real_server, real_key) as first, mcp_session(real_server, real_key) as second:
        await first.call_tool("python", {"code": "mine = 1"})
        theirs = await second.call_tool("python", {"code": "mine"})
        listed = httpx.get(f"{real_server.base_url}/v1/sessions", headers=headers).json()["data"]
    assert theirs.isError and "NameError" in text_of(theirs)
    defaults = [s["id"] for s in listed if s["id"].startswith("mcp-") and len(s["id"]) == len("mcp-") + 32]
    assert len(defaults) >= 2
    # The client's exit sent DELETE: its sessions go (deleting may take a moment after the reply).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = {s["id"] for s in httpx.get(f"{real_server.base_url}/v1/sessions", headers=headers).json()["data"]}
        if not left & set(defaults):
            break
        await asyncio.sleep(0.2)
    assert not left & set(defaults)


async def test_a_figure_comes_back_as_image_content(real_server: CliServer, real_key: str) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "figure = plt.figure(figsize=(1, 1))\n"
        "figure.add_axes([0, 0, 1, 1]).imshow([[(1.0, 0.0, 0.0)] * 4] * 4)\n"
        "plt.axis('off')\n"
        "plt.show()\n"
    )
    async with mcp_session(real_server, real_key, **{"X-Session-Id": "mcp-figure"}) as session:
        result = await session.call_tool("python", {"code": code})
    if "ModuleNotFoundError" in text_of(result):
        pytest.skip("the kernel's interpreter has no matplotlib (the tool environment provides it)")
    assert not result.isError, text_of(result)
    images = [block for block in result.content if isinstance(block, types.ImageContent)]
    assert len(images) == 1
    assert images[0].mimeType == "image/png"
    with Image.open(io.BytesIO(base64.b64decode(images[0].data))) as image:
        red, green, blue = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert red > 200 and green < 60 and blue < 60  # the red square that was drawn


async def test_an_exception_is_is_error(real_server: CliServer, real_key: str) -> None:
    async with mcp_session(real_server, real_key, **{"X-Session-Id": "mcp-raise"}) as session:
        result = await session.call_tool("python", {"code": "1 / 0"})
        bad_arguments = await session.call_tool("python", {"code": 5})
        fine = await session.call_tool("python", {"code": "print('still here')"})
    assert result.isError
    assert "ZeroDivisionError" in text_of(result)
    assert bad_arguments.isError and "code" in text_of(bad_arguments)
    assert not fine.isError and "still here" in text_of(fine)


@pytest.mark.parametrize("key", [None, "sk-unsloth-" + "0" * 32], ids=["missing", "wrong"])
async def test_a_missing_or_wrong_key_is_refused_with_401(real_server: CliServer, key: str | None) -> None:
    with pytest.raises(BaseException) as caught:
        async with mcp_session(real_server, key):
            pass
    assert http_status_in(caught.value) == 401, caught.value
    headers = {**ACCEPT, **({"x-api-key": key} if key else {})}
    raw = httpx.post(f"{real_server.base_url}/mcp", json=INITIALIZE, headers=headers)
    assert raw.status_code == 401
    assert raw.json()["error"]["data"]["type"] == "authentication_error"
    assert "mcp-session-id" not in raw.headers  # refused before any MCP session was made


def test_initialize_over_raw_http(real_server: CliServer, real_key: str) -> None:
    url = f"{real_server.base_url}/mcp"
    auth = {"x-api-key": real_key}
    response = httpx.post(url, json=INITIALIZE, headers={**ACCEPT, **auth})
    assert response.status_code == 200, response.text
    mcp_session_id = response.headers["mcp-session-id"]
    message = sse_json(response.text) if "event-stream" in response.headers["content-type"] else response.json()
    assert message["jsonrpc"] == "2.0" and message["id"] == 1
    result = message["result"]
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "toolstudio"
    assert "tools" in result["capabilities"]
    deleted = httpx.delete(url, headers={**auth, "mcp-session-id": mcp_session_id})
    assert deleted.status_code == 200


def test_another_key_cannot_use_an_mcp_session(real_server: CliServer, real_key: str, other_key: str) -> None:
    url = f"{real_server.base_url}/mcp"
    opened = httpx.post(url, json=INITIALIZE, headers={**ACCEPT, "x-api-key": real_key})
    mcp_session_id = opened.headers["mcp-session-id"]
    list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    stolen = httpx.post(
        url,
        json=list_tools,
        headers={
            **ACCEPT,
            "x-api-key": other_key,
            "mcp-session-id": mcp_session_id,
            "mcp-protocol-version": "2025-06-18",
        },
    )
    assert stolen.status_code == 404  # as if the session did not exist
    httpx.delete(url, headers={"x-api-key": real_key, "mcp-session-id": mcp_session_id})


@pytest.mark.parametrize(
    ("media_type", "payload", "expected"),
    [
        ("image/png", b"\x89PNG...", types.ImageContent),
        ("text/html", b"<table></table>", types.TextResourceContents),
        ("image/svg+xml", b"<svg/>", types.TextResourceContents),
        ("application/octet-stream", b"\x00\x01", types.BlobResourceContents),
        ("text/plain", b"\xff\xfe not utf-8", types.BlobResourceContents),
    ],
)
def test_attachments_map_to_mcp_content(media_type: str, payload: bytes, expected: type) -> None:
    data = base64.b64encode(payload).decode()
    block = attachment_block({"type": "file", "media_type": media_type, "data": data}, "toolstudio://tool-results/c/0")
    inner = block.resource if isinstance(block, types.EmbeddedResource) else block
    assert isinstance(inner, expected)
    assert inner.mimeType == media_type
    if isinstance(inner, types.TextResourceContents):
        assert inner.text == payload.decode()
    elif isinstance(inner, types.BlobResourceContents):
        assert base64.b64decode(inner.blob) == payload
