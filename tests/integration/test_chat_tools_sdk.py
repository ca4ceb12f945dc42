"""Client-side tool calling and structured output on /v1/chat/completions, through the
official openai SDK against the real server — the seed documentation's examples."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.examples import COUNTRY_PICK

pytestmark = pytest.mark.integration

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. 'Paris'"}},
    "required": ["city"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": WEATHER_PARAMS,
        },
    }
]
ASK = [{"role": "user", "content": "What's the weather in Perth right now?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("tool_choice", ["required", NAMED], ids=["required", "named"])
def test_seed_get_weather_returns_a_valid_call(oai: openai.OpenAI, tool_choice: Any) -> None:
    response = oai.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice=tool_choice, temperature=0
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    tool_call = choice.message.tool_calls[0]
    assert tool_call.function.name == "get_weather"
    assert tool_call.id
    jsonschema.validate(json.loads(tool_call.function.arguments), WEATHER_PARAMS)

    # Streaming gives the same call (id aside): name first, then argument fragments.
    chunks = list(
        oai.chat.completions.create(
            model="default", messages=ASK, tools=TOOLS, tool_choice=tool_choice, temperature=0, stream=True
        )
    )
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == tool_call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_turn_gets_a_text_answer(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    follow_up = oai.chat.completions.create(
        model="default",
        messages=[
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 31, "sky": "sunny"})},
        ],
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=60,
    )
    answer = follow_up.choices[0].message
    assert answer.content and answer.content.strip()
    assert not answer.tool_calls
    assert follow_up.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_auto_is_accepted(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=80
    )
    message = response.choices[0].message
    if response.choices[0].finish_reason == "tool_calls":
        jsonschema.validate(json.loads(message.tool_calls[0].function.arguments), WEATHER_PARAMS)
    else:
        assert message.content is not None and "tool_calls" not in message.content


def test_seed_country_pick_validates_over_twenty_seeds(oai: openai.OpenAI) -> None:
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "country_pick", "schema": COUNTRY_PICK, "strict": True},
    }
    for seed in range(20):
        response = oai.chat.completions.create(
            model="default",
            stream=False,
            temperature=0.4 if seed else 0.0,
            seed=seed,
            max_tokens=1024,
            messages=[
                {"role": "system", "content": "You answer in JSON."},
                {
                    "role": "user",
                    "content": "Pick one country: Japan, Egypt, or Peru. Explain why in one sentence.",
                },
            ],
            response_format=response_format,
        )
        raw = response.choices[0].message.content or ""
        assert not raw.lstrip().startswith("```")  # no fences to strip, unlike the seed's workaround
        jsonschema.validate(json.loads(raw), COUNTRY_PICK)


def test_json_object_mode_returns_an_object(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="default",
        # Open-ended prompts make a 135M model loop inside a list until max_tokens (the
        # grammar keeps the shape, nothing makes the model stop); a concrete ask ends.
        messages=[
            {"role": "system", "content": "You answer in JSON."},
            {"role": "user", "content": "Describe a cat as a JSON object with name, color and age."},
        ],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


def test_unsupported_schema_keyword_is_a_400_naming_it(oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model="default",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
        )
    assert "'not'" in str(caught.value)
