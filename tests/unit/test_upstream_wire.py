"""The upstream engine's pure parts: IR -> Chat Completions body, chunks -> events, the
balancer's choices, token estimates. The integration tests drive the same code against real
upstreams; these pin the cases those servers do not produce on demand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.config import SamplingDefaults
from runtime.engine.upstream import tokens
from runtime.engine.upstream.balancer import BACKOFF_MAX, Balancer
from runtime.engine.upstream.profiles import PROFILES, kind_from_models
from runtime.engine.upstream.wire import ChunkReader, check_supported, request_body, usage_of
from runtime.errors import InvalidRequest, UnsupportedFeature
from runtime.events import ReasoningDelta, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from runtime.ir import (
    ChatRequest,
    ImagePart,
    Message,
    OutputFormat,
    ReasoningPart,
    Sampling,
    TextPart,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
)

WEATHER = ToolSpec("get_weather", "weather", {"type": "object", "properties": {"city": {"type": "string"}}})


def body(request: ChatRequest, kind: str = "toolstudio", *, vision: bool = False) -> dict[str, Any]:
    return request_body(
        request,
        model="m",
        profile=PROFILES[kind],
        defaults=SamplingDefaults(),
        vision=vision,  # type: ignore[index]
    )


def chat(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages), **kw)


# -- the request ----------------------------------------------------------------------------------


def test_history_with_calls_results_reasoning_and_images() -> None:
    request = chat(
        Message("system", [TextPart("be brief")]),
        Message("user", [TextPart("look:"), ImagePart(data=b"\x89PNG", media_type="image/png")]),
        Message("assistant", [ReasoningPart("hmm"), ToolCallPart("c1", "get_weather", '{"city": "Paris"}')]),
        Message("tool", [ToolResultPart("c1", "sunny", name="get_weather")]),
        tools=[WEATHER],
    )
    sent = body(request, vision=True)
    system, user, assistant, tool = sent["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    # An empty string, not null: llama-cpp-python refuses a null assistant content.
    assert assistant["content"] == "" and assistant["reasoning_content"] == "hmm"
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert tool == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # Without vision the image is left out (the runtime warned the client), the text stays.
    assert body(request)["messages"][1] == {"role": "user", "content": "look:"}


def test_sampling_defaults_named_choice_stops_and_seed_offset() -> None:
    request = chat(
        Message("user", [TextPart("hi")]),
        tools=[WEATHER],
        tool_choice=ToolChoice("function", "get_weather"),
        parallel_tool_calls=False,
        sampling=Sampling(temperature=0.0, seed=5, stop=["END"], max_tokens=9, logprobs=2),
    )
    sent = request_body(
        request, model="m", profile=PROFILES["vllm"], defaults=SamplingDefaults(), vision=False, seed_offset=2
    )
    assert sent["temperature"] == 0.0 and sent["top_p"] == SamplingDefaults().top_p
    assert sent["repetition_penalty"] == 1.0 and "repeat_penalty" not in sent  # vLLM's name
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False and sent["seed"] == 7 and sent["max_tokens"] == 9
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert "stop" not in sent  # matched by the engine, so it can say which one hit


def test_json_schema_in_each_servers_form() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = chat(Message("user", [TextPart("x")]), output_format=OutputFormat("json_schema", schema, "thing", True))
    assert body(request)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert body(request, "llama-cpp-python")["response_format"] == {"type": "json_object", "schema": schema}


def test_reasoning_switch_and_template_kwargs() -> None:
    request = chat(Message("user", [TextPart("x")]), reasoning=False, reasoning_effort="low", template_kwargs={"k": 1})
    sent = body(request)
    assert sent["chat_template_kwargs"] == {"k": 1, "enable_thinking": False} and sent["reasoning_effort"] == "low"


def test_what_an_upstream_would_silently_ignore_is_refused_by_name() -> None:
    required = chat(Message("user", [TextPart("x")]), tools=[WEATHER], tool_choice=ToolChoice("required"))
    check_supported(required, PROFILES["toolstudio"])
    with pytest.raises(UnsupportedFeature) as refused:
        check_supported(required, PROFILES["llama-cpp-python"])
    assert refused.value.param == "tool_choice" and refused.value.status == 400
    prefill = chat(Message("user", [TextPart("x")]), prefill="Sure")
    with pytest.raises(UnsupportedFeature):
        check_supported(prefill, PROFILES["toolstudio"])
    check_supported(prefill, PROFILES["vllm"])
    assert body(prefill, "vllm")["continue_final_message"] is True
    with pytest.raises(InvalidRequest):
        check_supported(
            chat(Message("user", [TextPart("x")]), tool_choice=ToolChoice("function", "nope")), PROFILES["vllm"]
        )
    with pytest.raises(UnsupportedFeature):
        body(chat(Message("user", [TextPart("x")]), sampling=Sampling(top_k=5)), "generic")


# -- reading chunks -------------------------------------------------------------------------------


def feed(reader: ChunkReader, *deltas: dict[str, Any], finish: str | None = None) -> list[Any]:
    events: list[Any] = []
    for i, delta in enumerate(deltas):
        last = i == len(deltas) - 1
        events += reader.feed({"index": 0, "delta": delta, "finish_reason": finish if last else None})
    return events


def test_a_call_whose_name_and_id_repeat_in_every_chunk_is_one_call() -> None:
    """llama-cpp-python's named tool_choice stream (measured)."""
    reader = ChunkReader.new([])
    repeat = {"index": 0, "id": "call_x", "function": {"name": "get_weather"}}
    events = feed(
        reader,
        {"tool_calls": [{**repeat, "function": {"name": "get_weather", "arguments": '{"city": '}}]},
        {"tool_calls": [{**repeat, "function": {"name": "get_weather", "arguments": '"Paris"}'}}]},
        finish="tool_calls",
    )
    tail, reason = reader.finish()
    assert events == [
        ToolCallStart(0, "call_x", "get_weather"),
        ToolCallDelta(0, '{"city": '),
        ToolCallDelta(0, '"Paris"}'),
    ]
    assert tail == [ToolCallEnd(0, "call_x", "get_weather", '{"city": "Paris"}')] and reason == "tool_calls"


