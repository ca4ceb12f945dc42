"""Each native tool-call family end to end: the real server, the family's real chat template
(llama.cpp's models/templates), a tiny random-weight model on the family's real vocabulary
(tests/tiny_model.py), and the official `openai` and `anthropic` SDKs.

The model is wired to write a script (its `favour` text: the family's call marker, after a short
thinking block where the template has one) whenever it can; after the marker the lazy grammar
takes over, so `tool_choice=auto` yields a real call in the family's own syntax, which the
family's parser must turn back into the call. Forced calls, a tool-result turn, a server-side
python call and the thinking split run on the same server, one per family.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from tests import upstream
from tests.servers import CliServer, toolstudio
from tests.tiny_model import SETTLE, build_tiny_model

pytestmark = pytest.mark.integration

QWEN_ADDED = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
QWEN_SETTLE = ("</tool_call>", "<|im_end|>")


@dataclass(frozen=True)
class Family:
    """One row: a family's template on its vocabulary, and what its tiny model writes."""

    format: str  # the name `--tool-format` would use; the server must detect it from the template
    template: str  # models/templates/<template>.jinja
    vocab: str  # models/ggml-vocab-<vocab>.gguf
    script: str  # what the model writes whenever it can (see tests/tiny_model.py)
    added: tuple[str, ...] = ()  # the released model's special tokens the vocabulary file lacks
    settle: tuple[str, ...] = ()  # after '"' and '}': the call's closing marker, the end of turn
    thinking: bool = False  # the script opens with a thinking block the server must split off
    xfail: dict[str, str] = field(default_factory=dict)  # test name -> why it fails today

    @property
    def id(self) -> str:
        return f"{self.format}:{self.template}"


def deepseek(*names: str) -> tuple[str, ...]:
    """DeepSeek's special tokens: `<BAR name BAR>`, BAR being the full-width U+FF5C."""
    return tuple(f"<\uff5c{name}\uff5c>" for name in names)


