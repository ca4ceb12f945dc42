"""FIFO admission (#15): under load, no request waits while a later one is admitted ahead of it.

Thirty requests with prompts from a few tokens to a few hundred go through the real engine
(the packaged SmolLM2 model, four slots) at once; the scheduler numbers each job as it is
submitted and again as it takes a slot, and the two orders must be the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine.llama import LlamaEngine
from runtime.engine.scheduler import SequenceJob
from runtime.events import Completion, fold
from runtime.ir import ChatRequest, Message, Sampling, TextPart
from runtime.model_source import embedded_model

pytestmark = pytest.mark.integration

FILLER = "the quick brown fox jumps over the lazy dog "


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    engine = LlamaEngine(
        EngineConfig(model_path=embedded_model(), ctx_size=1024, threads=2, parallel=4, prefill_chunk=64),
        model_id="smollm2",
        defaults=SamplingDefaults(temperature=0.0),
    )
    yield engine
    asyncio.run(engine.close())


def mixed_request(i: int) -> ChatRequest:
    # Prompt lengths cycle through short, medium and long (about 10 to 350 tokens), so a
    # short prompt always queues right behind a long one.
    words = FILLER * (0, 2, 8, 30, 1)[i % 5]
    text = f"Request {i}: {words}Say a number."
    return ChatRequest(
        model="smollm2",
        messages=[Message("user", [TextPart(text)])],
        sampling=Sampling(max_tokens=2 + i % 3, temperature=0.0),
    )


def test_thirty_mixed_requests_are_admitted_in_arrival_order(engine: LlamaEngine) -> None:
    requests = [mixed_request(i) for i in range(30)]
    prompts = [engine.tokenize_prompt(engine.render(r), r)[0] for r in requests]
    assert min(map(len, prompts)) < 40 and max(map(len, prompts)) > 300  # the mix the test is about
    scheduler = engine.scheduler
    submitted: list[SequenceJob] = []
    submit = scheduler.submit

    def recording_submit(job: SequenceJob) -> None:
        submit(job)
        submitted.append(job)

    scheduler.submit = recording_submit  # type: ignore[method-assign]

    async def main() -> list[Completion]:
        # All thirty at once: request i calls `generate` i-th (gather starts them in order).
        return await asyncio.gather(*((fold(engine.generate(r))) for r in requests))

    try:
        completions = asyncio.run(main())
    finally:
        del scheduler.submit
    assert all(c.finish.reason in ("stop", "length") for c in completions)
    arrival = [prompts.index(job.prompt) for job in submitted]
    assert arrival == list(range(30))  # reached the scheduler in the order they arrived
    admitted = sorted(submitted, key=lambda job: job.admitted)
    assert [job.submitted for job in admitted] == sorted(job.submitted for job in submitted)
    assert [prompts.index(job.prompt) for job in admitted] == list(range(30))
