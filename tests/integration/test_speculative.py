"""Speculative decoding on the real model: the same output as plain decoding, grammars kept.

Greedy equality is checked bit for bit with `determinism="full"`: there llama.cpp computes a
token alike however many rows its sequence has in the step (scheduler.py, DETERMINISM), so any
difference is the verification logic, not floating-point noise. Each test also checks that
drafts were proposed and kept, so it cannot pass by never speculating.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from runtime.config import EngineConfig
from runtime.engine.grammar import schema_grammar
from runtime.engine.model import LlamaModel, ModelLoadError
from runtime.engine.sampler import SamplerChain, SamplerParams
from runtime.engine.scheduler import Scheduler, SequenceJob
from runtime.engine.speculative import Acceptance, DraftLength, DraftWant, NgramDrafter
from runtime.model_source import embedded_model
from tests.integration.test_scheduler import GREEDY, Collector, prompt
from tests.servers import CliServer, cli, free_port, one_line_error, toolstudio

pytestmark = pytest.mark.integration

CODE = """def area(width, height):
    total = width * height
    return total


def perimeter(width, height):
    total = 2 * (width + height)
    return total
"""
EDIT = f"Rename the variable total to result in this code and print the whole code again:\n\n{CODE}"
RECORD = {"name": "Ada Lovelace", "born": 1815, "languages": ["English", "French"], "field": "mathematics"}
REPEAT = f"Repeat this JSON exactly, with the field name in upper case:\n{json.dumps(RECORD)}"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "born": {"type": "integer"}},
    "required": ["name", "born"],
    "additionalProperties": False,
}


def scheduler(model: LlamaModel, **spec: object) -> Scheduler:
    """With speculation, drafts always pay here (a flat cost table): these tests check that
    verification keeps the output, whatever this machine's measured costs would choose."""
    config = EngineConfig(model_path=model.path, ctx_size=1024, threads=2, parallel=4, max_queue=4)
    sched = Scheduler(model, dataclasses.replace(config, **spec), determinism="full")
    if sched.draft_length is not None:
        measured = sched.draft_length.cost
        assert measured[0] == 1.0 and measured == sorted(measured), measured
        sched.draft_length = DraftLength([1.0] * len(measured), learn=False)
    return sched


def generate(
    sched: Scheduler, jobs: Sequence[tuple[list[int], SamplerParams]], max_tokens: int = 96
) -> list[list[int]]:
    collectors = [Collector() for _ in jobs]
    for (tokens, params), c in zip(jobs, collectors, strict=True):
        sched.submit(SequenceJob(tokens, params, max_tokens, c.deliver))
    for c in collectors:
        assert c.wait(timeout=300).reason in ("eog", "length")
    return [c.tokens for c in collectors]


@pytest.fixture(scope="module")
def plain(model: LlamaModel) -> Iterator[Scheduler]:
    sched = scheduler(model)
    yield sched
    sched.close()


@pytest.fixture(scope="module")
def ngram(model: LlamaModel) -> Iterator[Scheduler]:
    sched = scheduler(model, spec_ngram=True)
    yield sched
    sched.close()


def sampled(seed: int) -> SamplerParams:
    return SamplerParams(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05, seed=seed)


def test_ngram_speculation_gives_the_plain_greedy_output(model: LlamaModel, plain: Scheduler, ngram: Scheduler) -> None:
    jobs = [
        (prompt(model, EDIT), GREEDY),
        (prompt(model, REPEAT), GREEDY),
        (prompt(model, "Count from 1 to 30."), GREEDY),
    ]
    expected = generate(plain, jobs)
    drafted, accepted = ngram.drafted, ngram.accepted
    assert generate(ngram, jobs) == expected  # all three decoded together, drafts verified in one batch
    assert [generate(ngram, [job])[0] for job in jobs] == expected  # and each alone
    assert ngram.drafted > drafted and ngram.accepted > accepted, "no draft was proposed or kept"


def test_seeded_sampling_is_the_same_with_and_without_drafts(
    model: LlamaModel, plain: Scheduler, ngram: Scheduler
) -> None:
    # Every kept token is drawn from the real model's distribution with the same RNG draw.
    jobs = [(prompt(model, EDIT), sampled(seed)) for seed in (1, 2, 3)]
    accepted = ngram.accepted
    assert generate(ngram, jobs) == generate(plain, jobs)
    assert ngram.accepted > accepted


