"""logprobs and `n > 1` on the real server (packaged SmolLM2, greedy by default) through the
official openai SDK, and the KV copy that lets n choices share one prefill (scheduler level)."""

from __future__ import annotations

import math
import queue

import openai
import pytest

from runtime.config import EngineConfig
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import SamplerParams
from runtime.engine.scheduler import Done, Scheduler, SequenceJob, Token

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Name three colours."}]


def test_chat_logprobs_are_the_models_distribution(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(model="default", messages=ASK, max_tokens=12, logprobs=True, top_logprobs=5)
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens  # type: ignore[union-attr]
    # The tokens' bytes are exactly the text.
    assert b"".join(bytes(t.bytes or []) for t in content).decode() == choice.message.content
    for token in content:
        top = [t.logprob for t in token.top_logprobs]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert all(lp <= 0 for lp in top) and sum(math.exp(lp) for lp in top) <= 1 + 1e-6
        # Greedy decoding picks the most likely token of the raw distribution.
        assert token.token == token.top_logprobs[0].token
        assert token.logprob == pytest.approx(top[0], abs=1e-6)


def test_chat_logprobs_stream_equal_non_stream(oai: openai.OpenAI) -> None:
    kwargs = {"model": "default", "messages": ASK, "max_tokens": 10, "logprobs": True, "top_logprobs": 2}
    whole = oai.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    streamed = []
    for chunk in oai.chat.completions.create(**kwargs, stream=True):  # type: ignore[call-overload]
        for choice in chunk.choices:
            if choice.logprobs is not None:
                streamed += choice.logprobs.content or []
    expected = whole.choices[0].logprobs.content
    assert [(t.token, t.bytes) for t in streamed] == [(t.token, t.bytes) for t in expected]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in expected], abs=1e-4)


def test_top_logprobs_above_20_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="default", messages=ASK, max_tokens=2, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="default", input="hi", top_logprobs=21)


def test_responses_logprobs_in_the_part_and_the_deltas(oai: openai.OpenAI) -> None:
    kwargs = {"model": "default", "input": "Name three colours.", "max_output_tokens": 10}
    include = ["message.output_text.logprobs"]
    response = oai.responses.create(**kwargs, include=include, top_logprobs=3)  # type: ignore[call-overload]
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs and len(part.logprobs) == response.usage.output_tokens  # type: ignore[union-attr]
    assert b"".join(bytes(lp.bytes) for lp in part.logprobs).decode() == part.text
    assert all(len(lp.top_logprobs) == 3 for lp in part.logprobs)
    deltas = []
    for event in oai.responses.create(**kwargs, include=include, top_logprobs=3, stream=True):  # type: ignore[call-overload]
        if event.type == "response.output_text.delta":
            deltas += event.logprobs
    assert [d.token for d in deltas] == [lp.token for lp in part.logprobs]
    plain = oai.responses.create(**kwargs)  # type: ignore[call-overload]
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_n_greedy_choices_equal_the_single_answer(oai: openai.OpenAI) -> None:
    single = oai.chat.completions.create(model="default", messages=ASK, max_tokens=16)
    several = oai.chat.completions.create(model="default", messages=ASK, max_tokens=16, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert {c.message.content for c in several.choices} == {single.choices[0].message.content}
    assert several.usage is not None and single.usage is not None
    assert several.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counted once
    assert several.usage.completion_tokens == 3 * single.usage.completion_tokens


def test_n_seeded_choice_i_is_the_answer_with_seed_plus_i(oai: openai.OpenAI) -> None:
    kwargs = {"model": "default", "messages": ASK, "max_tokens": 16, "temperature": 1.0}
    several = oai.chat.completions.create(**kwargs, n=3, seed=40)  # type: ignore[call-overload]
    singles = [oai.chat.completions.create(**kwargs, seed=40 + i).choices[0].message.content for i in range(3)]  # type: ignore[call-overload]
    assert [c.message.content for c in several.choices] == singles
    assert len(set(singles)) > 1  # the seeds do differ, or the test proves nothing
    text = {0: "", 1: "", 2: ""}
    finishes = {}
    for chunk in oai.chat.completions.create(**kwargs, n=3, seed=40, stream=True):  # type: ignore[call-overload]
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [text[i] for i in range(3)] == singles
    assert sorted(finishes) == [0, 1, 2]


def test_n_above_max_n_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="default", messages=ASK, max_tokens=2, n=9)


# -- the KV copy, at the scheduler --------------------------------------------------------------


def _run_choices(sched: Scheduler, prompt: list[int], n: int) -> list[tuple[list[int], Done]]:
    greedy = SamplerParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
    inboxes: list[queue.Queue[Token | Done]] = [queue.Queue() for _ in range(n)]
    jobs: list[SequenceJob] = []
    for inbox in inboxes:
        jobs.append(SequenceJob(prompt, greedy, 8, inbox.put, fork_of=jobs[0] if jobs else None))
    sched.submit(*jobs)
    results = []
    for inbox in inboxes:
        tokens = []
        while not isinstance(item := inbox.get(timeout=120), Done):
            tokens.append(item.id)
        results.append((tokens, item))
    return results


@pytest.mark.parametrize("n", [3, 6], ids=["n-within-slots", "n-above-slots"])
def test_choices_copy_the_first_ones_prompt_instead_of_prefilling_it(model: LlamaModel, n: int) -> None:
    config = EngineConfig(model_path=model.path, ctx_size=512, threads=2, parallel=4, cache_ram_mib=0)
    sched = Scheduler(model, config)
    try:
        text = "Describe, in a few words, the colour of the sea on a stormy winter morning."
        prompt = model.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", add_special=False)
        results = _run_choices(sched, prompt, n)
    finally:
        sched.close()
    first_tokens, first_done = results[0]
    assert first_done.cached_tokens == 0  # a fresh prompt: the first choice prefills it
    for tokens, done in results[1:]:
        assert done.cached_tokens == len(prompt) - 1  # the rest reuse it: only the last token is decoded
        assert tokens == first_tokens  # greedy: the copied KV gives the same answer
