"""MCP tool results as tool outputs (plugins/mcp/results.py), and tool names."""

from __future__ import annotations

import base64
import json

from mcp import types

from plugins.mcp.results import EMPTY, to_output
from plugins.mcp.server import tool_name

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really").decode()


def result(
    *content: types.ContentBlock, structured: dict[str, object] | None = None, error: bool = False
) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), structuredContent=structured, isError=error)


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def test_text_blocks_join_and_is_error_carries_over() -> None:
    out = to_output(result(text("line one"), text("line two"), error=True))
    assert (out.text, out.is_error, out.attachments) == ("line one\nline two", True, [])


def test_an_image_is_an_attachment_with_a_line_saying_so() -> None:
    out = to_output(result(text("a plot"), types.ImageContent(type="image", data=PNG, mimeType="image/png")))
    [attachment] = out.attachments
    assert (attachment.kind, attachment.media_type, attachment.data) == ("image", "image/png", PNG)
    assert out.text == "a plot\n[image attached: image/png]"


def test_audio_and_binary_resources_are_file_attachments() -> None:
    audio = types.AudioContent(type="audio", data="UklGRg==", mimeType="audio/wav")
    blob = types.EmbeddedResource(
        type="resource", resource=types.BlobResourceContents(uri="file:///a.bin", blob="AAEC", mimeType=None)
    )
    out = to_output(result(audio, blob))
    assert [(a.kind, a.media_type) for a in out.attachments] == [
        ("file", "audio/wav"),
        ("file", "application/octet-stream"),
    ]
    assert "file:///a.bin" in out.text


def test_text_resources_and_links_are_text() -> None:
    embedded = types.EmbeddedResource(
        type="resource",
        resource=types.TextResourceContents(uri="file:///notes.md", text="# Notes", mimeType="text/markdown"),
    )
    link = types.ResourceLink(
        type="resource_link", name="report", uri="https://example.org/r.pdf", description="the report"
    )
    out = to_output(result(embedded, link))
    assert (
        out.text
        == "[resource file:///notes.md]\n# Notes\n[resource link report <https://example.org/r.pdf>: the report]"
    )


def test_structured_content_is_shown_once() -> None:
    value = {"value": 21.5, "unit": "celsius"}
    echoed = to_output(result(text(json.dumps(value)), structured=value))
    assert json.loads(echoed.text) == value  # the text block already says it
    alone = to_output(result(structured=value))
    assert json.loads(alone.text) == value
    different = to_output(result(text("see the data"), structured=value))
    assert different.text.startswith("see the data\n") and json.loads(different.text.split("\n", 1)[1]) == value


def test_fastmcp_wrapped_results_are_not_repeated() -> None:
    # FastMCP returns a plain value as text *and* as {"result": value}.
    assert to_output(result(text("count=3"), structured={"result": "count=3"})).text == "count=3"
    assert to_output(result(text("7"), structured={"result": 7})).text == "7"
    listed = to_output(result(text("a"), text("b"), structured={"result": ["a", "b"]}))
    assert listed.text == "a\nb"


def test_an_empty_result_says_so() -> None:
    assert to_output(result()).text == EMPTY
    assert to_output(result(error=True)).is_error


def test_tool_names_are_server__tool_and_always_valid() -> None:
    assert tool_name("time", "get_current_time") == "time__get_current_time"
    assert tool_name("fs", "read.file/v2") == "fs__read_file_v2"
    long_a, long_b = tool_name("server", "x" * 80 + "a"), tool_name("server", "x" * 80 + "b")
    assert len(long_a) == len(long_b) == 64 and long_a != long_b and long_a.startswith("server__xxx")
