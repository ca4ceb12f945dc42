"""Continuous batching on the real model: slots, isolation, cancellation, back-pressure."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import re
import threading
import time
from collections.abc import Iterator

import pytest

from runtime.config import EngineConfig
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import SamplerParams
from runtime.engine.scheduler import Done, Scheduler, SequenceJob, Token
from runtime.errors import Overloaded

pytestmark = pytest.mark.integration

GREEDY = SamplerParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
DIGITS = 'root ::= [0-9]+ " " [0-9]+'


@pytest.fixture
def scheduler(model: LlamaModel) -> Iterator[Scheduler]:
    sched = Scheduler(model, EngineConfig(model_path=model.path, ctx_size=1024, threads=2, parallel=4, max_queue=2))
    yield sched
    sched.close()


class Collector:
    def __init__(self) -> None:
        self.items: queue.Queue[Token | Done] = queue.Queue()
        self.tokens: list[int] = []

    def deliver(self, item: Token | Done) -> None:
        self.items.put(item)

    def wait(self, timeout: float = 60.0) -> Done:
        while True:
            item = self.items.get(timeout=timeout)
            if isinstance(item, Done):
                return item
            self.tokens.append(item.id)


def prompt(model: LlamaModel, text: str) -> list[int]:
    return model.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", add_special=False)


def run(scheduler: Scheduler, jobs: list[tuple[list[int], SamplerParams]], max_tokens: int = 24) -> list[list[int]]:
    collectors = [Collector() for _ in jobs]
    for (tokens, params), c in zip(jobs, collectors, strict=True):
        scheduler.submit(SequenceJob(tokens, params, max_tokens, c.deliver))
    for c in collectors:
        assert c.wait().reason in ("eog", "length")
    return [c.tokens for c in collectors]


def test_batched_results_equal_solo_results_token_for_token(model: LlamaModel) -> None:
    # Bit for bit only where llama.cpp computes a token alike whatever else is in its batch:
    # "full" determinism (the default "prompt" covers cold versus cached prompts, decoded alone).
    config = EngineConfig(model_path=model.path, ctx_size=1024, threads=2, parallel=4, max_queue=2)
    scheduler = Scheduler(model, config, determinism="full")
    try:
        batched_equals_solo(scheduler, model)
    finally:
        scheduler.close()


def batched_equals_solo(scheduler: Scheduler, model: LlamaModel) -> None:
    jobs = [
        (prompt(model, "What is the capital of France?"), GREEDY),
        (prompt(model, "Give me two numbers."), SamplerParams(0.0, 1.0, 0, 0.0, grammar=DIGITS)),
        (prompt(model, "Tell me a story."), SamplerParams(0.9, 0.95, 40, 0.05, seed=7)),
        (prompt(model, "Name a fruit."), SamplerParams(1.2, 0.9, 20, 0.0, repeat_penalty=1.3, seed=99)),
        (prompt(model, "Count to ten."), GREEDY),  # waits for a slot, then joins the batch
    ]
    solo = [run(scheduler, [job])[0] for job in jobs]
    together = run(scheduler, jobs)
    assert together == solo
    constrained = b"".join(model.piece(t) for t in together[1]).decode()
    assert re.fullmatch(r"[0-9]+( [0-9]*)?", constrained), constrained  # the grammar held in the batch
    free = b"".join(model.piece(t) for t in together[0]).decode()
    assert not re.fullmatch(r"[0-9 ]+", free)


def test_cancel_frees_the_slot_within_one_step(scheduler: Scheduler, model: LlamaModel) -> None:
    collector = Collector()
    job = SequenceJob(prompt(model, "Write a very long essay."), GREEDY, 1000, collector.deliver)
    scheduler.submit(job)
    for _ in range(3):
        assert isinstance(collector.items.get(timeout=30), Token)
    job.cancelled = True
    late = 0
    while True:
        item = collector.items.get(timeout=5)
        if isinstance(item, Done):
            break
        late += 1
    assert item.reason == "cancelled"
    assert late <= 1  # at most the token already in flight
    assert scheduler.counts() == (0, 0)


def test_prefix_reuse_lands_on_the_slot_holding_the_prefix(scheduler: Scheduler, model: LlamaModel) -> None:
    first = prompt(model, "Describe the sea in one sentence.")
    run(scheduler, [(first, GREEDY)], max_tokens=4)
    longer = first + model.tokenize(" And the sky?", add_special=False)
    collector = Collector()
    scheduler.submit(SequenceJob(longer, GREEDY, 4, collector.deliver))
    done = collector.wait()
    assert done.cached_tokens == len(first)


def test_queue_past_its_bound_is_refused(model: LlamaModel) -> None:
    sched = Scheduler(model, EngineConfig(model_path=model.path, ctx_size=512, threads=2, parallel=1, max_queue=1))
    try:
        blockers = [Collector(), Collector()]
        jobs = [SequenceJob(prompt(model, "Write a long poem."), GREEDY, 400, c.deliver) for c in blockers]
        sched.submit(jobs[0])
        deadline = time.monotonic() + 30
        while sched.counts()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        sched.submit(jobs[1])  # waits
        with pytest.raises(Overloaded):
            sched.submit(SequenceJob(prompt(model, "hi"), GREEDY, 4, Collector().deliver))
        for job in jobs:
            job.cancelled = True
        assert all(c.wait().reason == "cancelled" for c in blockers)
    finally:
        sched.close()


def test_many_threads_submitting_at_once(scheduler: Scheduler, model: LlamaModel) -> None:
    texts = [f"Say the number {i}." for i in range(6)]
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = run(scheduler, [(prompt(model, texts[i]), GREEDY)], max_tokens=12)[0]

    # max_queue=2 with 4 slots: 6 simultaneous submissions fit (4 active + 2 waiting).
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(6))
    for i in range(6):
        assert results[i] == run(scheduler, [(prompt(model, texts[i]), GREEDY)], max_tokens=12)[0]


class StepLog:
    """Deliveries from several jobs in the order the decode thread made them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Token | Done]] = []
        self.lock = threading.Lock()

    def collector(self, name: str) -> Collector:
        collector = Collector()
        keep = collector.deliver

        def deliver(item: Token | Done) -> None:
            with self.lock:
                self.events.append((name, item))
            keep(item)

        collector.deliver = deliver  # type: ignore[method-assign]
        return collector

    def first_token(self, name: str) -> int:
        with self.lock:
            return next(i for i, (n, item) in enumerate(self.events) if n == name and isinstance(item, Token))

    def tokens_between(self, name: str, start: int, end: int) -> int:
        with self.lock:
            return sum(1 for n, item in self.events[start:end] if n == name and isinstance(item, Token))


def wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@contextlib.contextmanager
def running_stream(model: LlamaModel, parallel: int) -> Iterator[tuple[Scheduler, StepLog]]:
    """A scheduler (prefill chunk 64) with one long greedy stream, "runner", already decoding."""
    config = EngineConfig(model_path=model.path, ctx_size=1024, threads=2, parallel=parallel, prefill_chunk=64)
    sched = Scheduler(model, config)
    log = StepLog()
    runner = SequenceJob(prompt(model, "Write a very long essay."), GREEDY, 1000, log.collector("runner").deliver)
    try:
        sched.submit(runner)
        wait_for(lambda: log.events)
        yield sched, log
    finally:
        runner.cancelled = True
        sched.close()


def test_a_long_prompt_stalls_a_running_stream_for_one_chunk_at_a_time(model: LlamaModel) -> None:
    with running_stream(model, parallel=2) as (sched, log):
        long_prompt = prompt(model, "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 40)
        assert len(long_prompt) > 5 * 64
        submitted = len(log.events)
        sched.submit(SequenceJob(long_prompt, GREEDY, 2, log.collector("long").deliver))
        wait_for(lambda: any(n == "long" for n, _ in log.events))
        # One chunk of the long prompt per step, and the runner decodes a token in each of them.
        assert log.tokens_between("runner", submitted, log.first_token("long")) >= len(long_prompt) // 64 - 1


def test_queued_prompts_get_their_first_tokens_in_turn(model: LlamaModel) -> None:
    with running_stream(model, parallel=4) as (sched, log):
        # Each prompt is over half a chunk: two never fit in one step.
        texts = {
            name: f"Tell me, in great detail and step by step, everything you know about the letter {name}, its history, its sound and its shape in every alphabet."
            for name in "abc"
        }
        jobs = {name: prompt(model, text) for name, text in texts.items()}
        assert all(32 < len(tokens) <= 64 for tokens in jobs.values())
        collectors = {name: log.collector(name) for name in jobs}
        for name, tokens in jobs.items():
            sched.submit(SequenceJob(tokens, GREEDY, 2, collectors[name].deliver))
        for collector in collectors.values():
            collector.wait()
        a, b, c = (log.first_token(name) for name in "abc")
        assert a < b < c
        # The runner kept decoding between them: each prompt had a step of its own.
        assert log.tokens_between("runner", a, b) >= 1 and log.tokens_between("runner", b, c) >= 1


@pytest.mark.parametrize("cache_ram_mib", [64, 0], ids=["host-cache", "no-host-cache"])
def test_an_evicted_conversation_comes_back_from_host_ram(model: LlamaModel, cache_ram_mib: int) -> None:
    config = EngineConfig(model_path=model.path, ctx_size=1024, threads=2, parallel=1, cache_ram_mib=cache_ram_mib)
    sched = Scheduler(model, config)
    try:
        first = prompt(model, "Here is a recipe for soup: " + "chop onions, add water, boil it well, " * 8)
        other = prompt(model, "An entirely different question about the history of ships and sailing.")
        run(sched, [(first, GREEDY)], max_tokens=4)
        run(sched, [(other, GREEDY)], max_tokens=4)  # takes the only slot
        follow_up = first + model.tokenize(" What do I need?", add_special=False)
        collector = Collector()
        sched.submit(SequenceJob(follow_up, GREEDY, 8, collector.deliver))
        done = collector.wait()
    finally:
        sched.close()
    if cache_ram_mib:
        assert done.cached_tokens == len(first)  # restored, not prefilled again
        # ...and the restored KV is the right one: the answer equals a cold run's.
        cold = Scheduler(model, dataclasses.replace(config, cache_ram_mib=0))
        try:
            assert collector.tokens == run(cold, [(follow_up, GREEDY)], max_tokens=8)[0]
        finally:
            cold.close()
    else:
        assert done.cached_tokens < 10  # only the chat template's first tokens are shared
