"""Anthropic prompt-cache usage with real counts: `cache_control` breakpoints decide what is
reported as written to the cache (`cache_creation_input_tokens`), the KV prefix cache decides
what was read (`cache_read_input_tokens`), and `input_tokens` is the rest; the three add up
to the prompt `count_tokens` measures. Through the `anthropic` SDK against the real server.

The module runs its own server, so its first request finds the KV cache empty."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Usage

from tests.servers import CliServer, toolstudio

pytestmark = pytest.mark.integration

NONCE = uuid.uuid4().hex  # no earlier prompt can share these prefixes
LONG_SYSTEM = f"[{NONCE}] You are a careful assistant. " + "Answer briefly and exactly. " * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    home = tmp_path_factory.mktemp("cache-usage")
    server = CliServer(home, args=("--threads", "2", "--parallel", "2", "--temp", "0")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(server: CliServer) -> str:
    return toolstudio("keys", "create", data_dir=server.data_dir).strip()


@pytest.fixture
def claude(server: CliServer, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def split(usage: Usage) -> tuple[int, int, int]:
    """(input, cache read, cache creation)"""
    return usage.input_tokens, usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0


def counted(claude: anthropic.Anthropic, **body: Any) -> int:
    return claude.messages.count_tokens(model="m", **body).input_tokens


def test_a_breakpoint_is_written_once_then_read(claude: anthropic.Anthropic) -> None:
    # First in the module: nothing is cached yet on this server.
    system: Any = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    question: Any = [{"role": "user", "content": "What is 2 + 2?"}]
    total = counted(claude, system=system, messages=question)

    first = claude.messages.create(model="m", max_tokens=4, system=system, messages=question).usage
    fresh, read, written = split(first)
    assert read == 0
    assert written > 200  # the long system prompt, up to its breakpoint
    assert 0 < fresh < 30  # the question and the template's turn markers after the breakpoint
    assert fresh + read + written == total
    assert first.cache_creation is not None
    assert (first.cache_creation.ephemeral_5m_input_tokens, first.cache_creation.ephemeral_1h_input_tokens) == (
        written,
        0,
    )

    again = claude.messages.create(model="m", max_tokens=4, system=system, messages=question).usage
    fresh, read, written_again = split(again)
    assert written_again == 0
    assert read >= written  # the whole breakpoint prefix (and here the question too) came from cache
    assert fresh + read == total

    # Another question after the same cached system prompt: read, not written again.
    other: Any = [{"role": "user", "content": "Name a primary colour, please."}]
    total = counted(claude, system=system, messages=other)
    usage = claude.messages.create(model="m", max_tokens=4, system=system, messages=other).usage
    fresh, read, written_now = split(usage)
    assert written_now == 0 and read >= written and fresh > 0
    assert fresh + read == total


def test_stream_and_body_report_the_same_split(claude: anthropic.Anthropic) -> None:
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"{NONCE} stream. " + "Remember this sentence. " * 20},
                {"type": "text", "text": "Now say hi.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            ],
        }
    ]
    total = counted(claude, messages=messages)
    with claude.messages.stream(model="m", max_tokens=4, messages=messages) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = events[0]
    assert start.type == "message_start"
    fresh, read, written = split(start.message.usage)
    assert written > 100 and fresh + read + written == total
    assert start.message.usage.cache_creation is not None
    assert start.message.usage.cache_creation.ephemeral_1h_input_tokens == written
    assert split(final.usage) == (fresh, read, written)  # message_delta agrees with message_start

    body = claude.messages.create(model="m", max_tokens=4, messages=messages).usage
    assert split(body)[2] == 0 and sum(split(body)) == total  # now it is all in the cache


def test_a_growing_conversation_writes_only_its_new_turns(claude: anthropic.Anthropic) -> None:
    def turn(text: str) -> Any:
        return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}

    conversation: list[Any] = [turn(f"{NONCE} growth. Tell me about the moon in one sentence.")]
    first = claude.messages.create(model="m", max_tokens=12, messages=conversation)
    fresh, _, written = split(first.usage)
    assert written > 0 and fresh == 1  # the breakpoint is on the last block: all but the last token

    # The next turn, as clients send it: the breakpoint moves to the newest block.
    plain: Any = {"role": "user", "content": conversation[0]["content"][0]["text"]}
    conversation = [plain, {"role": "assistant", "content": first.content[0].text}]  # type: ignore[union-attr]
    conversation.append(turn("And about the sun?"))
    total = counted(claude, messages=conversation)
    usage = claude.messages.create(model="m", max_tokens=4, messages=conversation).usage
    fresh, read, written_now = split(usage)
    assert read >= written  # the first turn's prefix
    assert written_now > 0  # the reply and the new question: new to the cache
    assert fresh + read + written_now == total


def test_without_cache_control_nothing_counts_as_written(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": f"{NONCE} plain. " + "Some words to cache. " * 10}]
    total = counted(claude, messages=messages)
    first = claude.messages.create(model="m", max_tokens=4, messages=messages).usage
    again = claude.messages.create(model="m", max_tokens=4, messages=messages).usage
    assert split(first)[2] == split(again)[2] == 0
    # The server still caches every prefix, and says what it read.
    assert split(again)[1] > split(first)[1]
    assert sum(split(first)) == sum(split(again)) == total


def test_top_level_cache_control_caches_the_whole_prompt(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": f"{NONCE} automatic. Cache all of this, please."}]
    total = counted(claude, messages=messages)
    first = claude.messages.create(model="m", max_tokens=4, messages=messages, cache_control={"type": "ephemeral"})
    fresh, read, written = split(first.usage)
    assert fresh == 1 and written > 0 and fresh + read + written == total
    again = claude.messages.create(model="m", max_tokens=4, messages=messages, cache_control={"type": "ephemeral"})
    assert split(again.usage) == (1, total - 1, 0)


def test_a_breakpoint_on_a_tool(claude: anthropic.Anthropic) -> None:
    tools: Any = [
        {
            "name": "lookup",
            "description": f"{NONCE} Look a word up in the dictionary. " * 5,
            "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    messages: Any = [{"role": "user", "content": "hi"}]
    total = counted(claude, tools=tools, messages=messages)
    first = claude.messages.create(model="m", max_tokens=4, tools=tools, messages=messages).usage
    fresh, read, written = split(first)
    assert written > 50 and fresh > 0 and fresh + read + written == total
    other: Any = [{"role": "user", "content": "hello again"}]
    usage = claude.messages.create(model="m", max_tokens=4, tools=tools, messages=other).usage
    assert split(usage)[2] == 0 and split(usage)[1] >= written


def test_bad_cache_control_is_a_400(server: CliServer, key: str) -> None:
    def post(body: dict[str, Any]) -> httpx.Response:
        base = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(
            f"{server.base_url}/v1/messages", json={**base, **body}, headers={"x-api-key": key}, timeout=60
        )

    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    too_many = post({"system": [marked] * 5})
    assert too_many.status_code == 400 and too_many.json()["type"] == "error"
    assert "4" in too_many.json()["error"]["message"]
    wrong = post({"system": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]})
    assert wrong.status_code == 400 and "cache_control" in wrong.json()["error"]["message"]
    ttl = post({"cache_control": {"type": "ephemeral", "ttl": "2d"}})
    assert ttl.status_code == 400


def test_the_wire_bytes_carry_the_split(server: CliServer, key: str) -> None:
    body = {
        "model": "m",
        "max_tokens": 3,
        "stream": True,
        "system": [
            {"type": "text", "text": f"{NONCE} wire. " + "Be brief. " * 30, "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx.stream(
        "POST", f"{server.base_url}/v1/messages", json=body, headers={"x-api-key": key}, timeout=60
    ) as response:
        raw = response.read().decode()
    assert "\r" not in raw
    frames = [
        json.loads(line[6:]) for chunk in raw.split("\n\n") for line in chunk.splitlines() if line[:6] == "data: "
    ]
    start = frames[0]["message"]["usage"]
    delta = next(f for f in frames if f["type"] == "message_delta")["usage"]
    assert start["cache_creation_input_tokens"] > 0
    for key_name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert start[key_name] == delta[key_name]
