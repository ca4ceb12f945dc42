"""The Responses dialect through the official `openai` SDK, against the scripted FakeEngine."""

from __future__ import annotations

import openai
import pytest
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseReasoningItem
from pydantic import BaseModel

from runtime.errors import ContextLengthExceeded
from runtime.events import (
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
)
from runtime.ir import ImagePart, OutputFormat, ReasoningPart, TextPart, ToolCallPart, ToolChoice, ToolResultPart
from tests.conftest import FakeServer

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}

WEATHER_CALL = [
    ToolCallStart(index=0, id="call_1", name="get_weather"),
    ToolCallDelta(index=0, arguments='{"city": '),
    ToolCallDelta(index=0, arguments='"Paris"}'),
    ToolCallEnd(index=0, id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
]

PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def test_create_with_a_string(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("Paris is lovely.")
    response = fake_server.openai().responses.create(model="anything", input="Tell me about Paris.")

    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "fake-model"  # the real id, whatever name was asked for
    assert response.output_text == "Paris is lovely."
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage)
    assert message.id.startswith("msg_") and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.usage is not None
    assert response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    assert response.error is None and response.incomplete_details is None

    [request] = fake_server.engine.requests
    assert [(m.role, m.text) for m in request.messages] == [("user", "Tell me about Paris.")]


def test_create_with_items_maps_every_role_and_part(fake_server: FakeServer) -> None:
    fake_server.openai().responses.create(
        model="m",
        input=[
            {"role": "developer", "content": "Be terse."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": PIXEL, "detail": "auto"},
                ],
            },
        ],
    )
    messages = fake_server.engine.requests[-1].messages
    assert [(m.role, m.text) for m in messages] == [
        ("system", "Be terse."),
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "What is this?"),
    ]
    [inline] = messages[3].parts[1:]
    assert isinstance(inline, ImagePart) and inline.media_type == "image/png" and inline.data


def test_instructions_become_the_first_system_message(fake_server: FakeServer) -> None:
    response = fake_server.openai().responses.create(
        model="m", instructions="Answer only with the word blue.", input=[{"role": "user", "content": "Sky colour?"}]
    )
    assert response.instructions == "Answer only with the word blue."
    first, second = fake_server.engine.requests[-1].messages
    assert (first.role, first.text) == ("system", "Answer only with the word blue.")
    assert (second.role, second.text) == ("user", "Sky colour?")


def test_sampling_options_and_echo(fake_server: FakeServer) -> None:
    response = fake_server.openai().responses.create(
        model="m",
        input="hi",
        temperature=0.3,
        top_p=0.5,
        max_output_tokens=64,
        metadata={"run": "7"},
        reasoning={"effort": "none"},
        parallel_tool_calls=False,
        extra_body={"seed": 11, "top_k": 5},
    )
    request = fake_server.engine.requests[-1]
    assert request.sampling.temperature == 0.3 and request.sampling.top_p == 0.5
    assert request.sampling.max_tokens == 64 and request.sampling.seed == 11 and request.sampling.top_k == 5
    assert request.reasoning is False and request.parallel_tool_calls is False
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.3, 0.5, 64)
    assert response.metadata == {"run": "7"} and response.parallel_tool_calls is False
    assert response.text is not None and response.text.format is not None and response.text.format.type == "text"

    fake_server.openai().responses.create(model="m", input="hi", reasoning={"effort": "low"})
    assert fake_server.engine.requests[-1].reasoning is True
    fake_server.openai().responses.create(model="m", input="hi")
    assert fake_server.engine.requests[-1].reasoning is None