def test_the_model_as_its_own_draft_keeps_nearly_every_draft_token(model: LlamaModel, plain: Scheduler) -> None:
    # A batch of 32: the draft model prefills each prompt (~60-140 tokens) in several decodes.
    sched = scheduler(model, draft_model_path=model.path, draft_max=4, batch_size=32)
    try:
        jobs = [(prompt(model, "Write a short story about a fox."), GREEDY), (prompt(model, REPEAT), GREEDY)]
        assert generate(sched, jobs) == generate(plain, jobs)
        assert sched.drafted > 20
        # The draft decodes without the target's determinism settings; near-ties may split.
        assert sched.accepted / sched.drafted > 0.9
    finally:
        sched.close()


def test_a_draft_model_with_another_vocabulary_is_refused(model: LlamaModel) -> None:
    from tests.tiny_model import build_tiny_model  # a random-weight model on Qwen's tokenizer

    other = build_tiny_model("qwen2")
    with pytest.raises(ModelLoadError, match="vocabulary"):
        scheduler(model, draft_model_path=other).close()


def test_structured_output_with_speculation_validates(model: LlamaModel, plain: Scheduler, ngram: Scheduler) -> None:
    grammar = schema_grammar(SCHEMA)
    ask = prompt(model, "Give Ada Lovelace's name and birth year as JSON: Ada Lovelace, 1815. Ada Lovelace, 1815.")
    jobs = [
        (ask, dataclasses.replace(GREEDY, grammar=grammar)),
        (ask, dataclasses.replace(sampled(7), grammar=grammar)),
    ]
    outputs = generate(ngram, jobs, max_tokens=160)
    assert outputs == generate(plain, jobs, max_tokens=160)
    for tokens in outputs:
        text = b"".join(model.piece(t) for t in tokens).decode()
        jsonschema.validate(json.loads(text), SCHEMA)


class Garbage(NgramDrafter):
    """Always proposes the same few tokens, whatever the text: drafts a grammar must cut."""

    def __init__(self, tokens: list[int]) -> None:
        super().__init__()
        self.tokens = tokens
        self.proposed: list[list[int]] = []

    def propose(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        drafts = [self.tokens[: want.k] for want in wants]
        self.proposed += drafts
        return drafts


def test_drafts_never_go_past_the_grammar(model: LlamaModel) -> None:
    digits = 'root ::= [0-9]+ "!"'
    letters = model.tokenize(" hello world", add_special=False)
    sched = scheduler(model, spec_ngram=True)
    try:
        garbage = Garbage(letters)
        sched.drafter = garbage
        ask = prompt(model, "Write a number.")
        out = generate(sched, [(ask, dataclasses.replace(GREEDY, grammar=digits))], max_tokens=12)[0]
        assert garbage.proposed, "the drafter was never asked"
        assert sched.drafted == 0, "a draft the grammar rejects reached the batch"
        text = b"".join(model.piece(t) for t in out).decode()
        assert text.rstrip("!").isdigit()
        # The same drafter without a grammar does reach the batch (the check above can fail).
        generate(sched, [(ask, GREEDY)], max_tokens=12)
        assert sched.drafted > 0
    finally:
        sched.close()


def test_grammar_allows_counts_the_valid_prefix_without_moving_the_state(model: LlamaModel) -> None:
    chain = SamplerChain(model.vocab, model.n_vocab, dataclasses.replace(GREEDY, grammar='root ::= "12" [a-z]+'))
    try:
        one, two = model.tokenize("1", add_special=False), model.tokenize("2", add_special=False)
        x = model.tokenize("x", add_special=False)
        assert chain.grammar_allows([*one, *two, *x, *one]) == 3
        assert chain.grammar_allows([*x]) == 0
        assert chain.grammar_allows([*one, *two]) == 2  # the probe above did not advance it
        assert chain.grammar_allows([model_eos(model)]) == 0
    finally:
        chain.close()


def model_eos(model: LlamaModel) -> int:
    import llama_cpp

    return int(llama_cpp.llama_vocab_eos(model.vocab))


def test_ngram_drafter_continues_the_latest_repeat() -> None:
    drafter, owner = NgramDrafter(), object()
    history = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3]
    assert drafter.propose([DraftWant(0, owner, history, 3)]) == [[4, 5, 9]]
    history += [4, 5, 7, 7, 2, 3]  # "2 3" now last followed by 4 5 7 (the latest occurrence wins)
    assert drafter.propose([DraftWant(0, owner, history, 8)]) == [[4, 5, 7, 7, 2, 3]]
    assert drafter.propose([DraftWant(0, owner, [5, 6, 7], 4)]) == [[]]  # a new owner: a fresh index
    assert drafter.propose([DraftWant(1, owner, history, 0)]) == [[]]


