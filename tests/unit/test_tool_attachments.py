"""Rich tool output (figures, SVG, HTML tables) with a scripted engine: the shape every dialect's
`tool_result` gives the client, and what the model reads on its next turn — image inputs when
the engine has a projector (`ModelInfo.vision`), a text note when it has not."""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from runtime.config import ToolsConfig
from runtime.engine.base import ModelInfo
from runtime.engine.fake import FakeEngine
from runtime.hookspecs import hookimpl
from runtime.ir import ChatRequest, ImagePart, Message, TextPart, ToolResultPart
from runtime.plugins import load_plugins
from runtime.tools import Attachment, ToolContext, ToolOutput
from tests.conftest import FakeServer, serve_fake
from tests.unit.test_agent_loop import call, server_tools

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
HTML = "<table><tr><td>1</td></tr></table>"
HI = [{"role": "user", "content": "Plot it."}]


def png(colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class PlotTool:
    """Displays what the test put in `outputs`, as the python tool attaches figures and tables."""

    name = "plot"
    description = "Draw a figure."
    parameters = {"type": "object", "properties": {}}

    def __init__(self) -> None:
        self.attachments: list[Attachment] = [
            Attachment("image/png", b64(png())),
            Attachment("image/svg+xml", b64(SVG)),
            Attachment("text/html", b64(HTML)),
        ]

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput("[image/png image 1 attached]", attachments=list(self.attachments))


class PlotPlugin:
    def __init__(self, tool: PlotTool) -> None:
        self.tool = tool

    @hookimpl
    def register_tools(self, register: Callable[[Any], None]) -> None:
        register(self.tool)


class VisionEngine(FakeEngine):
    """A FakeEngine whose model "has a projector"; each image costs `image_tokens` positions."""

    def __init__(self, *, context_length: int = 4096, image_tokens: int = 16) -> None:
        super().__init__(context_length=context_length)
        self.image_tokens = image_tokens

    @property
    def info(self) -> ModelInfo:
        return dataclasses.replace(self._info, vision=True)

    async def count_tokens(self, request: ChatRequest) -> int:
        images = sum(isinstance(p, ImagePart) for m in request.messages for p in m.parts)
        return await super().count_tokens(request) + self.image_tokens * images


@pytest.fixture
def plot() -> PlotTool:
    return PlotTool()


def serve(tmp_path: Path, engine: FakeEngine, tool: PlotTool) -> Any:
    tools = load_plugins([PlotPlugin(tool)], load_entry_points=False, default_plugins=(), search_provider=None)
    return serve_fake(tmp_path, engine, tools=tools, tools_config=ToolsConfig(tool_timeout=5, max_iterations=3))


@pytest.fixture
def agent(tmp_path: Path, plot: PlotTool) -> Iterator[FakeServer]:
    with serve(tmp_path, FakeEngine(), plot) as server:
        yield server


def assert_attachments(attachments: list[dict[str, Any]]) -> None:
    """The documented shape: `{"type", "media_type", "data"}`, `data` always base64."""
    assert [(a["type"], a["media_type"]) for a in attachments] == [
        ("image", "image/png"),
        ("image", "image/svg+xml"),
        ("html", "text/html"),
    ]
    assert base64.b64decode(attachments[0]["data"]) == png()
    assert base64.b64decode(attachments[1]["data"]).decode() == SVG
    assert base64.b64decode(attachments[2]["data"]).decode() == HTML


# -- what the client gets, in every dialect, streamed and not --------------------------------------


def test_chat_tool_result_carries_the_attachments(agent: FakeServer) -> None:
    agent.engine.enqueue(call("plot", "{}"), "Here it is.", call("plot", "{}"), "Here it is.")
    client = agent.openai()
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True, extra_body=server_tools("plot")))
    (frame,) = [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]
    assert_attachments(frame["attachments"])
    whole = client.chat.completions.create(model="m", messages=HI, extra_body=server_tools("plot"))
    assert_attachments(whole.model_extra["tool_results"][0]["attachments"])


