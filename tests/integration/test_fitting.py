"""Tool output shortened to fit the context, counted by the real engine's tokenizer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine.llama import LlamaEngine
from runtime.fitting import answer_room, fit_results
from runtime.ir import ChatRequest, Message, TextPart, ToolCallPart, ToolResultPart, ToolSpec
from runtime.model_source import embedded_model

CONTEXT = 512


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    config = EngineConfig(model_path=embedded_model(), threads=2, parallel=1, ctx_size=CONTEXT)
    engine = LlamaEngine(config, model_id="smollm2", defaults=SamplingDefaults())
    yield engine
    engine.scheduler.close()
    engine.model.close()


def test_a_long_tool_result_is_cut_in_the_middle_to_fit_and_the_cut_is_counted(engine: LlamaEngine) -> None:
    output = "\n".join(f"row {i}: value={i * 7}" for i in range(400))  # ~4,000 tokens
    tool = ToolSpec("python", "Run Python.", {"type": "object", "properties": {"code": {"type": "string"}}})
    request = ChatRequest(
        "m",
        [
            Message("user", [TextPart("Print the table.")]),
            Message("assistant", [ToolCallPart("call_1", "python", '{"code": "print(table)"}')]),
            Message("tool", [ToolResultPart("call_1", output, False, "python")]),
        ],
        tools=[tool],
    )

    async def go() -> tuple[ChatRequest | None, int, int]:
        fitted = await fit_results(engine, request, 1)
        assert fitted is not None
        return fitted, await engine.count_tokens(request), await engine.count_tokens(fitted)

    fitted, before, after = asyncio.run(go())
    assert before > CONTEXT
    assert after <= CONTEXT - answer_room(CONTEXT)
    assert after > CONTEXT - answer_room(CONTEXT) - 40  # it keeps about as much as fits, not nothing
    seen = fitted.messages[-1].parts[0].content  # type: ignore[union-attr]
    assert seen.startswith("row 0: value=0") and seen.endswith("row 399: value=2793")
    [cut] = re.findall(r"\[\.\.\. (\d+) tokens of output cut here", seen)
    head, _, tail = seen.partition("\n[...")
    tail = tail.split("...]\n", 1)[1]
    removed = output[len(head) : len(output) - len(tail)]
    tokens = len(engine.model.tokenize(removed, add_special=False))
    assert abs(int(cut) - tokens) <= 2  # the tokenizer's own count of what was cut