def test_calls_without_ids_or_with_arguments_before_the_name() -> None:
    reader = ChunkReader.new([])
    events = feed(
        reader,
        {"tool_calls": [{"index": 3, "function": {"arguments": "{"}}]},
        {"tool_calls": [{"index": 3, "function": {"name": "f", "arguments": "}"}}]},
        finish="stop",  # some servers say stop after a call
    )
    start = events[0]
    assert isinstance(start, ToolCallStart) and start.index == 0 and start.id.startswith("call_")
    assert events[1] == ToolCallDelta(0, "{}")
    assert reader.finish()[1] == "tool_calls"


def test_reasoning_under_either_name_and_text() -> None:
    reader = ChunkReader.new([])
    events = feed(reader, {"reasoning_content": "a"}, {"reasoning": "b"}, {"content": "c"}, finish="stop")
    assert events == [ReasoningDelta("a"), ReasoningDelta("b"), TextDelta("c")]
    assert reader.finish() == ([], "stop")


def test_a_stop_sequence_split_across_chunks_is_found_and_named() -> None:
    reader = ChunkReader.new(["STOP"])
    events = feed(reader, {"content": "one ST"}, {"content": "OP two"})
    assert "".join(e.text for e in events) == "one " and reader.stop_hit == "STOP"
    assert reader.finish() == ([], "stop_sequence")
    held = ChunkReader.new(["STOP"])
    feed(held, {"content": "ends in ST"}, finish="length")
    assert held.finish() == ([TextDelta("ST")], "length")  # a held-back prefix that never completed


def test_logprobs_with_or_without_bytes() -> None:
    reader = ChunkReader.new([])
    entry = {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": None,
        "top_logprobs": [{"token": "Yo", "logprob": -1.0, "bytes": [89, 111]}],
    }
    (event,) = reader.feed({"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [entry]}})
    assert event.logprobs[0].token == b"Hi" and event.logprobs[0].top[0].token == b"Yo"


def test_usage_with_cached_tokens_in_either_place() -> None:
    openai_style = {
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}}
    }
    assert usage_of(openai_style) == tokens_usage(10, 2, 8)
    llama_server = {"usage": {"prompt_tokens": 10, "completion_tokens": 2}, "timings": {"cache_n": 7}}
    assert usage_of(llama_server) == tokens_usage(10, 2, 7)
    assert usage_of({"choices": []}) is None


def tokens_usage(prompt: int, completion: int, cached: int) -> Any:
    from runtime.events import Usage

    return Usage(prompt, completion, cached)


# -- balancing ------------------------------------------------------------------------------------


def test_a_session_keeps_its_backend_and_sessions_spread() -> None:
    urls = [f"http://10.0.0.{i}:8000" for i in range(4)]
    balancer = Balancer(urls)
    firsts = {}
    for s in range(40):
        picked = balancer.pick(f"key:1\x00s{s}")
        assert picked is not None
        assert all(balancer.pick(f"key:1\x00s{s}") is picked for _ in range(3))
        firsts[s] = picked.url
    assert len(set(firsts.values())) == 4  # 40 sessions over 4 backends: all used
    # Another front-end, its own Balancer with the same URLs, ranks them the same way.
    other = Balancer(urls)
    assert all(other.pick(f"key:1\x00s{s}").url == url for s, url in firsts.items())  # type: ignore[union-attr]


