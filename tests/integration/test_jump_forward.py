"""Jump-forward decoding on the real model: grammar-forced text is drafted and verified, and
the output stays what one token a step gives.

Equality is checked bit for bit with `determinism="full"` (see test_speculative.py); every
test also checks that forced drafts were made or decodes saved, so none passes by doing nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator

import httpx
import jsonschema
import llama_cpp
import openai
import pytest

from runtime.config import EngineConfig
from runtime.engine.grammar import schema_grammar
from runtime.engine.jumpforward import ROW_COST_CPU, ROW_COST_GPU, ForcedAcceptance, ForcedText, forced_draft_pays
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import GrammarMatcher, SamplerParams
from runtime.engine.scheduler import Scheduler, SequenceJob
from runtime.engine.toolcalls.formats import GenericFormat
from runtime.engine.toolcalls.generic import tools_prompt
from runtime.ir import ToolChoice, ToolSpec
from tests.integration.test_scheduler import GREEDY, Collector, prompt
from tests.servers import CliServer, toolstudio

pytestmark = pytest.mark.integration

PYTHON = ToolSpec(
    "python",
    "Run Python code in a persistent kernel",
    {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
)
ENVELOPE = '{"tool_calls": [{"name": "python", "arguments": {'  # what the forced-call grammar forces first
# Property names long enough to draft (FORCED_MIN_TOKENS): after the model opens one with `"`,
# the rest of the name up to the closing quote is forced.
SCHEMA = {
    "type": "object",
    "properties": {"full_name": {"type": "string", "maxLength": 40}, "year_of_birth": {"type": "integer"}},
    "required": ["full_name", "year_of_birth"],
    "additionalProperties": False,
}


class Counted:
    """A scheduler (jump-forward on or off) that counts its `llama_decode` calls."""

    def __init__(self, model: LlamaModel, jump_forward: bool) -> None:
        config = EngineConfig(
            model_path=model.path, ctx_size=1024, threads=2, parallel=2, max_queue=4, jump_forward=jump_forward
        )
        self.scheduler = Scheduler(model, config, determinism="full")
        self.decodes = 0
        real = self.scheduler._step

        def step() -> None:
            self.scheduler.batch.n_tokens = 0  # a step with nothing to decode leaves it at 0
            real()
            self.decodes += self.scheduler.batch.n_tokens > 0

        self.scheduler._step = step  # type: ignore[method-assign]

    def generate(self, tokens: list[int], params: SamplerParams, max_tokens: int = 64) -> tuple[list[int], str]:
        collector = Collector()
        self.scheduler.submit(SequenceJob(tokens, params, max_tokens, collector.deliver))
        done = collector.wait(timeout=300)
        return collector.tokens, done.reason

    def close(self) -> None:
        self.scheduler.close()


@pytest.fixture(scope="module")
def on(model: LlamaModel) -> Iterator[Counted]:
    counted = Counted(model, jump_forward=True)
    yield counted
    counted.close()


@pytest.fixture(scope="module")
def off(model: LlamaModel) -> Iterator[Counted]:
    counted = Counted(model, jump_forward=False)
    yield counted
    counted.close()


def text_of(model: LlamaModel, tokens: list[int]) -> str:
    return b"".join(model.piece(t) for t in tokens).decode()


def forced_call(model: LlamaModel) -> tuple[list[int], SamplerParams]:
    grammar = GenericFormat().grammar([PYTHON], ToolChoice("function", "python"), False).gbnf
    ask = (
        f"<|im_start|>system\n{tools_prompt([PYTHON])}<|im_end|>\n"
        "<|im_start|>user\nUse python to compute 17*23 + 100.<|im_end|>\n<|im_start|>assistant\n"
    )
    return model.tokenize(ask, add_special=False), dataclasses.replace(GREEDY, grammar=grammar)


def test_a_forced_call_envelope_is_drafted_and_the_output_is_unchanged(
    model: LlamaModel, on: Counted, off: Counted
) -> None:
    tokens, params = forced_call(model)
    expected, reason = off.generate(tokens, params)
    assert reason == "eog" and text_of(model, expected).startswith(ENVELOPE)
    drafted, accepted, decodes = on.scheduler.drafted, on.scheduler.accepted, on.decodes
    got, _ = on.generate(tokens, params)
    assert got == expected
    kept = on.scheduler.accepted - accepted
    assert on.scheduler.drafted - drafted >= 10 and kept >= 10, "the envelope was not drafted"
    # Each kept draft token is a decode step saved (a draft cut short costs none extra).
    assert on.decodes - decodes <= len(expected) + 1 - kept


def test_structured_output_is_the_same_and_valid(model: LlamaModel, on: Counted, off: Counted) -> None:
    ask = prompt(model, "Give Ada Lovelace's name and birth year as JSON: Ada Lovelace, 1815.")
    for params in (GREEDY, SamplerParams(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05, seed=3)):
        params = dataclasses.replace(params, grammar=schema_grammar(SCHEMA, strict=True))
        drafted = on.scheduler.drafted
        got, _ = on.generate(ask, params, max_tokens=160)
        assert got == off.generate(ask, params, max_tokens=160)[0]
        jsonschema.validate(json.loads(text_of(model, got)), SCHEMA)
        assert on.scheduler.drafted > drafted  # `full_name` and `year_of_birth` are forced


def test_unforced_output_gets_no_drafts(model: LlamaModel, on: Counted) -> None:
    drafted = on.scheduler.drafted
    on.generate(prompt(model, "Name a colour."), GREEDY, max_tokens=16)
    on.generate(prompt(model, "Write a number."), dataclasses.replace(GREEDY, grammar="root ::= [0-9]+"), 8)
    assert on.scheduler.drafted == drafted


# -- ForcedText on grammar states --------------------------------------------------------------


@pytest.fixture(scope="module")
def forced(model: LlamaModel) -> ForcedText:
    return ForcedText(model)


def accept_text(model: LlamaModel, grammar: GrammarMatcher, text: str) -> None:
    for token in model.tokenize(text, add_special=False):
        assert grammar.allows(token)
        grammar.accept(token)


def test_forced_text_stops_at_a_branch_and_leaves_the_state(model: LlamaModel, forced: ForcedText) -> None:
    grammar = GrammarMatcher(model.vocab, 'root ::= "{\\"answer\\": " [0-9] "}"')
    try:
        first = forced.draft(grammar, 16)
        # The digits branch after `{"answer": `: its last token is held back (it may merge on).
        assert first and '{"answer": '.startswith(text_of(model, first))
        assert forced.draft(grammar, 16) == first  # probing did not move the grammar
        assert len(forced.draft(grammar, 1)) == 1
        assert forced.draft(grammar, 0) == []
        accept_text(model, grammar, '{"answer": 4')
        assert text_of(model, forced.draft(grammar, 16)) == "}"  # the grammar's end: kept whole
        accept_text(model, grammar, "}")
        assert forced.draft(grammar, 16) == []  # only an end token can follow
    finally:
        grammar.close()


def test_a_non_ascii_character_next_is_no_draft(model: LlamaModel, forced: ForcedText) -> None:
    grammar = GrammarMatcher(model.vocab, 'root ::= "é" "x"')
    try:
        assert forced.draft(grammar, 8) == []
        assert not grammar.allows(int(llama_cpp.llama_vocab_eos(model.vocab)))  # and it is not the end
    finally:
        grammar.close()


def test_forced_text_before_a_non_ascii_character_holds_its_last_token_back(
    model: LlamaModel, forced: ForcedText
) -> None:
    # `"Z` + `ü` may be one token for the model: only what comes before the last token is sure.
    grammar = GrammarMatcher(model.vocab, 'root ::= "{\\"city\\": \\"Zürich\\"}"')
    try:
        text = '{"city": "Z'
        draft = forced.draft(grammar, 32)
        assert draft and draft == model.tokenize(text, add_special=False)[:-1]
    finally:
        grammar.close()


def test_markers_are_drafted_as_the_control_tokens_and_end_tokens_never(model: LlamaModel, forced: ForcedText) -> None:
    start = model.tokenize("<|im_start|>", add_special=False)
    assert len(start) == 1 and not model.is_eog(start[0])
    # A marker then a branch: the marker is one control token, which nothing merges with.
    grammar = GrammarMatcher(model.vocab, 'root ::= "<|im_start|>" [a-z]+')
    try:
        assert forced.draft(grammar, 8) == start
    finally:
        grammar.close()
    # Forced text that runs into an end token: drafted up to it (the end token ends the output).
    grammar = GrammarMatcher(model.vocab, 'root ::= "{\\"done\\": true}<|im_end|>"')
    try:
        draft = forced.draft(grammar, 16)
        assert text_of(model, draft) == '{"done": true}' and not any(model.is_eog(t) for t in draft)
    finally:
        grammar.close()


def test_forced_drafts_stop_where_they_do_not_pay() -> None:
    # One stream on a CPU: a draft pays when 40 % of it is kept; eight streams need 84 %.
    assert forced_draft_pays(0.5, 1, ROW_COST_CPU) and not forced_draft_pays(0.35, 1, ROW_COST_CPU)
    assert forced_draft_pays(0.9, 8, ROW_COST_CPU) and not forced_draft_pays(0.8, 8, ROW_COST_CPU)
    assert forced_draft_pays(0.4, 8, ROW_COST_GPU)  # rows next to free on a GPU
    # A model that spells the forced text its own way keeps ~1 token of each 16-token draft:
    # the prior (0.9) gives it one draft, then drafting stops.
    share = ForcedAcceptance()
    drafts = 0
    while forced_draft_pays(share.kept, 1, ROW_COST_CPU):
        share.update(drafted=16, kept=1)
        drafts += 1
    assert drafts == 1
    kept_whole = ForcedAcceptance()
    for _ in range(50):
        kept_whole.update(drafted=16, kept=16)
    assert forced_draft_pays(kept_whole.kept, 8, ROW_COST_CPU)


def test_optional_space_is_a_branch(model: LlamaModel, forced: ForcedText) -> None:
    grammar = GrammarMatcher(model.vocab, schema_grammar(SCHEMA, strict=True))
    try:
        draft = forced.draft(grammar, 32)
        # `{` then an optional space: nothing past the `{` is forced, so nothing is drafted.
        assert text_of(model, draft) in ("", "{")
    finally:
        grammar.close()


# -- through `toolstudio run` ------------------------------------------------------------------


def forced_call_through_the_sdk(server: CliServer) -> tuple[str, int]:
    """A forced python call through the openai SDK: its arguments, and the server's
    `toolstudio_draft_tokens_accepted` after it."""
    key = toolstudio("keys", "create", data_dir=server.data_dir).strip()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=300)
    tool = {"type": "function", "function": {"name": PYTHON.name, "description": PYTHON.description,
                                             "parameters": PYTHON.parameters}}  # fmt: skip
    reply = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Use python to compute 17*23 + 100."}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "python"}},
        max_tokens=64,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "python"  # type: ignore[union-attr]
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    found = re.search(r"^toolstudio_draft_tokens_accepted (\S+)$", metrics, re.MULTILINE)
    assert found is not None
    return calls[0].function.arguments, int(float(found.group(1)))  # type: ignore[union-attr]


def test_the_server_jumps_forward_by_default_and_not_when_told(tmp_path_factory: pytest.TempPathFactory) -> None:
    flags = ("--threads", "2", "--parallel", "1", "--temp", "0", "--determinism", "full")
    results = {}
    for name, extra in (("on", ()), ("off", ("--jump-forward", "off"))):
        server = CliServer(tmp_path_factory.mktemp(f"jump-{name}"), args=(*flags, *extra)).start()
        try:
            results[name] = forced_call_through_the_sdk(server)
        finally:
            server.stop()
    assert results["on"][0] == results["off"][0]  # the same call, token for token
    assert results["on"][1] >= 10 and results["off"][1] == 0
