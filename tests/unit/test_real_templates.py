"""Every public chat template llama.cpp ships (models/templates/*.jinja of the installed
llama-cpp-python's sdist), rendered the way the engine renders them.

Two things a user switching from llama-server would notice, checked for all of them:
which tool-call family a template is detected as (the table below; a template that is
not listed must detect as generic), and that a plain chat, a chat with tools and a
conversation with an earlier call and its result all render: the tools reach the prompt,
and a template's refusal is a clean 400 (`InvalidRequest`), never a crash.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls import detect_format
from runtime.errors import InvalidRequest
from runtime.ir import Message, TextPart, ToolCallPart, ToolResultPart, ToolSpec
from tests.upstream import llama_cpp_models

DETECTED = {
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "command-r7b",
    "GLM-4.6": "glm",
    "GLM-4.7-Flash": "glm",
    "Spark2.5": "glm",
    "inclusionai-ling-3.0-flash": "glm",
    "poolside-Laguna-S-2.1": "glm",
    "poolside-Laguna-XS-2.1": "glm",
    "poolside-Laguna-XS.2": "glm",
    "Kimi-K2-Instruct": "kimi-k2",
    "Kimi-K2-Thinking": "kimi-k2",
    "moonshotai-Kimi-K2": "kimi-k2",
    "MiniMax-M2": "minimax-m2",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral-v11",
    "mistralai-Ministral-3-14B-Reasoning-2512": "mistral-v11",
    "unsloth-mistral-Devstral-Small-2507": "mistral-v11",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "qwen3-coder",
    "Qwen3-Coder": "qwen3-coder",
    "Qwen3.5-4B": "qwen3-coder",
    "StepFun3.5-Flash": "qwen3-coder",
    "Bielik-11B-v3.0-Instruct": "hermes",
    "MiMo-VL": "hermes",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "Qwen-QwQ-32B": "hermes",
    "Qwen-Qwen2.5-7B-Instruct": "hermes",
    "Qwen-Qwen3-0.6B": "hermes",
    "Reka-Edge": "hermes",
    "ibm-granite-granite-4.0": "hermes",
    "ibm-granite-granite-4.1": "hermes",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseek-r1-distill",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek-r1-distill",
    "llama-cpp-deepseek-r1": "deepseek-r1",
    "deepseek-ai-DeepSeek-V3.1": "deepseek-v3.1",
    "google-gemma-4-31B-it": "gemma4",
    "google-gemma-4-31B-it-interleaved": "gemma4",
    "openai-gpt-oss-120b": "harmony",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama3",
}

# Templates that refuse these conversations on purpose (their own raise_exception / variables).
REFUSES = {
    "fireworks-ai-llama-3-firefunction-v2": "reads a `functions` variable of its own",
}

WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
SYSTEM = Message("system", [TextPart("You answer in one sentence.")])
QUESTION = Message("user", [TextPart("What is the weather in Rome?")])
HISTORY = [
    SYSTEM,
    QUESTION,
    Message("assistant", [ToolCallPart("call8k2Lq9Xz", "get_weather", '{"city": "Rome"}')]),
    Message("tool", [ToolResultPart("call8k2Lq9Xz", "18 C and sunny", False, "get_weather")]),
    Message("assistant", [TextPart("It is 18 C and sunny in Rome.")]),
    Message("user", [TextPart("And in Paris?")]),
]


def template_names() -> list[str]:
    return sorted(p.stem for p in (llama_cpp_models() / "templates").glob("*.jinja"))


def source(name: str) -> str:
    return Path(llama_cpp_models() / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


def render(name: str, messages: list[Message], tools: list[ToolSpec]) -> str:
    src = source(name)
    fmt = detect_format(src)
    template = ChatTemplate(src, bos_token="<s>", eos_token="</s>")
    return template.render(
        fmt.prepare_messages(messages, tools),
        tools=tools if tools and fmt.native else None,
        string_arguments=fmt.string_arguments,
        transform=lambda dicts: fmt.template_messages(dicts, src),
    )


def test_the_table_names_only_templates_that_exist() -> None:
    names = set(template_names())
    assert len(names) > 50
    assert set(DETECTED) <= names and set(REFUSES) <= names


@pytest.mark.parametrize("name", template_names())
def test_detection(name: str) -> None:
    assert detect_format(source(name)).name == DETECTED.get(name, "generic")


@pytest.mark.parametrize("name", template_names())
def test_plain_tools_and_history_render(name: str) -> None:
    cases = {
        "plain": ([SYSTEM, QUESTION], []),
        "tools": ([SYSTEM, QUESTION], [WEATHER]),
        "history": (HISTORY, [WEATHER]),
    }
    for case, (messages, tools) in cases.items():
        if name in REFUSES:
            with pytest.raises(InvalidRequest):
                render(name, messages, tools)
            continue
        prompt = render(name, messages, tools)
        assert "Rome" in prompt, case
        if tools:
            assert "get_weather" in prompt, case
        if case == "history":
            assert "18 C and sunny" in prompt and "Paris" in prompt
        # The system text is never lost, even where the template has no system role.
        assert "one sentence" in prompt, case


def test_templates_without_a_system_role_get_it_in_the_first_user_message() -> None:
    # Gemma 2 raises "System role not supported"; llama.cpp folds the system text in instead.
    prompt = render("google-gemma-2-2b-it", [SYSTEM, QUESTION], [])
    assert prompt.index("You answer in one sentence.") < prompt.index("What is the weather in Rome?")
    assert ChatTemplate(source("google-gemma-2-2b-it")).supports_system_role is False
    assert ChatTemplate(source("Qwen-Qwen2.5-7B-Instruct")).supports_system_role is True


def test_tool_results_then_images_render_on_a_template_that_insists_on_alternation() -> None:
    # The generic format turns tool results into a user message; a tool's images follow as
    # another one (runtime/agent.py). Gemma 2 raises on two user turns in a row.
    from runtime.ir import ImagePart

    image = Message("user", [TextPart("[1 image(s) displayed by the python call above:]"), ImagePart(data=b"png")])
    history = [*HISTORY[:4], image, HISTORY[4], HISTORY[5]]
    prompt = render("google-gemma-2-2b-it", history, [WEATHER])
    assert "18 C and sunny" in prompt and "displayed by the python call" in prompt