DEEPSEEK_ADDED = deepseek("tool▁calls▁begin", "tool▁calls▁end", "tool▁call▁begin", "tool▁call▁end", "tool▁sep")
DEEPSEEK_ADDED += deepseek("tool▁outputs▁begin", "tool▁outputs▁end", "tool▁output▁begin", "tool▁output▁end")
DEEPSEEK_ADDED += (*deepseek("User", "Assistant", "end▁of▁sentence"), "<think>", "</think>")
DEEPSEEK_SETTLE = deepseek("tool▁call▁end", "tool▁calls▁end", "end▁of▁sentence")
DEEPSEEK_CALLS = deepseek("tool▁calls▁begin")[0]
MISTRAL_ADDED = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[INST]", "[/INST]")
MISTRAL_ADDED += ("[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
LLAMA_EOS = ("]", "<|end_of_text|>")  # Mistral's `[TOOL_CALLS][...]` ends with `]`, then EOS
GLM_ADDED = ("<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "<|user|>", "<|assistant|>", "<|observation|>")
GLM_ADDED += ("<|system|>",)
MINIMAX_ADDED = ("<minimax:tool_call>", "</minimax:tool_call>", "<think>", "</think>", "]~b]", "]~!b[", "[e~[")
HARMONY_ADDED = ("<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|call|>", "<|return|>", "<|constrain|>")
KIMI_ADDED = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>")
KIMI_ADDED += ("<|tool_call_argument_begin|>", "<|tool_call_end|>", "<|im_user|>", "<|im_assistant|>")
KIMI_ADDED += ("<|im_system|>", "<|im_middle|>")
COHERE_ADDED = ("<|START_ACTION|>", "<|END_ACTION|>", "<|START_THINKING|>", "<|END_THINKING|>")
COHERE_ADDED += ("<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>")

FAMILIES = [
    Family("hermes", "Qwen-Qwen2.5-7B-Instruct", "qwen2", "<tool_call>", QWEN_ADDED, QWEN_SETTLE),
    Family(
        "hermes", "Qwen-Qwen3-0.6B", "qwen2", "<think>Hmm</think><tool_call>", QWEN_ADDED, QWEN_SETTLE, thinking=True
    ),
    # the generation prompt opens `<think>` itself
    Family(
        "qwen3-coder",
        "Qwen3.5-4B",
        "qwen35",
        "Hmm</think><tool_call>",
        QWEN_ADDED,
        QWEN_SETTLE,
        thinking=True,
    ),
    Family("qwen3-coder", "Qwen3-Coder", "qwen2", "<tool_call>", QWEN_ADDED, QWEN_SETTLE),
    Family(
        "gemma4",
        "google-gemma-4-31B-it",
        "gemma-4",
        "<|tool_call>",
        (),
        ("<tool_call|>", "<turn|>"),
    ),
    Family("mistral-v11", "Mistral-Small-3.2-24B-Instruct-2506", "llama-bpe", "[TOOL_CALLS]", MISTRAL_ADDED, LLAMA_EOS),
    Family("mistral", "mistralai-Mistral-Nemo-Instruct-2407", "llama-bpe", "[TOOL_CALLS]", MISTRAL_ADDED, LLAMA_EOS),
    Family(
        "llama3",
        "meta-llama-Llama-3.1-8B-Instruct",
        "llama-bpe",
        "<|python_tag|>",
        ("<|python_tag|>", "<|eom_id|>"),
        ("<|eom_id|>", "<|eot_id|>"),
    ),
    Family(
        "deepseek-r1-distill",
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
        "qwen2",
        f"Hmm</think>{DEEPSEEK_CALLS}",  # the generation prompt opens `<think>` itself
        DEEPSEEK_ADDED,
        (*DEEPSEEK_SETTLE, "<|endoftext|>"),
        thinking=True,
    ),
    Family(
        "deepseek-v3.1",
        "deepseek-ai-DeepSeek-V3.1",
        "deepseek-llm",
        f"Hmm</think>{DEEPSEEK_CALLS}",  # thinking is on by default: the prompt opens `<think>`
        DEEPSEEK_ADDED,
        DEEPSEEK_SETTLE,
        thinking=True,
    ),
    Family(
        "command-r7b",
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
        "command-r",
        "<|START_ACTION|>",
        COHERE_ADDED,
        ("<|END_ACTION|>", "<|END_OF_TURN_TOKEN|>"),
    ),
    Family(
        "glm",
        "GLM-4.6",
        "qwen2",
        "<think>Hmm</think><tool_call>",
        (*QWEN_ADDED, *GLM_ADDED),
        ("</arg_value>", "</tool_call>", "<|observation|>", "<|endoftext|>"),
        thinking=True,
    ),
    Family(
        "minimax-m2",
        "MiniMax-M2",
        "qwen2",
        "Hmm</think><minimax:tool_call>",
        MINIMAX_ADDED,
        ("</minimax:tool_call>", "[e~[", "<|endoftext|>"),
        thinking=True,
    ),
    Family(
        "harmony",
        "openai-gpt-oss-120b",
        "qwen2",
        "<|channel|>commentary to=functions.",
        HARMONY_ADDED,
        ("<|call|>",),
    ),
    Family(
        "kimi-k2",
        "moonshotai-Kimi-K2",
        "qwen2",
        "<|tool_calls_section_begin|>",
        KIMI_ADDED,
        ("<|tool_call_end|>", "<|tool_calls_section_end|>", "<|im_end|>"),
    ),
]

WEATHER_PARAMS = {
    "type": "object",
    # An enum: a random-weight model cannot end free text by itself (it has no reason to write
    # a closing quote or `</parameter>`), but the grammar ends a literal for it, so the call
    # completes in every family's syntax and the parser is what the test checks.
    "properties": {"city": {"type": "string", "enum": ["Paris", "Perth"], "description": "City name"}},
    "required": ["city"],
}
OAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": WEATHER_PARAMS,
        },
    }
]
CLAUDE_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Get the current weather for a city", "input_schema": WEATHER_PARAMS}
]
ASK: list[Any] = [{"role": "user", "content": "What's the weather in Perth right now?"}]
GREEDY = {"temperature": 0.0}
MAX_TOKENS = 200  # a call takes 30-60 tokens: the grammar's literals come out in small pieces
ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback")


@dataclass
class Served:
    family: Family
    server: CliServer
    key: str

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.base_url}/v1", api_key=self.key, max_retries=0, timeout=120)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.server.base_url, api_key=self.key, max_retries=0, timeout=120)

    def log_since(self, offset: int) -> str:
        return self.server.log()[offset:]

    def errors_since(self, offset: int) -> list[str]:
        return [line for line in self.log_since(offset).splitlines() if ERROR_LINE.search(line)]


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.id)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    family: Family = request.param
    settle = (*SETTLE, *family.settle)
    model = build_tiny_model(family.vocab, favour=family.script, settle=settle, extra_tokens=family.added)
    home = tmp_path_factory.mktemp(f"native-{family.format}")
    template = upstream.template_path(family.template)
    args = ("--model", str(model), "--chat-template-file", str(template), "--temp", "0", "--threads", "2")
    server = CliServer(home, args=(*args, "--parallel", "1")).start()
    try:
        key = toolstudio("keys", "create", "--name", "tests", data_dir=home).strip()
        yield Served(family, server, key)
    finally:
        server.stop()


@pytest.fixture
def fam(served: Served, request: pytest.FixtureRequest) -> Served:
    """`served`, with this test marked xfail(strict) where the family's row says it fails."""
    test = request.node.originalname
    if test in served.family.xfail:
        request.applymarker(pytest.mark.xfail(strict=True, reason=served.family.xfail[test]))
    return served