def test_draft_length_drafts_only_when_it_pays() -> None:
    flat = DraftLength([1.0, 1.05, 1.1, 1.15, 1.2])  # extra rows nearly free (a memory-bound GPU)
    steep = DraftLength([1.0, 1.9, 2.8, 3.7, 4.6])  # each row costs almost a whole step
    assert flat.choose(0.9) == 4 and flat.choose(0.0) == 0
    assert steep.choose(0.5) == 0 and steep.choose(0.99) > 0


# -- through `toolstudio run` and the SDK ------------------------------------------------------


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    home = tmp_path_factory.mktemp("speculative")
    args = ("--threads", "2", "--parallel", "2", "--temp", "0", "--spec", "ngram", "--draft-max", "4")
    args += ("--determinism", "full")
    server = CliServer(home, args=args).start()
    yield server
    server.stop()


def test_spec_ngram_serves_chat_and_structured_output_and_counts_drafts(spec_server: CliServer) -> None:
    key = toolstudio("keys", "create", data_dir=spec_server.data_dir).strip()
    client = openai.OpenAI(base_url=f"{spec_server.base_url}/v1", api_key=key, max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": REPEAT}], max_tokens=64
    )
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens > 0
    structured = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Ada Lovelace was born in 1815. Give her name and birth year."}],
        max_tokens=96,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}},
    )
    jsonschema.validate(json.loads(structured.choices[0].message.content or ""), SCHEMA)
    metrics = httpx.get(f"{spec_server.base_url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    found = re.search(r"^toolstudio_draft_tokens (\S+)$", metrics, re.MULTILINE)
    assert found is not None
    assert "speculative decoding with n-gram prompt lookup" in spec_server.log()
    assert "determinism full" in spec_server.log()


def test_draft_flags_are_checked_before_loading(tmp_path: Path) -> None:
    both = cli("run", "--spec", "ngram", "--model-draft", str(embedded_model()), "-p", str(free_port()), home=tmp_path)
    assert "choose one" in one_line_error(both)
    missing = cli("run", "--model-draft", str(tmp_path / "nope.gguf"), "-p", str(free_port()), home=tmp_path)
    assert "--model-draft" in one_line_error(missing)


def test_acceptance_counts_a_cut_draft_as_one_failure() -> None:
    # n-gram drafts are right or wrong as a whole: 8 drafted, 5 kept, then cut, is 5 successes
    # and 1 failure (the 3 after the cut were never tried), so the rate stays high.
    seen = Acceptance(kept=0.0, rejected=0.0)
    seen.update(drafted=8, kept=5)
    assert seen.rate == 5 / 6
    seen.update(drafted=8, kept=8)
    assert seen.rate > 5 / 6
    wrong = Acceptance()
    for _ in range(8):
        wrong.update(drafted=4, kept=0)
    assert wrong.rate < 0.2  # the prior's 0.8 fades in a few drafts
    before = wrong.rate
    wrong.update(drafted=0, kept=0)  # no draft: nothing learned
    assert wrong.rate == before


def test_a_draft_max_too_long_to_measure_is_refused_at_once(tmp_path: Path) -> None:
    # Found by hand: `--draft-max 100000` (capped only by the batch, 511) had the server measure
    # 1..512-row decodes at start, about an hour at 100 % CPU before it served anything; 64 took 53 s.
    for flag in ("--spec", "ngram"), ("--model-draft", str(embedded_model())):
        done = cli("run", *flag, "--draft-max", "100000", "-p", str(free_port()), home=tmp_path, timeout=30)
        assert "--draft-max" in one_line_error(done)