def test_responses_tool_result_carries_the_attachments(agent: FakeServer) -> None:
    agent.engine.enqueue(call("plot", "{}"), "Here it is.", call("plot", "{}"), "Here it is.")
    client = agent.openai()
    events = list(client.responses.create(model="m", input="Plot it.", stream=True, extra_body=server_tools("plot")))
    (frame,) = [e for e in events if e.type == "tool_result"]
    assert_attachments(frame.attachments)  # type: ignore[attr-defined]
    whole = client.responses.create(model="m", input="Plot it.", extra_body=server_tools("plot"))
    assert_attachments(whole.model_extra["tool_results"][0]["attachments"])


def test_anthropic_tool_result_carries_the_attachments(agent: FakeServer) -> None:
    agent.engine.enqueue(call("plot", "{}"), "Here it is.", call("plot", "{}"), "Here it is.")
    client = agent.anthropic()
    with client.messages.stream(model="m", max_tokens=50, messages=HI, extra_body=server_tools("plot")) as stream:
        (frame,) = [e for e in stream if e.type == "tool_result"]
    assert_attachments(frame.attachments)  # type: ignore[attr-defined]
    whole = client.messages.create(model="m", max_tokens=50, messages=HI, extra_body=server_tools("plot"))
    assert_attachments(whole.model_extra["tool_results"][0]["attachments"])


def test_the_direct_endpoint_carries_the_attachments(agent: FakeServer) -> None:
    response = httpx.post(
        f"{agent.base_url}/v1/sessions/s9/tools/plot", json={}, headers={"authorization": f"Bearer {agent.key}"}
    )
    assert response.status_code == 200
    assert_attachments(response.json()["attachments"])


# -- what the model reads next -------------------------------------------------------------------


def next_turn(server: FakeServer) -> list[Message]:
    server.engine.enqueue(call("plot", "{}"), "Red.")
    server.openai().chat.completions.create(model="m", messages=HI, extra_body=server_tools("plot"))
    return server.engine.requests[-1].messages


def test_a_text_only_model_reads_a_note(agent: FakeServer) -> None:
    messages = next_turn(agent)
    assert not any(isinstance(p, ImagePart) for m in messages for p in m.parts)
    assert messages[-1].role == "tool"
    (result,) = messages[-1].parts
    assert isinstance(result, ToolResultPart)
    assert "[2 image(s) were shown to the user]" in result.content  # the PNG and the SVG, not the table
    assert "<svg" not in result.content and "base64" not in result.content


def test_a_vision_model_gets_the_raster_images_as_image_inputs(tmp_path: Path, plot: PlotTool) -> None:
    plot.attachments.append(Attachment("image/jpeg", b64(b"not a jpeg")))  # broken: never shown to the model
    with serve(tmp_path, VisionEngine(), plot) as server:
        messages = next_turn(server)
    tool, images = messages[-2], messages[-1]
    assert tool.role == "tool" and images.role == "user"
    (result,) = tool.parts
    assert (
        isinstance(result, ToolResultPart) and "3 image(s) were shown to the user; 1 of them follow" in result.content
    )
    assert isinstance(images.parts[0], TextPart) and "plot" in images.parts[0].text
    (shown,) = [p for p in images.parts if isinstance(p, ImagePart)]
    assert (shown.data, shown.media_type) == (png(), "image/png")


def test_images_stay_in_the_transcript_of_later_rounds(tmp_path: Path, plot: PlotTool) -> None:
    with serve(tmp_path, VisionEngine(), plot) as server:
        server.engine.enqueue(call("plot", "{}"), call("plot", "{}", "call_2"), "Two plots.")
        server.openai().chat.completions.create(model="m", messages=HI, extra_body=server_tools("plot"))
        last = server.engine.requests[-1].messages
    assert sum(isinstance(p, ImagePart) for m in last for p in m.parts) == 2


def test_images_that_do_not_fit_the_context_become_the_note(tmp_path: Path, plot: PlotTool) -> None:
    # 10 000 positions per image in a 4096 context: the round fits only without the image.
    with serve(tmp_path, VisionEngine(image_tokens=10_000), plot) as server:
        messages = next_turn(server)
    assert not any(isinstance(p, ImagePart) for m in messages for p in m.parts)
    (result,) = messages[-1].parts
    assert isinstance(result, ToolResultPart) and result.content.endswith("[2 image(s) were shown to the user]")
