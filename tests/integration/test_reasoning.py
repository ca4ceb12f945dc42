"""Reasoning on/off on the real model, with a Qwen3-style template (`--chat-template-file`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import jsonschema
import openai
import pytest

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine.llama import LlamaEngine
from runtime.ir import ChatRequest, Message, TextPart
from runtime.model_source import embedded_model
from tests.servers import CliServer, toolstudio

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).parent.parent / "data" / "qwen3_style.jinja"
HI = [{"role": "user", "content": "What is 2 + 2?"}]


def rendered(reasoning: str, request_choice: bool | None) -> str:
    engine = LlamaEngine(
        EngineConfig(model_path=embedded_model(), threads=2, parallel=1, ctx_size=512, reasoning=reasoning,
                     chat_template_file=TEMPLATE),
        model_id="smollm2",
        defaults=SamplingDefaults(),
    )  # fmt: skip
    try:
        return engine.render(ChatRequest("m", [Message("user", [TextPart("hi")])], reasoning=request_choice))
    finally:
        engine.scheduler.close()
        engine.model.close()


def test_reasoning_off_really_changes_the_prompt() -> None:
    assert rendered("off", None).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert rendered("on", None).endswith("<|im_start|>assistant\n<think>\n")
    # auto: on wherever the template has the switch, as llama-server does (QwQ's template
    # closes the block when `enable_thinking` is merely undefined).
    assert rendered("auto", None).endswith("<|im_start|>assistant\n<think>\n")
    assert rendered("on", False).endswith("</think>\n\n")  # the request's choice wins


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliServer, str]]:
    home = tmp_path_factory.mktemp("reasoning-home")
    server = CliServer(home, args=("--threads", "2", "--chat-template-file", str(TEMPLATE), "--reasoning", "off"))
    server.start()
    yield server, toolstudio("keys", "create", data_dir=home).strip()
    server.stop()


def test_per_request_controls_in_every_dialect(thinking_server: tuple[CliServer, str]) -> None:
    server, key = thinking_server
    claude = anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0)
    off = claude.messages.count_tokens(model="m", messages=HI).input_tokens  # the server default: off
    on = claude.messages.count_tokens(
        model="m", messages=HI, thinking={"type": "enabled", "budget_tokens": 1024}
    ).input_tokens
    disabled = claude.messages.count_tokens(model="m", messages=HI, thinking={"type": "disabled"}).input_tokens
    assert off == disabled and on < off  # "<think>\n" is shorter than the empty block

    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    # Thinking on: the template opens the block, so what the model writes is reasoning.
    thought = oai.chat.completions.create(
        model="m",
        messages=HI,
        max_tokens=16,
        temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    assert thought.choices[0].message.model_extra["reasoning_content"]
    assert not thought.choices[0].message.content
    same = oai.chat.completions.create(model="m", messages=HI, max_tokens=16, temperature=0, reasoning_effort="high")
    assert (
        same.choices[0].message.model_extra["reasoning_content"]
        == thought.choices[0].message.model_extra["reasoning_content"]
    )

    plain = oai.chat.completions.create(model="m", messages=HI, max_tokens=16, temperature=0)
    assert plain.choices[0].message.content
    assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})

    streamed = oai.chat.completions.create(
        model="m", messages=HI, max_tokens=16, temperature=0, reasoning_effort="high", stream=True
    )
    pieces = [(c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in streamed if c.choices]
    assert "".join(pieces) == thought.choices[0].message.model_extra["reasoning_content"]

    response = oai.responses.create(
        model="m", input="What is 2 + 2?", max_output_tokens=16, reasoning={"effort": "high"}
    )
    assert response.output[0].type == "reasoning"

    message = claude.messages.create(
        model="m", max_tokens=2048, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"temperature": 0},
    )  # fmt: skip
    assert message.content[0].type == "thinking" and message.content[0].thinking


def test_anthropic_thinking_budget_closes_the_block(thinking_server: tuple[CliServer, str]) -> None:
    server, key = thinking_server
    claude = anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0)

    story = [{"role": "user", "content": "Write a long story about a dragon."}]  # long thinking

    def ask(budget: int) -> anthropic.types.Message:
        return claude.messages.create(
            model="m", max_tokens=60, messages=story, thinking={"type": "enabled", "budget_tokens": budget},
            extra_body={"temperature": 0},
        )  # fmt: skip

    # SmolLM2 never closes a thinking block by itself: with room to spare it thinks to the end.
    assert [b.type for b in ask(59).content] == ["thinking"]

    budgeted = ask(12)
    assert [b.type for b in budgeted.content] == ["thinking", "text"]
    thinking, answer = budgeted.content
    assert answer.text.strip()  # type: ignore[union-attr]
    # The engine closed the block at the budget (a token or two in flight may overshoot it).
    base = claude.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}]).input_tokens
    spent = claude.messages.count_tokens(
        model="m",
        messages=[{"role": "user", "content": "x" + thinking.thinking}],  # type: ignore[union-attr]
    ).input_tokens
    assert 12 - 2 <= spent - base <= 12 + 4


def test_structured_output_and_forced_calls_come_after_the_thinking_block(
    thinking_server: tuple[CliServer, str],
) -> None:
    # The prompt opens `<think>`: a grammar that applied from the first token would make the
    # model write its JSON inside the thinking block (and the answer would come back empty).
    server, key = thinking_server
    claude = anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0)
    schema = {
        "type": "object",
        # Bounded, so a random-ish sample cannot run past max_tokens inside the answer.
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["n"],
        "additionalProperties": False,
    }
    message = claude.messages.create(
        model="m",
        max_tokens=80,
        messages=[{"role": "user", "content": "Pick a number. Answer in JSON."}],
        thinking={"type": "enabled", "budget_tokens": 8},
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    jsonschema.validate(json.loads(message.content[1].text), schema)  # type: ignore[union-attr]

    weather = {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
        },
    }
    called = claude.messages.create(
        model="m",
        max_tokens=80,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        thinking={"type": "enabled", "budget_tokens": 8},
        tools=[weather],
        # One call: sampled parallel calls (three, at times) could run past max_tokens (1 in 6 runs).
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert called.content[0].type == "thinking"
    assert called.content[-1].type == "tool_use" and called.stop_reason == "tool_use"
    assert "city" in called.content[-1].input  # type: ignore[union-attr]
