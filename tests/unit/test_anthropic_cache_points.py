"""Anthropic `cache_control` breakpoints -> the IR `CachePoint` (where the prefix to cache
ends), and the usage split the dialect renders from the engine's counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from dialects.anthropic.adapter import cache_ttl, to_ir
from dialects.anthropic.protocol import CreateMessageRequest
from dialects.anthropic.render import usage_body
from runtime.engine.fake import FakeEngine
from runtime.errors import InvalidRequest
from runtime.events import PromptUsage, TextDelta, Usage
from runtime.ir import CachePoint
from tests.conftest import serve_fake

MARK = {"type": "ephemeral"}


def request(**body: Any) -> CreateMessageRequest:
    base = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    return msgspec.convert({**base, **body}, CreateMessageRequest)


def test_no_breakpoint_no_point() -> None:
    assert to_ir(request()).cache_point is None
    assert cache_ttl(request()) == "5m"


def test_a_tool_breakpoint_counts_tools_only() -> None:
    tool = {"name": "a", "input_schema": {"type": "object"}}
    wire = request(tools=[{**tool, "cache_control": MARK}, {**tool, "name": "b"}])
    assert to_ir(wire).cache_point == CachePoint(tools=1, messages=0)


def test_a_system_breakpoint_counts_the_system_message() -> None:
    wire = request(system=[{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": MARK}])
    chat = to_ir(wire)
    assert chat.cache_point == CachePoint(messages=1)
    assert chat.messages[0].role == "system"


def test_a_message_breakpoint_cuts_inside_a_turn() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "text", "text": "reply", "cache_control": MARK}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a", "cache_control": MARK},
                {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"type": "text", "text": "c"},
            ],
        },
    ]
    wire = request(system="sys", messages=messages)
    chat = to_ir(wire)
    # system, user, assistant, then the last user turn cut after its second block
    assert chat.cache_point == CachePoint(messages=4, parts=2)
    assert [p.text for p in chat.messages[3].parts[:2]] == ["a", "b"]  # type: ignore[union-attr]
    assert cache_ttl(wire) == "1h"


def test_a_breakpoint_on_an_assistant_tool_use_is_an_ended_turn_not_a_prefill() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}, "cache_control": MARK}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    tools = [{"name": "w", "input_schema": {"type": "object"}}]
    assert to_ir(request(messages=messages, tools=tools)).cache_point == CachePoint(messages=2, parts=1)


def test_top_level_cache_control_is_the_whole_conversation() -> None:
    wire = request(cache_control=MARK, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert to_ir(wire).cache_point == CachePoint(messages=1)


def test_more_than_four_breakpoints_is_a_400() -> None:
    block = {"type": "text", "text": "x", "cache_control": MARK}
    with pytest.raises(InvalidRequest, match="maximum of 4"):
        to_ir(request(system=[block] * 4, cache_control=MARK))


def test_usage_split() -> None:
    body = usage_body(Usage(prompt_tokens=100, completion_tokens=3, cached_tokens=20, cache_write_tokens=70), "1h")
    assert (body["input_tokens"], body["cache_read_input_tokens"], body["cache_creation_input_tokens"]) == (10, 20, 70)
    assert body["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 70}


def test_stream_and_body_carry_the_engines_counts(tmp_path: Path) -> None:
    script = [PromptUsage(100, 20, 70), TextDelta("x"), Usage(100, 1, 20, 70)]
    engine = FakeEngine()
    engine.enqueue(script, script)
    with serve_fake(tmp_path, engine) as server:
        client = server.anthropic()
        body = client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as stream:
            start = next(iter(stream))
            final = stream.get_final_message()
    for usage in (body.usage, start.message.usage, final.usage):  # type: ignore[union-attr]
        assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (10, 20, 70)
