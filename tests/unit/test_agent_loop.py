"""The agent loop with a scripted engine and fake tool plugins, through the official SDKs
(strict parsing of every frame), streaming and not, in all three dialects."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.config import ToolsConfig
from runtime.engine.fake import FakeEngine
from runtime.events import Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from runtime.hookspecs import hookimpl
from runtime.ir import TextPart, ToolCallPart, ToolResultPart
from runtime.plugins import load_plugins
from runtime.tools import ToolContext, ToolOutput
from tests.conftest import FakeServer, serve_fake

ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}


class AddTool:
    name = "add"
    description = "Add two numbers."
    parameters = ADD_SCHEMA

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        context.session.state["adds"] = context.session.state.get("adds", 0) + 1
        return ToolOutput(str(arguments["a"] + arguments["b"]))


class FailTool:
    name = "fail"
    description = "Always breaks."
    parameters = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        raise RuntimeError("disk on fire")


class SlowTool:
    name = "slow"
    description = "Never finishes in time."
    parameters = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        await asyncio.sleep(30)
        return ToolOutput("too late")


class WordsTool:
    name = "words"
    description = "Print n numbered words."
    parameters = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput(" ".join(f"w{i}" for i in range(arguments["n"])))


class FakeTools:
    @hookimpl
    def register_tools(self, register: Callable[[Any], None]) -> None:
        for tool in (AddTool(), FailTool(), SlowTool(), WordsTool()):
            register(tool)


def call(name: str, arguments: str, call_id: str = "call_1", index: int = 0) -> list[Event]:
    half = len(arguments) // 2
    return [
        ToolCallStart(index, call_id, name),
        ToolCallDelta(index, arguments[:half]),
        ToolCallDelta(index, arguments[half:]),
        ToolCallEnd(index, call_id, name, arguments),
    ]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FakeServer]:
    tools = load_plugins([FakeTools()], load_entry_points=False, default_plugins=(), search_provider=None)
    config = ToolsConfig(tool_timeout=0.5, max_iterations=3)
    with serve_fake(tmp_path, FakeEngine(), tools=tools, tools_config=config) as server:
        yield server


def server_tools(*names: str, session: str | None = "s1") -> dict[str, Any]:
    return {"enable_tools": True, "enabled_tools": list(names), "session_id": session}


HI = [{"role": "user", "content": "What is 1 + 2?"}]

# -- Chat Completions --------------------------------------------------------------------------------


def chat_stream(agent: FakeServer, **kwargs: Any) -> list[Any]:
    return list(agent.openai().chat.completions.create(model="m", messages=HI, stream=True, **kwargs))


def tool_results(chunks: list[Any]) -> list[dict[str, Any]]:
    return [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]


def test_chat_two_step_server_calls_then_answer(agent: FakeServer) -> None:
    agent.engine.enqueue(
        call("add", '{"a": 1, "b": 2}'), call("add", '{"a": 3, "b": 4}', "call_2"), "The answers are 3 and 7."
    )
    chunks = chat_stream(agent, extra_body=server_tools("add"))
    assert [r["output"] for r in tool_results(chunks)] == ["3", "7"]
    announced = [c.model_extra["tool_call"] for c in chunks if (c.model_extra or {}).get("tool_call")]
    assert [a["name"] for a in announced] == ["add", "add"]
    assert all(not c.choices[0].delta.tool_calls for c in chunks if c.choices)  # never a client call
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answers are 3 and 7."
    assert chunks[-1].choices[0].finish_reason == "stop"

    # The model saw its call and the result on the next turn; the server tools were offered.
    second, third = agent.engine.requests[1], agent.engine.requests[2]
    assert {t.name for t in second.tools} == {"add"}
    assert second.messages[-2].parts == [ToolCallPart("call_1", "add", '{"a": 1, "b": 2}')]
    assert second.messages[-1].parts == [ToolResultPart("call_1", "3", False, "add")]
    assert len(third.messages) == len(second.messages) + 2


def test_chat_non_stream_carries_the_transcript(agent: FakeServer) -> None:
    agent.engine.enqueue(call("add", '{"a": 1, "b": 2}'), "It is 3.")
    response = agent.openai().chat.completions.create(model="m", messages=HI, extra_body=server_tools("add"))
    assert response.choices[0].message.content == "It is 3."
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.tool_calls is None
    assert response.model_extra["tool_results"][0]["output"] == "3"
    assert response.usage is not None and response.usage.completion_tokens > 0


def test_chat_mixed_server_and_client_tools(agent: FakeServer) -> None:
    client_tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    agent.engine.enqueue(
        [*call("add", '{"a": 1, "b": 1}'), *call("get_weather", '{"city": "Paris"}', "call_w", index=1)]
    )
    chunks = chat_stream(agent, tools=[client_tool], extra_body=server_tools("add"))
    assert [r["output"] for r in tool_results(chunks)] == ["2"]
    client_calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert client_calls[0].index == 0 and client_calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert {t.name for t in agent.engine.requests[0].tools} == {"get_weather", "add"}


@pytest.mark.parametrize(
    ("name", "arguments", "needle"),
    [
        ("fail", "{}", "disk on fire"),
        ("slow", "{}", "did not finish"),
        ("add", '{"a": 1}', "'b' is a required property"),
        ("add", '{"a": 1, ', "not valid JSON"),
    ],
)
def test_chat_tool_failures_become_error_results(agent: FakeServer, name: str, arguments: str, needle: str) -> None:
    agent.engine.enqueue(call(name, arguments), "Sorry.")
    chunks = chat_stream(agent, extra_body=server_tools("add", "fail", "slow"))
    (result,) = tool_results(chunks)
    assert result["is_error"] is True and needle in result["output"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert agent.engine.requests[-1].messages[-1].parts[0].is_error  # the model reads the failure


def test_chat_iteration_cap_ends_with_a_text_turn(agent: FakeServer) -> None:
    # The fourth call comes in the final, tool-less turn: it is neither run nor shown as a client call.
    agent.engine.enqueue(*[call("add", '{"a": 1, "b": 1}', f"call_{i}") for i in range(4)])
    chunks = chat_stream(agent, extra_body=server_tools("add"))
    assert len(tool_results(chunks)) == 3
    assert all(not c.choices[0].delta.tool_calls for c in chunks if c.choices)
    last = agent.engine.requests[-1]
    assert last.tools == [] and last.tool_choice.mode == "auto"
    assert last.calls_forbidden  # the engine forbids call markup in that last round
    assert not any(r.calls_forbidden for r in agent.engine.requests[:-1])
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_request_cap_is_honoured(agent: FakeServer) -> None:
    agent.engine.enqueue(call("add", '{"a": 1, "b": 1}'), "Done.")
    chunks = chat_stream(agent, extra_body={**server_tools("add"), "max_tool_calls_per_message": 1})
    assert len(tool_results(chunks)) == 1
    assert agent.engine.requests[-1].tools == []
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Done."


@pytest.mark.parametrize("dialect", ["chat", "responses"])
def test_max_tool_calls_counts_calls_not_rounds(agent: FakeServer, dialect: str) -> None:
    # One message with four parallel calls, then another round's call: with a limit of 2,
    # two run, the other two come back as "not run" results, and the next round is the last.
    four = [e for i in range(4) for e in call("add", f'{{"a": {i}, "b": 1}}', f"call_{i}", i)]
    agent.engine.enqueue(four, call("add", '{"a": 9, "b": 9}', "call_9"), "Done.")
    if dialect == "chat":
        chunks = chat_stream(agent, extra_body={**server_tools("add"), "max_tool_calls_per_message": 2})
        results = tool_results(chunks)
    else:
        body = agent.openai().responses.create(model="m", input="hi", max_tool_calls=2, extra_body=server_tools("add"))
        results = body.model_extra["tool_results"]
    assert [(r["output"], r["is_error"]) for r in results][:2] == [("1", False), ("2", False)]
    assert [r["is_error"] for r in results[2:]] == [True, True] and "max_tool_calls" in results[2]["output"]
    assert len(agent.engine.requests) == 2  # the limit was reached: the second generation was the last
    assert agent.engine.requests[-1].tools == []


@pytest.fixture
def small_context(tmp_path: Path) -> Iterator[FakeServer]:
    # The FakeEngine counts a word as a token (plus 4 per message); 512 tokens of context.
    tools = load_plugins([FakeTools()], load_entry_points=False, default_plugins=(), search_provider=None)
    with serve_fake(tmp_path, FakeEngine(context_length=512), tools=tools) as server:
        yield server


def test_tool_output_that_outgrows_the_context_is_shortened_not_lost(small_context: FakeServer) -> None:
    small_context.engine.enqueue(call("words", '{"n": 2000}'), "Summarised.")
    chunks = chat_stream(small_context, extra_body=server_tools("words"))
    [result] = tool_results(chunks)
    assert result["output"].endswith("w1999") and len(result["output"].split()) == 2000  # the client gets it all
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The model read the head and the tail, with a marker counting the cut in tokens.
    seen = small_context.engine.requests[-1].messages[-1].parts[0].content
    assert seen.startswith("w0 w1 ") and seen.endswith("w1999")
    [cut] = re.findall(r"\[\.\.\. (\d+) tokens of output cut here", seen)
    kept = len(seen.split()) - len(
        ["[...", "N", "tokens", "of", "output", "cut", "here", "to", "fit", "the", "context", "window", "...]"]
    )
    assert int(cut) + kept == pytest.approx(2000, abs=3)
    prompt = sum(len(m.text.split()) + 4 for m in small_context.engine.requests[-1].messages)
    assert (
        prompt
        + sum(len(m.parts[0].content.split()) for m in small_context.engine.requests[-1].messages if m.role == "tool")
        <= 512
    )


def test_a_conversation_that_cannot_continue_ends_with_length_and_keeps_the_results(
    small_context: FakeServer,
) -> None:
    long_question = [{"role": "user", "content": "word " * 460}]  # fits, but leaves no room after a tool round
    small_context.engine.enqueue(call("words", '{"n": 50}'))
    client = small_context.openai()
    whole = client.chat.completions.create(model="m", messages=long_question, extra_body=server_tools("words"))
    assert whole.choices[0].finish_reason == "length"
    assert whole.model_extra["tool_results"][0]["output"].startswith("w0 w1")
    assert len(small_context.engine.requests) == 1  # no second generation was attempted
    small_context.engine.enqueue(call("words", '{"n": 50}'))
    chunks = list(
        client.chat.completions.create(model="m", messages=long_question, stream=True, extra_body=server_tools("words"))
    )
    assert tool_results(chunks) and chunks[-1].choices[0].finish_reason == "length"


def test_unknown_server_tool_is_a_400(agent: FakeServer) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        chat_stream(agent, extra_body=server_tools("nope"))
    assert "nope" in str(caught.value) and "add" in str(caught.value)


def test_session_state_persists_and_is_per_key(agent: FakeServer) -> None:
    for _ in range(2):
        agent.engine.enqueue(call("add", '{"a": 1, "b": 1}'), "ok")
        chat_stream(agent, extra_body=server_tools("add"))
    sessions = agent.openai().get("/sessions", cast_to=object)
    assert [s["id"] for s in sessions["data"]] == ["s1"]  # type: ignore[index]

    _, other = agent.keys.create("other")
    assert agent.openai(other).get("/sessions", cast_to=object)["data"] == []  # type: ignore[index]


def test_session_tool_endpoint(agent: FakeServer) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {agent.key}"}
    url = f"{agent.base_url}/v1/sessions/nb/tools/add"
    ok = httpx.post(url, json={"a": 2, "b": 40}, headers=headers).json()
    assert (ok["output"], ok["is_error"]) == ("42", False)
    bad = httpx.post(url, json={"a": "x", "b": 1}, headers=headers)
    # A program called the tool with arguments against its schema: a 400 naming the argument.
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["type"] == "invalid_request_error" and "$.a" in bad.json()["error"]["message"]
    missing_arg = httpx.post(url, json={"a": 1}, headers=headers)
    assert missing_arg.status_code == 400 and "'b'" in missing_arg.json()["error"]["message"]
    missing = httpx.post(f"{agent.base_url}/v1/sessions/nb/tools/nope", json={}, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    deleted = httpx.delete(f"{agent.base_url}/v1/sessions/nb", headers=headers)
    assert deleted.json()["deleted"] is True
    assert httpx.delete(f"{agent.base_url}/v1/sessions/nb", headers=headers).status_code == 404


def test_plain_requests_never_run_tools(agent: FakeServer) -> None:
    agent.engine.enqueue(call("add", '{"a": 1, "b": 2}'))
    response = agent.openai().chat.completions.create(model="m", messages=HI)
    # Without enable_tools the call is just a (client) call: nothing ran on the server.
    assert response.choices[0].finish_reason == "tool_calls"
    assert "tool_results" not in (response.model_extra or {})
    assert json.loads(response.choices[0].message.tool_calls[0].function.arguments) == {"a": 1, "b": 2}


def test_text_only_answer_with_tools_enabled(agent: FakeServer) -> None:
    agent.engine.enqueue([TextDelta("Three.")])
    chunks = chat_stream(agent, extra_body=server_tools("add", session=None))
    assert tool_results(chunks) == []
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Three."


# -- Responses ----------------------------------------------------------------------------------------


def test_responses_server_calls_stream_and_not(agent: FakeServer) -> None:
    client = agent.openai()
    agent.engine.enqueue(call("add", '{"a": 1, "b": 2}'), "It is 3.")
    events = list(client.responses.create(model="m", input="1+2?", stream=True, extra_body=server_tools("add")))
    results = [e for e in events if e.type == "tool_result"]
    assert [r.output for r in results] == ["3"]  # type: ignore[attr-defined]
    assert not [e for e in events if e.type.startswith("response.function_call_arguments")]
    final = events[-1]
    assert final.type == "response.completed"
    assert [item.type for item in final.response.output] == ["message"]  # no function_call item
    assert final.response.output_text == "It is 3."

    agent.engine.enqueue(call("fail", "{}"), "Broken.")
    response = client.responses.create(model="m", input="break it", extra_body=server_tools("fail"))
    assert response.output_text == "Broken."
    assert response.model_extra["tool_results"][0]["is_error"] is True


def test_responses_mixed_server_and_client_tools(agent: FakeServer) -> None:
    weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    agent.engine.enqueue([*call("add", '{"a": 2, "b": 2}'), *call("get_weather", "{}", "call_w", index=1)])
    response = agent.openai().responses.create(
        model="m", input="weather?", tools=[weather], extra_body=server_tools("add")
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert response.model_extra["tool_results"][0]["output"] == "4"


# -- Anthropic Messages -------------------------------------------------------------------------------


def test_anthropic_server_calls_stream_and_not(agent: FakeServer) -> None:
    client = agent.anthropic()
    agent.engine.enqueue(call("add", '{"a": 1, "b": 2}'), "It is 3.")
    with client.messages.stream(model="m", max_tokens=50, messages=HI, extra_body=server_tools("add")) as stream:
        events = list(stream)
        final = stream.get_final_message()
    results = [e for e in events if e.type == "tool_result"]
    assert [r.output for r in results] == ["3"]  # type: ignore[attr-defined]
    assert final.stop_reason == "end_turn"
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == "It is 3."

    agent.engine.enqueue(call("slow", "{}"), "Too slow.")
    message = client.messages.create(model="m", max_tokens=50, messages=HI, extra_body=server_tools("slow"))
    assert message.stop_reason == "end_turn"
    assert "did not finish" in message.model_extra["tool_results"][0]["output"]


def test_anthropic_mixed_server_and_client_tools(agent: FakeServer) -> None:
    weather = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    agent.engine.enqueue([*call("add", '{"a": 2, "b": 3}'), *call("get_weather", "{}", "call_w", index=1)])
    message = agent.anthropic().messages.create(
        model="m", max_tokens=50, messages=HI, tools=[weather], extra_body=server_tools("add")
    )
    assert message.stop_reason == "tool_use"
    assert [b.name for b in message.content if b.type == "tool_use"] == ["get_weather"]
    assert message.model_extra["tool_results"][0]["output"] == "5"


def test_a_prefill_is_continued_once_then_kept_in_the_transcript(agent: FakeServer) -> None:
    agent.engine.enqueue([TextDelta(" add them."), *call("add", '{"a": 1, "b": 2}')], "It is 3.")
    agent.anthropic().messages.create(
        model="m",
        max_tokens=50,
        messages=[*HI, {"role": "assistant", "content": "Let me"}],
        extra_body=server_tools("add"),
    )
    first, second = agent.engine.requests[-2:]
    assert first.prefill == "Let me"
    assert second.prefill == ""  # the next round starts a fresh reply after the tool result
    replied = second.messages[-2]
    assert replied.role == "assistant" and replied.parts[0] == TextPart("Let me add them.")


def test_tool_choice_may_force_a_server_tool(agent: FakeServer) -> None:
    agent.engine.enqueue(call("add", '{"a": 20, "b": 22}'), "42.")
    chunks = chat_stream(
        agent, tool_choice={"type": "function", "function": {"name": "add"}}, extra_body=server_tools("add")
    )
    assert [r["output"] for r in tool_results(chunks)] == ["42"]
    first, second = agent.engine.requests
    assert (first.tool_choice.mode, first.tool_choice.name) == ("function", "add")
    assert second.tool_choice.mode == "auto"  # forced once, then free to answer
    response = agent.anthropic().messages.create(
        model="m", max_tokens=20, messages=HI, tool_choice={"type": "any"}, extra_body=server_tools("add")
    )
    assert response.stop_reason == "end_turn"