def test_a_busy_preferred_backend_passes_the_session_on_and_load_goes_to_the_least_busy() -> None:
    balancer = Balancer(["http://a", "http://b"])
    preferred = balancer.pick("session")
    assert preferred is not None
    preferred.outstanding = 5
    other = balancer.pick("session")
    assert other is not None and other is not preferred  # over its bounded share (1.25 x fair)
    assert balancer.pick(None) is other


def test_a_failing_backend_backs_off_doubling_up_to_the_cap() -> None:
    balancer = Balancer(["http://a", "http://b"])
    a, b = balancer.backends
    assert [a.mark_down(100.0) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, BACKOFF_MAX]
    assert balancer.pick("any") is b and balancer.pick(None) is b
    b.mark_down(100.0)
    assert balancer.pick(None) is None and balancer.retry_after(now=100.0) == 1
    a.mark_up()
    assert a.failures == 0 and balancer.pick(None) is a


def test_the_kind_comes_from_owned_by() -> None:
    assert kind_from_models({"data": [{"id": "x", "owned_by": "me"}]}) == "llama-cpp-python"
    assert kind_from_models({"data": [{"id": "x", "owned_by": "toolstudio"}]}) == "toolstudio"
    assert kind_from_models({"data": [{"id": "x", "owned_by": "sglang"}]}) == "generic"
    assert kind_from_models("junk") == "generic"


# -- counting -------------------------------------------------------------------------------------


def test_the_estimate_overcounts_english_and_counts_images() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20  # about 200 tokens in BPE
    plain = tokens.estimate(chat(Message("user", [TextPart(text)])))
    assert 200 < plain < 400
    with_image = tokens.estimate(chat(Message("user", [TextPart(text), ImagePart(data=b"x")])))
    assert with_image == plain + tokens.ESTIMATE_IMAGE_TOKENS


def test_the_anthropic_count_body_alternates_roles() -> None:
    request = chat(
        Message("system", [TextPart("sys")]),
        Message("user", [TextPart("q")]),
        Message("assistant", [TextPart("let me"), ToolCallPart("c1", "get_weather", '{"city": "P"}')]),
        Message("tool", [ToolResultPart("c1", "sunny")]),
        Message("user", [TextPart("and?")]),
        tools=[WEATHER],
        tool_choice=ToolChoice("required"),
    )
    sent = tokens.anthropic_body(request, model="m")
    assert sent["system"] == "sys" and sent["tool_choice"] == {"type": "any"}
    assert [t["role"] for t in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "c1",
        "name": "get_weather",
        "input": {"city": "P"},
    }
    assert [b["type"] for b in sent["messages"][2]["content"]] == ["tool_result", "text"]
    assert json.dumps(sent)  # plain JSON


def test_raw_control_characters_in_call_strings_are_escaped_as_they_stream() -> None:
    """llama-cpp-python's grammar lets a JSON string hold a raw newline (measured)."""
    reader = ChunkReader.new([])
    fragments = ['{"code": "a = \\"x', "\n", 'y\\"\\\\', '"\n\t, "n": 1}']
    events = feed(
        reader, *[{"tool_calls": [{"index": 0, "function": {"name": "python", "arguments": f}}]} for f in fragments]
    )
    streamed = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    (end,), _ = reader.finish()
    assert streamed == end.arguments
    assert json.loads(end.arguments) == {"code": 'a = "x\ny"\\', "n": 1}  # the newline between values is left alone
    valid = '{"a": "line\\nbreak", "b": [1, 2]}'
    again = ChunkReader.new([])
    feed(again, {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": valid}}]})
    assert again.finish()[0][0].arguments == valid


def test_llama_servers_echo_of_the_prefill_is_dropped_however_split() -> None:
    """llama-server continues a final assistant message and repeats it first (measured)."""
    for pieces in (["Hello there, my name", " is"], ["Hel", "lo there, m", "y", " name is"]):
        reader = ChunkReader.new([], echo="Hello there, my")
        events = feed(reader, *[{"content": p} for p in pieces])
        assert "".join(e.text for e in events) == " name is"
    other = ChunkReader.new([], echo="Hello")
    assert feed(other, {"content": "Hi"}, {"content": " you"}) == [TextDelta("Hi"), TextDelta(" you")]


def test_tools_on_a_template_without_them_are_refused_when_forced() -> None:
    forced = chat(Message("user", [TextPart("x")]), tools=[WEATHER], tool_choice=ToolChoice("function", "get_weather"))
    with pytest.raises(UnsupportedFeature) as refused:
        check_supported(forced, PROFILES["llama-server"], tools=False)
    assert refused.value.param == "tool_choice"
    check_supported(forced, PROFILES["llama-server"], tools=True)
    check_supported(forced, PROFILES["llama-server"], tools=None)