def check_openai_call(response: Any, name: str = "get_weather") -> Any:
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == name and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    return call


def test_detects_the_family(fam: Served) -> None:
    """The server picks the family from the template's markers alone (no --tool-format)."""
    assert f"tool-call format: {fam.family.format} (" in fam.server.log()


@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_call(fam: Served, choice: str) -> None:
    offset = len(fam.server.log())
    if choice == "required":
        response = fam.openai().chat.completions.create(
            model="m", messages=ASK, tools=OAI_TOOLS, tool_choice="required", max_tokens=MAX_TOKENS, **GREEDY
        )
        check_openai_call(response)
    else:
        message = fam.anthropic().messages.create(
            model="m",
            max_tokens=MAX_TOKENS,
            messages=ASK,
            tools=CLAUDE_TOOLS,
            tool_choice={"type": "tool", "name": "get_weather"},
            extra_body=GREEDY,
        )
        assert message.stop_reason == "tool_use", message
        use = next(b for b in message.content if b.type == "tool_use")
        assert use.name == "get_weather"
        jsonschema.validate(use.input, WEATHER_PARAMS)
    assert not fam.errors_since(offset)


def test_auto_call(fam: Served) -> None:
    """Nothing forces a call: the model writes the family's marker, the lazy grammar starts
    there, and the family's parser gives the call back (no markup left in the text)."""
    offset = len(fam.server.log())
    response = fam.openai().chat.completions.create(
        model="m", messages=ASK, tools=OAI_TOOLS, tool_choice="auto", max_tokens=MAX_TOKENS, **GREEDY
    )
    check_openai_call(response)
    content = response.choices[0].message.content or ""
    assert "get_weather" not in content, content

    # the same through the anthropic SDK, streaming
    with fam.anthropic().messages.stream(
        model="m", max_tokens=MAX_TOKENS, messages=ASK, tools=CLAUDE_TOOLS, extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use", final
    use = next(b for b in final.content if b.type == "tool_use")  # parallel calls: the first
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER_PARAMS)
    assert not fam.errors_since(offset)


def test_tool_result_turn(fam: Served) -> None:
    """The call goes back into the conversation with its result, rendered by the family's own
    template; the next request succeeds (whatever the random model then says)."""
    client = fam.openai()
    first = client.chat.completions.create(
        model="m", messages=ASK, tools=OAI_TOOLS, tool_choice="required", max_tokens=MAX_TOKENS, **GREEDY
    )
    call = check_openai_call(first)
    offset = len(fam.server.log())
    follow_up = client.chat.completions.create(
        model="m",
        messages=[
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 31, "sky": "sunny"})},
        ],
        tools=OAI_TOOLS,
        max_tokens=60,
        **GREEDY,
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")

    claude = fam.anthropic()
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Perth"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "31C, sunny"}
    message = claude.messages.create(
        model="m",
        max_tokens=60,
        tools=CLAUDE_TOOLS,
        messages=[*ASK, {"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}],
        extra_body=GREEDY,
    )
    assert message.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert not fam.errors_since(offset), fam.log_since(offset)


@pytest.mark.sandbox
def test_server_python_call(fam: Served) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed: server tools need its sandbox")
    offset = len(fam.server.log())
    stream = fam.openai().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "What is 6 * 7? Use Python."}],
        tool_choice={"type": "function", "function": {"name": "python"}},
        stream=True,
        max_tokens=MAX_TOKENS,
        extra_body={
            "enable_tools": True,
            "enabled_tools": ["python"],
            "session_id": f"native-{fam.family.format}",
            "max_tool_calls_per_message": 1,
            **GREEDY,
        },
    )
    chunks = list(stream)
    results = [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]
    assert results, [c.model_dump(exclude_none=True) for c in chunks][:5]
    # The call ran in the kernel: the random model's code either worked or failed in Python
    # (an error result with the exception in its output), never the tool itself.
    result = results[0]
    assert not result["is_error"] or re.search(r"\w+(Error|Exception)\b", result["output"]), result
    assert "python tool failed" not in result["output"] and "kernel failed" not in result["output"], result
    assert not fam.errors_since(offset), fam.log_since(offset)


def test_thinking_split(fam: Served) -> None:
    if not fam.family.thinking:
        pytest.skip(f"{fam.family.template} has no thinking block")
    response = fam.openai().chat.completions.create(
        model="m", messages=ASK, tools=OAI_TOOLS, tool_choice="auto", max_tokens=MAX_TOKENS, **GREEDY
    )
    message = response.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content") or ""
    assert reasoning.strip() == "Hmm", message
    assert "Hmm" not in (message.content or "") and "think>" not in (message.content or "")
    check_openai_call(response)
