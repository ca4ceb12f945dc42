"""The Responses API through the official `openai` SDK against the real server
(`toolstudio run` with the packaged SmolLM2-135M model).

A 135M model follows instructions loosely, so these tests check what a user can rely on:
the prompt really holds what was sent (token counts), stream and non-stream agree at
temperature 0, stored turns chain, and constrained output validates.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai.types.responses import ResponseFunctionToolCall, ResponseInputMessageItem
from pydantic import BaseModel

pytestmark = pytest.mark.integration

PARIS = "Tell me two facts about Paris."
GREEDY = {"model": "default", "temperature": 0.0}

# Long enough that rendering it must cost far more tokens than the template's default
# system prompt, which it replaces.
INSTRUCTIONS = (
    "You are a meticulous geography tutor. Always answer in exactly one short sentence, never use lists, "
    "never ask a follow-up question, avoid any greeting, and when a colour is asked for, answer only with "
    "the single word blue. Prefer plain words over jargon and keep numbers as digits. Do not mention these "
    "rules, do not apologise, and do not explain your reasoning to the student at any point."
)

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_create_with_a_string(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="default", input=PARIS, max_output_tokens=40)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.model == "SmolLM2-135M-Instruct"
    assert len(response.output_text.split()) >= 3
    assert response.usage is not None
    assert response.usage.input_tokens > 10
    assert 0 < response.usage.output_tokens <= 40
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_create_with_items_renders_every_turn(oai: openai.OpenAI) -> None:
    alone = oai.responses.create(input=[{"role": "user", "content": "And Rome?"}], max_output_tokens=5, **GREEDY)
    turns = oai.responses.create(
        input=[
            {"role": "developer", "content": "You are terse."},
            {"role": "user", "content": [{"type": "input_text", "text": PARIS}]},
            {"role": "assistant", "content": "Paris is the capital of France. It has the Eiffel Tower."},
            {"role": "user", "content": "And Rome?"},
        ],
        max_output_tokens=20,
        **GREEDY,
    )
    assert turns.output_text.strip()
    assert alone.usage is not None and turns.usage is not None
    assert turns.usage.input_tokens >= alone.usage.input_tokens + 20  # the earlier turns are in the prompt


def test_instructions_are_rendered_and_not_carried_over(oai: openai.OpenAI) -> None:
    plain = oai.responses.create(input="What colour is the sky?", max_output_tokens=5, **GREEDY)
    instructed = oai.responses.create(
        instructions=INSTRUCTIONS, input="What colour is the sky?", max_output_tokens=5, **GREEDY
    )
    assert plain.usage is not None and instructed.usage is not None
    assert instructed.usage.input_tokens >= plain.usage.input_tokens + 40
    assert instructed.instructions == INSTRUCTIONS

    follow_up = oai.responses.create(previous_response_id=instructed.id, input="Why?", max_output_tokens=5, **GREEDY)
    assert follow_up.instructions is None and follow_up.usage is not None
    # The earlier turn is there (more than the plain question), the instructions are not
    # (OpenAI semantics): they alone cost more than the answer and the new question.
    assert follow_up.usage.input_tokens > plain.usage.input_tokens
    assert follow_up.usage.input_tokens < instructed.usage.input_tokens + instructed.usage.output_tokens


def test_stream_matches_non_stream(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(input=PARIS, max_output_tokens=30, **GREEDY)
    with oai.responses.stream(input=PARIS, max_output_tokens=30, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response() if whole.status == "completed" else None
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == f"response.{whole.status}"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text and text.strip()
    if final is not None:
        assert final.output_text == whole.output_text


def test_store_retrieve_chain_and_delete(oai: openai.OpenAI) -> None:
    first = oai.responses.create(input="Name a fruit.", max_output_tokens=10, **GREEDY)
    fetched = oai.responses.retrieve(first.id)
    assert fetched.id == first.id and fetched.output_text == first.output_text
    [item] = oai.responses.input_items.list(first.id).data
    assert isinstance(item, ResponseInputMessageItem) and item.content[0].text == "Name a fruit."  # type: ignore[union-attr]

    second = oai.responses.create(
        previous_response_id=first.id, input="Name another one.", max_output_tokens=10, **GREEDY
    )
    assert first.usage is not None and second.usage is not None
    # The prompt holds the first question and answer before the new one.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens

    oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(first.id)
    assert oai.responses.retrieve(second.id).previous_response_id == first.id


def test_json_schema_output_validates(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        input="Give a city and its population as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}},
        max_output_tokens=60,
        **GREEDY,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), CITY_SCHEMA)


class City(BaseModel):
    city: str
    population: int


def test_responses_parse(oai: openai.OpenAI) -> None:
    parsed = oai.responses.parse(
        input="Give a city and its population.", text_format=City, max_output_tokens=60, **GREEDY
    )
    assert isinstance(parsed.output_parsed, City)


def test_forced_function_call_then_function_call_output(oai: openai.OpenAI) -> None:
    with oai.responses.stream(
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        **GREEDY,
    ) as stream:
        events = list(stream)
        first = stream.get_final_response()
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    assert "response.output_text.delta" not in types
    calls = [item for item in first.output if isinstance(item, ResponseFunctionToolCall)]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_TOOL["parameters"])  # type: ignore[arg-type]

    second = oai.responses.create(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 degrees."}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        max_output_tokens=40,
        **GREEDY,
    )
    assert second.status in ("completed", "incomplete")
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output were rendered
    assert second.output  # an answer or another call, never an empty turn
