"""The agent loop's next round starts where the last one ended, with the real engine and model.

After a server tool ran, the next generation's prompt is the last prompt, the reply the model
wrote and the appended result. The slot's KV cache already holds the first two: only the
result (and the next assistant header) is prefilled. That needs the prompt tokenized from the
tokens the model sampled, not afresh: under the call grammar SmolLM2 spells `{"` as `{` `"`,
which a fresh tokenization of the same text does not, and the whole reply was prefilled again.
The last round (calls used up) keeps describing the tools, so its prompt still extends the
last one instead of starting over with a different system prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine.llama import LlamaEngine
from runtime.engine.toolcalls.generic import tools_prompt
from runtime.events import Event, TextDelta, ToolCallEnd, Usage
from runtime.hookspecs import hookimpl
from runtime.ir import ChatRequest, Message, Sampling, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from runtime.model_source import embedded_model
from runtime.plugins import load_plugins
from runtime.tools import ToolContext, ToolOutput
from tests.conftest import FakeServer, serve_fake

pytestmark = pytest.mark.integration

ADD = ToolSpec(
    "add",
    "Add two numbers.",
    {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]},
)
ASK = "What is 17 + 25? Use the add tool."
SUFFIX_MAX = 24  # tokens of a short result's message and the next assistant header, at most


class ObservedEngine(LlamaEngine):
    """The real engine; keeps each generation's `Usage` for the test to read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usages: list[Usage] = []

    async def generate(self, request: ChatRequest) -> AsyncIterator[Event]:
        async for event in super().generate(request):
            if isinstance(event, Usage):
                self.usages.append(event)
            yield event


def new_engine() -> ObservedEngine:
    config = EngineConfig(model_path=embedded_model(), threads=2, parallel=1, ctx_size=2048)
    return ObservedEngine(config, model_id="smollm2", defaults=SamplingDefaults(temperature=0.0))


@pytest.fixture(scope="module")
def engine() -> Iterator[ObservedEngine]:
    engine = new_engine()
    yield engine
    asyncio.run(engine.close())


def run(engine: LlamaEngine, request: ChatRequest) -> tuple[str, list[ToolCallEnd], Usage]:
    async def go() -> tuple[str, list[ToolCallEnd], Usage]:
        text, calls, usage = "", [], None
        async for event in engine.generate(request):
            match event:
                case TextDelta(text=piece):
                    text += piece
                case ToolCallEnd():
                    calls.append(event)
                case Usage():
                    usage = event
        assert usage is not None
        return text, calls, usage

    return asyncio.run(go())


def first_round(seed_text: str = ASK) -> ChatRequest:
    return ChatRequest(
        "m",
        [Message("user", [TextPart(seed_text)])],
        sampling=Sampling(temperature=0.0, max_tokens=48),
        tools=[ADD],
        tool_choice=ToolChoice("function", "add"),
        cache_scope="k1",
    )


def next_round(request: ChatRequest, call: ToolCallEnd, output: str, **changes: Any) -> ChatRequest:
    """As runtime/agent.py builds it: the same message objects, the round appended."""
    messages = [
        *request.messages,
        Message("assistant", [ToolCallPart(call.id, call.name, call.arguments)]),
        Message("tool", [ToolResultPart(call.id, output, False, call.name)]),
    ]
    return dataclasses.replace(request, messages=messages, tool_choice=ToolChoice("auto"), **changes)


def test_the_next_round_prefills_only_the_result(engine: ObservedEngine) -> None:
    request = first_round()
    _, calls, first = run(engine, request)
    assert len(calls) == 1  # forced
    second = next_round(request, calls[0], "42")
    _, _, usage = run(engine, second)
    # The whole first round is read from the KV cache: its prompt and the call the model wrote.
    assert usage.cached_tokens == first.prompt_tokens + first.completion_tokens
    assert usage.prompt_tokens - usage.cached_tokens <= SUFFIX_MAX


def test_a_conversation_from_the_wire_is_tokenized_afresh(engine: ObservedEngine) -> None:
    request = first_round("What is 3 + 4? Use the add tool.")
    _, calls, _ = run(engine, request)
    continued = next_round(request, calls[0], "7")
    # The same conversation as a client sends it: new objects, the same text.
    fresh = dataclasses.replace(continued, messages=[Message(m.role, list(m.parts)) for m in continued.messages])
    text, tokens, _, _ = engine.prompt(fresh)
    assert tokens == engine.tokenize_prompt(engine.render(fresh), fresh)[0]  # as any server would, every time
    spliced_text, spliced, _, _ = engine.prompt(continued)
    assert spliced_text == text  # the same prompt...
    assert spliced != tokens  # ...spelled as the model wrote its call (the reason for all this)
    assert asyncio.run(engine.count_tokens(continued)) == len(spliced)  # what fitting counts is what is decoded


def test_the_last_round_keeps_the_tools_and_its_prefix(engine: ObservedEngine) -> None:
    request = first_round("What is 8 + 9? Use the add tool.")
    _, calls, first = run(engine, request)
    # Calls used up: no tools of its own, calls forbidden (runtime/agent.py's last round).
    last = next_round(request, calls[0], "17", tools=[], calls_forbidden=True)
    text, calls_after, usage = run(engine, last)
    assert usage.cached_tokens == first.prompt_tokens + first.completion_tokens
    assert usage.prompt_tokens - usage.cached_tokens <= SUFFIX_MAX
    assert not calls_after and not text.lstrip().startswith("{")  # still no call: the grammar forbids it
    assert tools_prompt([ADD]) in engine.prompt(last)[0]  # the tools are still described


# -- through the server: the agent loop builds its rounds that way -------------------------------------


class AddTool:
    name = "add"
    description = ADD.description
    parameters = ADD.parameters

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput(str(arguments["a"] + arguments["b"]))


class Tools:
    @hookimpl
    def register_tools(self, register: Callable[[Any], None]) -> None:
        register(AddTool())


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[FakeServer, ObservedEngine]]:
    engine = new_engine()
    tools = load_plugins([Tools()], load_entry_points=False, default_plugins=(), search_provider=None)
    with serve_fake(tmp_path, engine, tools=tools) as server:  # type: ignore[arg-type]
        yield server, engine


def test_a_server_side_turn_reads_each_round_from_the_cache(agent: tuple[FakeServer, ObservedEngine]) -> None:
    server, engine = agent
    stream = server.openai().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": ASK}],
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=64,  # per generation: the call takes about 30
        stream=True,
        extra_body={"enable_tools": True, "enabled_tools": ["add"], "session_id": "s", "max_tool_calls_per_message": 1},
    )
    results = [c.model_extra["tool_result"] for c in stream if (c.model_extra or {}).get("tool_result")]
    assert [r["name"] for r in results] == ["add"] and not results[0]["is_error"]
    first, answer = engine.usages  # the forced call, then the answer (the one call allowed is made)
    assert answer.cached_tokens == first.prompt_tokens + first.completion_tokens
    assert answer.prompt_tokens - answer.cached_tokens <= SUFFIX_MAX
