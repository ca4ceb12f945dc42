"""Anthropic Messages through the official `anthropic` SDK against the real server
(`toolstudio run` with the packaged SmolLM2 model)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import anthropic
import jsonschema
import pytest
from PIL import Image

from tests.servers import CliServer

pytestmark = pytest.mark.integration

MODEL_ID = "SmolLM2-135M-Instruct"
PARIS: list[Any] = [{"role": "user", "content": "Tell me two facts about Paris."}]
GREEDY = {"temperature": 0.0}  # sent as extra_body: this SDK release has no sampling keywords
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. 'Tokyo'"}},
    "required": ["city"],
}
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Get the current weather for a city", "input_schema": WEATHER_SCHEMA}
]


@pytest.fixture
def seed_client(real_server: CliServer, real_key: str) -> anthropic.Anthropic:
    """The client exactly as the seed documentation builds it: a dummy api_key, the real key
    as a Bearer token, and no /v1 in base_url."""
    return anthropic.Anthropic(
        base_url=real_server.base_url,
        api_key="dummy",
        default_headers={"Authorization": f"Bearer {real_key}"},
        max_retries=0,
        timeout=120,
    )


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return base64.standard_b64encode(buffer.getvalue()).decode()


# -- the seed documentation's examples ---------------------------------------------------------


def test_seed_basic_message(seed_client: anthropic.Anthropic) -> None:
    message = seed_client.messages.create(
        model="default",
        max_tokens=1024,
        messages=[{"role": "user", "content": "3つの言語でこんにちはと言って。"}],
    )
    assert message.content[0].text  # type: ignore[union-attr]
    assert message.model == MODEL_ID  # the real id, whatever name was asked for
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 10
    assert 0 < message.usage.output_tokens <= 1024


def test_seed_streaming(seed_client: anthropic.Anthropic) -> None:
    with seed_client.messages.stream(
        model="default",
        max_tokens=1024,
        messages=[{"role": "user", "content": "LoRA を2文で説明してください。"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


def test_seed_image_input(seed_client: anthropic.Anthropic) -> None:
    message = seed_client.messages.create(
        model="default",
        max_tokens=40,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_b64()}},
                    {"type": "text", "text": "この画像には何が写っていますか？"},  # noqa: RUF001 (the seed's text)
                ],
            }
        ],
    )
    # A text-only model cannot see the image, but the request is accepted and answered.
    assert message.content[0].type == "text" and message.content[0].text


def test_seed_tools_with_auto_choice(seed_client: anthropic.Anthropic) -> None:
    message = seed_client.messages.create(
        model="default",
        max_tokens=200,
        tools=TOOLS,
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "東京の天気は？"}],  # noqa: RUF001 (the seed's text)
    )
    assert message.content
    for block in message.content:
        assert block.type in ("text", "tool_use")
        if block.type == "tool_use":
            assert block.name == "get_weather" and isinstance(block.input, dict)
            assert message.stop_reason == "tool_use"


# -- behaviour ------------------------------------------------------------------------------------


def test_stream_matches_non_stream(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = dict(model="m", max_tokens=30, messages=PARIS, extra_body=GREEDY)
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens > 0
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == whole.usage.input_tokens + (
        whole.usage.cache_read_input_tokens or 0
    )


def test_message_start_reports_the_real_prompt_and_cache_read(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Count the prompt for message_start, please."}]
    counted = claude.messages.count_tokens(model="m", messages=messages).input_tokens
    starts = []
    for _ in range(2):  # the second time, the prompt comes from the slot's KV cache
        with claude.messages.stream(model="m", max_tokens=3, messages=messages) as stream:
            events = list(stream)
        assert events[0].type == "message_start"
        starts.append(events[0].message.usage)
    for usage in starts:
        assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == counted
    assert starts[0].input_tokens > 0
    assert (starts[1].cache_read_input_tokens or 0) > 0


def test_max_tokens_and_stop_sequences(claude: anthropic.Anthropic) -> None:
    short = claude.messages.create(model="m", max_tokens=3, messages=PARIS, extra_body=GREEDY)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3

    free = claude.messages.create(model="m", max_tokens=40, messages=PARIS, extra_body=GREEDY)
    text = free.content[0].text  # type: ignore[union-attr]
    word = text.split()[2]
    stopped = claude.messages.create(model="m", max_tokens=40, messages=PARIS, stop_sequences=[word], extra_body=GREEDY)
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", word)
    assert stopped.content[0].text == text[: text.index(word)]  # type: ignore[union-attr]


def test_count_tokens_is_the_prompt_the_model_reads(claude: anthropic.Anthropic) -> None:
    conversation: list[Any] = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
    ]
    counted = claude.messages.count_tokens(model="m", system="You are terse.", messages=conversation).input_tokens
    # Independently: the prompt the engine actually decoded for the same request.
    usage = claude.messages.create(model="m", max_tokens=1, system="You are terse.", messages=conversation).usage
    assert counted == usage.input_tokens + (usage.cache_read_input_tokens or 0)

    # " world" is one token in SmolLM2's BPE vocabulary, so ten more of them are ten more tokens.
    base = claude.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hello"}]).input_tokens
    longer = claude.messages.count_tokens(
        model="m", messages=[{"role": "user", "content": "hello" + " world" * 10}]
    ).input_tokens
    assert longer - base == 10


def test_a_prefill_is_continued_not_repeated(claude: anthropic.Anthropic) -> None:
    question: Any = {"role": "user", "content": "Count from 1 to 10, separated by commas."}
    prefill: Any = {"role": "assistant", "content": "1, 2, 3, 4,"}
    message = claude.messages.create(model="m", max_tokens=6, messages=[question, prefill])
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.lstrip().startswith("5"), text  # the model read the prefill and went on from it
    counted = claude.messages.count_tokens(model="m", messages=[question, prefill]).input_tokens
    assert counted == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert counted > claude.messages.count_tokens(model="m", messages=[question]).input_tokens

    # A grammar describes the whole reply, which the prefill would already have started.
    with pytest.raises(anthropic.BadRequestError, match="prefill"):
        claude.messages.create(
            model="m",
            max_tokens=10,
            messages=[question, prefill],
            output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        )


def test_structured_output_follows_the_schema(claude: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    message = claude.messages.create(
        model="m",
        max_tokens=40,
        messages=[{"role": "user", "content": "Which city has the Eiffel Tower? Answer in JSON."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    jsonschema.validate(json.loads(message.content[0].text), schema)  # type: ignore[union-attr]


def test_bad_requests_are_anthropic_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "assistant", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi " * 20000}])


# -- forced tool calls: SmolLM2 has no tool format, so these rely on the engine's grammar ---------

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def forced_call(claude: anthropic.Anthropic, choice: dict[str, Any], stream: bool) -> anthropic.types.Message:
    # One call, greedy: with parallel calls allowed a 135M model tends to repeat its call until
    # max_tokens, and unseeded sampling made that a coin toss in CI.
    choice = {**choice, "disable_parallel_tool_use": True}
    kwargs: dict[str, Any] = dict(
        model="m", max_tokens=200, tools=TOOLS, tool_choice=choice, messages=ASK, extra_body={"temperature": 0}
    )
    if not stream:
        return claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as s:
        return s.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}], ids=["any", "tool"])
def test_forced_tool_choice_returns_a_valid_tool_use(
    claude: anthropic.Anthropic, choice: dict[str, Any], stream: bool
) -> None:
    message = forced_call(claude, choice, stream)
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls, message.content
    assert message.stop_reason == "tool_use"
    assert calls[0].name == "get_weather" and calls[0].id.startswith("toolu_")
    jsonschema.validate(calls[0].input, WEATHER_SCHEMA)


def test_tool_result_follow_up_turn(claude: anthropic.Anthropic) -> None:
    first = forced_call(claude, {"type": "tool", "name": "get_weather"}, stream=False)
    call = next(b for b in first.content if b.type == "tool_use")
    follow_up = claude.messages.create(
        model="m",
        max_tokens=40,
        tools=TOOLS,
        messages=[
            *ASK,
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C, sunny"}]},
        ],
    )
    assert follow_up.content and follow_up.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert any(b.type == "text" and b.text for b in follow_up.content) or follow_up.stop_reason == "tool_use"