def test_stream_yields_typed_events_and_the_final_response(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("Hello there friend")
    with fake_server.openai().responses.stream(model="m", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()

    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas[-1].snapshot == "Hello there friend"  # the SDK's accumulator followed our deltas
    assert final.output_text == "Hello there friend"
    assert final.id == events[0].response.id and final.status == "completed"


def test_create_stream_true_raw_events_match_non_stream(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue([ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("Four.")])
    events = list(client.responses.create(model="m", input="2+2?", stream=True))
    fake_server.engine.enqueue([ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("Four.")])
    whole = client.responses.create(model="m", input="2+2?")

    types = [e.type for e in events]
    assert types.count("response.reasoning_text.delta") == 2
    assert "response.reasoning_text.done" in types
    assert types[-1] == "response.completed"
    streamed = events[-1].response  # type: ignore[union-attr]
    for response in (streamed, whole):
        reasoning, message = response.output
        assert isinstance(reasoning, ResponseReasoningItem)
        assert reasoning.content and reasoning.content[0].text == "Let me think."
        assert isinstance(message, ResponseOutputMessage) and response.output_text == "Four."
    assert streamed.usage is not None and streamed.usage.output_tokens_details.reasoning_tokens == 2


def test_function_call_streams_as_function_call_events(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(WEATHER_CALL)
    with fake_server.openai().responses.stream(
        model="m", input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required"
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()

    types = [e.type for e in events]
    assert "response.output_text.delta" not in types  # the call is not leaked as text
    assert types.count("response.function_call_arguments.delta") == 2
    assert "response.function_call_arguments.done" in types
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    [call] = final.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.id and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
        "completed",
    )
    request = fake_server.engine.requests[-1]
    assert request.tool_choice == ToolChoice("required")
    assert request.tools[0].name == "get_weather" and request.tools[0].strict is True


def test_named_tool_choice(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(WEATHER_CALL)
    response = fake_server.openai().responses.create(
        model="m", input="Paris?", tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert fake_server.engine.requests[-1].tool_choice == ToolChoice("function", "get_weather")
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]
    assert response.tools[0].type == "function" and response.tools[0].name == "get_weather"


def test_function_call_output_follow_up_rebuilds_the_conversation(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue(WEATHER_CALL, "It is sunny in Paris.", "You are welcome.")
    first = client.responses.create(
        model="m", instructions="Use tools.", input="Weather in Paris?", tools=[WEATHER_TOOL]
    )
    second = client.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny, 24C"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "It is sunny in Paris." and second.previous_response_id == first.id

    messages = fake_server.engine.requests[-1].messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]  # instructions are not carried over
    assert messages[0].text == "Weather in Paris?"
    assert messages[1].parts == [ToolCallPart("call_1", "get_weather", '{"city": "Paris"}')]
    assert messages[2].parts == [ToolResultPart("call_1", "sunny, 24C", name="get_weather")]

    client.responses.create(model="m", previous_response_id=second.id, input="Thanks!")
    messages = fake_server.engine.requests[-1].messages
    assert [(m.role, m.text) for m in messages[-2:]] == [("assistant", "It is sunny in Paris."), ("user", "Thanks!")]
    assert len(messages) == 5


def test_function_call_items_sent_back_by_the_client(fake_server: FakeServer) -> None:
    """Without a store: the client replays the output items itself (the stateless pattern)."""
    client = fake_server.openai()
    fake_server.engine.enqueue(WEATHER_CALL)
    first = client.responses.create(model="m", input="Paris?", tools=[WEATHER_TOOL], store=False)
    call = first.output[0]
    assert isinstance(call, ResponseFunctionToolCall)
    client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
        ],
        tools=[WEATHER_TOOL],
    )
    messages = fake_server.engine.requests[-1].messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[2].parts == [ToolResultPart("call_1", "rain", name="get_weather")]


def test_reasoning_input_items_join_the_assistant_turn(fake_server: FakeServer) -> None:
    fake_server.openai().responses.create(
        model="m",
        input=[
            {"role": "user", "content": "2+2?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "add"}]},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
    )
    assistant = fake_server.engine.requests[-1].messages[1]
    assert assistant.role == "assistant" and assistant.parts == [ReasoningPart("add"), TextPart("4")]


def test_text_format_json_schema_reaches_the_ir(fake_server: FakeServer) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = fake_server.openai().responses.create(
        model="m",
        input="A city?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    assert fake_server.engine.requests[-1].output_format == OutputFormat(
        "json_schema", schema=schema, name="city", strict=True
    )
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"

    fake_server.openai().responses.create(model="m", input="JSON!", text={"format": {"type": "json_object"}})
    assert fake_server.engine.requests[-1].output_format == OutputFormat("json_object")


class Person(BaseModel):
    name: str
    age: int


def test_responses_parse_with_a_pydantic_model(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue('{"name": "Ada", "age": 36}', '{"name": "Alan", "age": 41}')
    client = fake_server.openai()
    parsed = client.responses.parse(model="m", input="A person?", text_format=Person)
    assert parsed.output_parsed == Person(name="Ada", age=36)
    output_format = fake_server.engine.requests[-1].output_format
    assert output_format.kind == "json_schema" and output_format.strict and output_format.name == "Person"
    assert output_format.schema is not None and set(output_format.schema["properties"]) == {"name", "age"}

    with client.responses.stream(model="m", input="Another?", text_format=Person) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == Person(name="Alan", age=41)


def test_max_output_tokens_makes_the_response_incomplete(fake_server: FakeServer) -> None:
    script = [TextDelta("Once"), TextDelta(" upon"), Finished("length")]
    client = fake_server.openai()
    fake_server.engine.enqueue(script, script)
    response = client.responses.create(model="m", input="A story", max_output_tokens=2)
    assert fake_server.engine.requests[-1].sampling.max_tokens == 2
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Once upon"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]

    events = list(client.responses.create(model="m", input="A story", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


SERVER_TOOL_RUN = [
    TextDelta("Let me compute."),
    ToolRunStart(call_id="srv_1", name="python", arguments='{"code": "6*7"}'),
    ToolResult(call_id="srv_1", name="python", arguments='{"code": "6*7"}', output="42"),
    TextDelta("It is 42."),
]


def test_server_tool_frames_are_tolerated_by_the_sdk_stream(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue(SERVER_TOOL_RUN, SERVER_TOOL_RUN)
    with client.responses.stream(model="m", input="6*7?") as stream:
        events = list(stream)
        final = stream.get_final_response()

    run = next(e for e in events if e.type == "tool_call")  # type: ignore[comparison-overlap]
    result = next(e for e in events if e.type == "tool_result")  # type: ignore[comparison-overlap]
    assert run.status == "running"  # type: ignore[attr-defined]
    assert (result.call_id, result.name, result.output, result.is_error) == ("srv_1", "python", "42", False)  # type: ignore[attr-defined]
    assert final.output_text == "Let me compute.It is 42."
    assert all(item.type == "message" for item in final.output)  # never a function_call to execute
    assert final.model_extra and final.model_extra["tool_results"][0]["output"] == "42"

    raw = list(client.responses.create(model="m", input="6*7?", stream=True))
    assert [e.type for e in raw].count("tool_result") == 1  # type: ignore[comparison-overlap]
    assert raw[-1].type == "response.completed"


def test_server_tool_results_are_an_extension_field_when_not_streaming(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue(SERVER_TOOL_RUN, "Sure.")
    response = client.responses.create(model="m", input="6*7?")
    assert response.output_text == "Let me compute.It is 42."
    assert [item.type for item in response.output] == ["message", "message"]
    assert response.model_extra and response.model_extra["tool_results"] == [
        {
            "call_id": "srv_1",
            "name": "python",
            "arguments": '{"code": "6*7"}',
            "output": "42",
            "is_error": False,
            "attachments": [],
            "session_restored": False,
        }
    ]
    # The next turn sees the server's call and its result in the conversation.
    client.responses.create(model="m", previous_response_id=response.id, input="And 7*8?")
    roles = [m.role for m in fake_server.engine.requests[-1].messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]


@pytest.mark.parametrize("stream", [False, True])
def test_engine_errors_before_output_are_4xx(fake_server: FakeServer, stream: bool) -> None:
    fake_server.engine.enqueue(ContextLengthExceeded("the prompt is 9000 tokens; the context holds 4096"))
    with pytest.raises(openai.BadRequestError) as caught:
        fake_server.openai().responses.create(model="m", input="long", stream=stream)
    assert caught.value.code == "context_length_exceeded"


RESPONSE_FIELDS = {
    # Every field of the current `Response` object that this server has a value for.
    "presence_penalty",
    "frequency_penalty",
    "top_logprobs",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt",
    "conversation",
    "background",
    "completed_at",
    "truncation",
    "user",
}


def sent_fields(model: BaseModel) -> set[str]:
    """The fields the server sent (not the SDK's defaults), declared by the SDK or not."""
    return set(model.model_fields_set) | set(model.model_extra or {})


def test_the_response_object_has_the_full_set_of_fields_streamed_or_not(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("One.", "Two.")
    client = fake_server.openai()
    asked = {"top_logprobs": 3, "safety_identifier": "user-hash-1", "prompt_cache_key": "my-prefix"}
    # The penalties are Open Responses fields the SDK has no parameter for.
    penalties = {"presence_penalty": 0.5, "frequency_penalty": -0.25}
    asked_all = {**asked, **penalties}
    response = client.responses.create(model="m", input="hi", **asked, extra_body=penalties)  # type: ignore[call-overload]
    raw = response.model_dump()
    assert sent_fields(response) >= RESPONSE_FIELDS
    assert {k: raw[k] for k in asked_all} == asked_all
    assert raw["service_tier"] == "default"
    # The sampler got the penalties.
    sampling = fake_server.engine.requests[-1].sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.25)

    events = list(client.responses.create(model="m", input="hi", stream=True, **asked, extra_body=penalties))  # type: ignore[call-overload]
    created = events[0]
    assert created.type == "response.created"
    assert sent_fields(created.response) >= RESPONSE_FIELDS
    assert created.response.prompt_cache_key == "my-prefix"


def test_top_logprobs_over_openai_limit_is_a_400(fake_server: FakeServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        fake_server.openai().responses.create(model="m", input="hi", top_logprobs=50)
    assert "top_logprobs" in caught.value.message
