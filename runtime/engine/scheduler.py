"""One decode loop for every request: continuous batching over llama.cpp sequence slots.

A single worker thread owns the `llama_context` (llama.cpp is not thread-safe). Each
request in flight holds a slot (a sequence id). Every step builds one `llama_batch` with
the next token of every generating sequence plus prompt chunks of newly admitted ones,
calls `llama_decode` once, then samples each sequence with its own sampler chain.

Slots keep their KV cache after a request ends, so a follow-up request whose prompt
extends a previous one (the next chat turn, an agent-loop iteration) lands on that slot and
only decodes the new suffix.

A generating sequence may carry a draft decoded after its next token in the same step and
verified as it is sampled: text its grammar forces (jumpforward.py, on by default) or, with
speculative decoding, an n-gram or draft-model guess (speculative.py).

With a projector, a prompt's images are runs of negative placeholder ids (`vision.py`);
the step that reaches one has the projector encode the image into the slot's KV first.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import llama_cpp

from runtime.config import EngineConfig
from runtime.engine.jumpforward import (
    FORCED_MAX,
    FORCED_MIN_TOKENS,
    ROW_COST_CPU,
    ROW_COST_GPU,
    ForcedAcceptance,
    ForcedText,
    forced_draft_pays,
)
from runtime.engine.kvcache import HostCache, common_prefix
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import SamplerChain, SamplerParams, token_logprobs
from runtime.engine.speculative import (
    DRAFT_MAX_LIMIT,
    Acceptance,
    Drafter,
    DraftLength,
    DraftModel,
    DraftWant,
    NgramDrafter,
    measure_row_costs,
)
from runtime.engine.threads import ThreadGovernor
from runtime.engine.vision import MediaChunk, Projector, is_placeholder
from runtime.errors import EngineFailure, ModelNotReady, Overloaded, ToolstudioError

log = logging.getLogger(__name__)

StopReason = Literal["eog", "length", "cancelled", "error"]
MIN_SAVED_TOKENS = 32  # shorter sequences prefill faster than they are worth keeping
# How far greedy output is made independent of how a token's batch was made up (README, "What
# is deterministic"; measured in bench/bench_determinism.py). On llama.cpp's CPU kernels, with
# flash attention a token's result depends on the shape of the whole batch; without it (no
# slower on CPU) a token comes out bit for bit the same in any batch that gives its sequence
# two rows or more, and differently when its sequence has one row only.
#   "off"     llama.cpp's defaults (flash attention where it chooses): no promise.
#   "prompt"  flash attention off, and a prompt piece of one token (the last prompt token when
#             the rest is cached) is decoded together with the position before it again: a
#             prompt gives the same tokens cold or partly cached, when decoded alone. Costs
#             one extra row once per such request.
#   "full"    also every decoding step gives each sequence an even number of rows, two or more
#             (its last position decoded again): the same whatever else is decoded alongside,
#             and when an earlier reply's KV is reused. Costs a third to a half of the decode
#             speed of SmolLM2-135M (a small model is bound by compute, not memory).
# None: "prompt" in a CPU-only build, "off" in one that can offload to a GPU (whose kernels vary
# with the batch anyway).
Determinism = Literal["off", "prompt", "full"]
DETERMINISM: Determinism | None = None


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    piece: bytes
    # Only for jobs that asked for logprobs (see `sampler.token_logprobs`): the token's log
    # probability and the job's `logprobs` most likely (id, logprob) at its position.
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Done:
    reason: StopReason
    cached_tokens: int = 0
    error: ToolstudioError | None = None


@dataclass(eq=False, slots=True)
class SequenceJob:
    """One generation request. `deliver` is called from the worker thread with each
    `Token` and finally one `Done`; it must be thread-safe and must not block."""

    prompt: list[int]
    params: SamplerParams
    max_tokens: int
    deliver: Callable[[Token | Done], None]
    media: tuple[MediaChunk, ...] = ()  # the images whose placeholders are in `prompt`
    scope: str = ""  # prompt prefixes are reused only from slots and saved KV of the same scope
    # Set by the requester: tokens to put in the output next, as if generated (e.g. closing
    # a thinking block whose budget is spent). The worker takes them at its next step.
    inject: list[int] | None = None
    cancelled: bool = False  # set by the requester; read by the worker every step
    cached: int = 0  # prompt tokens reused from cache; set by the worker at admission, before any Token
    submitted_at: float = field(default_factory=time.monotonic)
    # Ordinals, set by the scheduler: the job's place in submission order and in admission
    # order (into a slot). Admission is FIFO, so once both are set they are equal ranks.
    submitted: int = -1
    admitted: int = -1
    logprobs: int | None = None  # None: none computed; k: the logprob and the k most likely per token
    # Another choice of the same request (n > 1), submitted just before this one with the
    # same prompt: once its prompt is in the KV cache, this job copies it instead of
    # prefilling it again.
    fork_of: SequenceJob | None = None


def _submission_order(slot: Slot) -> tuple[int, float]:
    job = slot.job
    assert job is not None
    return (job.submitted, job.submitted_at)


@dataclass(eq=False, slots=True)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # exactly what the KV cache holds
    scope: str = ""  # whose prompt `tokens` are
    job: SequenceJob | None = None
    sampler: SamplerChain | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: int = 0
    cached: int = 0
    batch_index: int = -1
    released_at: float = 0.0
    draft: list[int] = field(default_factory=list)  # decoded after next_token this step, to verify
    acceptance: Acceptance = field(default_factory=Acceptance)  # of this job's drafts so far
    undrafted: int = 0  # steps since this job's last draft
    draft_forced: bool = False  # this step's draft is grammar-forced text (jumpforward.py)
    forced: ForcedAcceptance = field(default_factory=ForcedAcceptance)  # of this job's forced drafts


class Scheduler:
    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig,
        *,
        projector: Projector | None = None,
        determinism: Determinism | None = None,  # None: DETERMINISM, else by the build
    ) -> None:
        self.model = model
        self.projector = projector
        self.ctx_size = config.ctx_size
        self.batch_size = config.batch_size
        self.prefill_chunk = config.prefill_chunk
        self.max_queue = config.max_queue
        threads = config.thread_count
        self.threads = threads
        # Only the default adapts: an explicit --threads is the operator's decision.
        governor = ThreadGovernor(threads) if config.threads is None else None
        self.governor = governor if governor is not None and governor.available else None

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.ctx_size * config.parallel
        params.n_batch = config.batch_size
        params.n_ubatch = config.batch_size
        params.n_seq_max = config.parallel
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False  # each slot owns ctx_size tokens: one request cannot starve another
        self.determinism: Determinism = (
            determinism or config.determinism or DETERMINISM or ("off" if model.gpu_offload else "prompt")
        )
        off = self.determinism == "off"
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO if off else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        log.info("determinism %s: flash attention %s", self.determinism, "as llama.cpp chooses" if off else "off")
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise EngineFailure("llama.cpp could not create a context (out of memory?)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(config.batch_size, 0, 1)
        self.drafter: Drafter | None = None
        self.draft_length: DraftLength | None = None
        self.drafted = self.accepted = 0  # draft tokens proposed and kept, since start
        self.forced = ForcedText(model) if config.jump_forward else None
        self.row_cost = ROW_COST_GPU if model.gpu_offload and config.n_gpu_layers != 0 else ROW_COST_CPU
        if config.draft_model_path is not None or config.spec_ngram:
            self._start_speculation(config)

        self.host_cache = HostCache(config.cache_ram_mib << 20) if config.cache_ram_mib > 0 else None
        self.slots = [Slot(seq_id=i) for i in range(config.parallel)]
        self._waiting: deque[SequenceJob] = deque()
        self._submissions = itertools.count()
        self._admissions = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._draining = False
        self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self._thread.start()

    def _start_speculation(self, config: EngineConfig) -> None:
        model = self.model.model
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            # A recurrent state cannot drop the positions of rejected draft tokens.
            log.warning("speculative decoding is off: this model's memory is recurrent")
            return
        rows = min(config.draft_max, DRAFT_MAX_LIMIT, config.batch_size - 1) + 1
        times = measure_row_costs(self.ctx, self.memory, self.batch, 0, rows, context=min(64, config.batch_size))
        drafter = DraftModel(config.draft_model_path, self.model, config) if config.draft_model_path else NgramDrafter()
        per_draft_token = drafter.row_seconds if isinstance(drafter, DraftModel) else 0.0
        self.drafter, self.draft_length = drafter, DraftLength(times, per_draft_token)
        log.info(
            "speculative decoding with %s, at most %d draft tokens a step; llama_decode of 1 + k rows (ms): %s",
            f"the draft model {config.draft_model_path.name}" if config.draft_model_path else "n-gram prompt lookup",
            rows - 1,
            " ".join(f"{t * 1000:.1f}" for t in times),
        )

    # -- requester side (any thread) --------------------------------------------------

    def submit(self, job: SequenceJob, *more: SequenceJob) -> None:
        """Queue `job` (and `more`, the other choices of one request, right behind it, all
        or none). Raises `ModelNotReady` while shutting down, `Overloaded` when the queue is full."""
        with self._cond:
            if self._stopping or self._draining:
                raise ModelNotReady("the server is shutting down")
            if len(self._waiting) >= self.max_queue and not self._free_slot_exists():
                raise Overloaded(f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests wait")
            for each in (job, *more):
                each.submitted = next(self._submissions)
                self._waiting.append(each)
            self._cond.notify()

    def drain(self) -> None:
        """Shutdown: end every generation now (each stream finishes normally) and refuse new ones."""
        with self._cond:
            self._draining = True
            for job in self._waiting:
                job.cancelled = True
            for slot in self.slots:
                if slot.job is not None:
                    slot.job.cancelled = True
            self._cond.notify()

    def counts(self) -> tuple[int, int]:
        """(active sequences, waiting requests)"""
        return sum(1 for s in self.slots if s.job is not None), len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        self.ctx = None
        if self.drafter is not None:
            self.drafter.close()

    # -- worker thread ------------------------------------------------------------------

    def _free_slot_exists(self) -> bool:
        return any(s.job is None for s in self.slots)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not any(s.job for s in self.slots):
                    self._cond.wait()
                if self._stopping:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # never let the decode thread die with requests waiting
                log.exception("decode step failed")
                for slot in self.slots:
                    if slot.job is not None:
                        self._release(slot, "error", EngineFailure(f"decoding failed: {exc}"))
                    self._forget(slot)
        for slot in self.slots:
            if slot.job is not None:
                self._release(slot, "error", EngineFailure("the engine shut down"))
        while self._waiting:
            self._waiting.popleft().deliver(Done("error", error=EngineFailure("the engine shut down")))

    def _admit(self) -> None:
        """Move waiting jobs into free slots, strictly in submission order: the head of the
        queue is always the next one in, whatever its prompt length (a later, shorter prompt
        never takes a slot ahead of it). Called with the lock held."""
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._waiting[0]
            source = self._fork_source(job)
            if source is False:
                return  # the first choice's prompt is still being prefilled: the queue waits
            self._waiting.popleft()
            if job.cancelled:
                job.deliver(Done("cancelled"))
                continue
            # The free slot sharing the longest prefix wins; among equals, the one idle longest.
            shared = {s: self._shared(s, job) for s in free}
            slot = max(free, key=lambda s: (shared[s], -s.released_at))
            try:
                slot.sampler = SamplerChain(self.model.vocab, self.model.n_vocab, job.params)
            except ToolstudioError as exc:
                job.deliver(Done("error", error=exc))
                continue
            if isinstance(source, Slot) and shared[slot] < len(job.prompt) - 1:
                keep = self._copy_prompt(source, slot, job)
            else:
                keep = self._reuse(slot, job, shared[slot])
            slot.tokens = job.prompt[:keep]
            slot.todo = job.prompt[keep:]
            slot.job, slot.cached, slot.generated, slot.next_token = job, keep, 0, None
            slot.draft, slot.acceptance, slot.undrafted = [], Acceptance(), 0
            slot.draft_forced, slot.forced = False, ForcedAcceptance()
            job.cached = keep
            job.admitted = next(self._admissions)
            slot.scope = job.scope

    def _fork_source(self, job: SequenceJob) -> Slot | bool:
        """For a later choice of an n > 1 request: the slot whose KV holds its prompt (the
        first choice's, prefill done), False while that prefill is still running, True when
        there is nothing to copy from (ordinary admission: prefix reuse still applies)."""
        first = job.fork_of
        if first is None or first.cancelled:
            return True
        slot = next((s for s in self.slots if s.job is first), None)
        if slot is None:
            # It was ahead in the queue, so it is finished already (or failed): its slot is
            # then free with the prompt as a prefix, for the usual reuse.
            return True
        if slot.todo or len(slot.tokens) < len(job.prompt):
            return False
        return slot

    def _copy_prompt(self, source: Slot, slot: Slot, job: SequenceJob) -> int:
        """Give `slot` the KV of `source`'s first len(prompt) - 1 positions (the shared prompt
        but its last token, which the new sequence decodes itself to get its own logits).
        Returns the positions kept. With one KV stream per slot llama.cpp copies whole
        streams, so the source's generated tokens come along and are cut off here."""
        cache = self.host_cache
        if cache is not None and len(slot.tokens) >= MIN_SAVED_TOKENS:
            cache.save(self.ctx, slot.seq_id, slot.tokens, slot.scope)
        self._forget(slot)
        keep = len(job.prompt) - 1
        llama_cpp.llama_memory_seq_cp(self.memory, source.seq_id, slot.seq_id, -1, -1)
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
            self._forget(slot)
            return 0
        return keep

    @staticmethod
    def _shared(slot: Slot, job: SequenceJob) -> int:
        """Prompt tokens the slot's KV can serve to `job`: none across scopes."""
        return common_prefix(slot.tokens, job.prompt) if slot.scope == job.scope else 0

    def _reuse(self, slot: Slot, job: SequenceJob, shared: int) -> int:
        """Leave in the slot's KV the longest cached prefix of the job's prompt, from the slot
        itself (`shared` tokens) or from the host cache; returns its length. What the slot
        held beyond it goes to the host cache first, when it is worth keeping."""
        cache = self.host_cache
        entry, length = cache.best(job.prompt, job.scope) if cache is not None else (None, 0)
        if length < shared + MIN_SAVED_TOKENS:
            entry = None  # the slot serves (nearly) as much: no copy worth making
        keep = min(length if entry is not None else shared, len(job.prompt) - 1)  # need >= 1 to decode
        while keep > 0 and is_placeholder(job.prompt[keep]) and job.prompt[keep - 1] == job.prompt[keep]:
            keep -= 1  # an image's KV is written whole: never keep part of one
        lost = len(slot.tokens) if entry is not None else len(slot.tokens) - keep
        if cache is not None and lost >= MIN_SAVED_TOKENS:
            cache.save(self.ctx, slot.seq_id, slot.tokens, slot.scope)
        if cache is not None and entry is not None:
            self._forget(slot)
            if not cache.restore(self.ctx, entry, slot.seq_id):
                self._forget(slot)  # a partial restore: start clean
                return 0
            slot.tokens = list(entry.tokens)
        if keep < len(slot.tokens) and not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1):
            self._forget(slot)  # partial removal unsupported for this cache type: start over
            return 0
        return keep

    def _forget(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.tokens = []

    def _release(self, slot: Slot, reason: StopReason, error: ToolstudioError | None = None) -> None:
        job = slot.job
        if slot.sampler is not None:
            slot.sampler.close()
        slot.job, slot.sampler, slot.todo, slot.next_token, slot.draft = None, None, [], None, []
        slot.released_at = time.monotonic()
        if job is not None:
            job.deliver(Done(reason, cached_tokens=slot.cached, error=error))

    def _add(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self.batch
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq_id
        batch.logits[n] = logits

    def _step(self) -> None:
        started = time.perf_counter()
        if self.governor is not None and (threads := self.governor.poll()) is not None:
            llama_cpp.llama_set_n_threads(self.ctx, threads, threads)
        n = 0
        for slot in self.slots:
            slot.batch_index = -1
            if slot.job is not None and slot.job.cancelled:
                self._release(slot, "cancelled")
        # Generating sequences first: one token each (and its draft, when speculating), so
        # streams never stall behind a prefill.
        generating = []
        for slot in self.slots:
            if slot.job is None or slot.next_token is None:
                continue
            if slot.job.inject:
                self._inject(slot)  # decoded below, with the prompts
                continue
            generating.append(slot)
        room = self.batch_size - 2 * len(generating)  # draft rows: prompts and padding keep some
        if self.forced is not None:
            room = self._jump_forward(generating, room)
        drafting, drafted = 0.0, 0
        if self.drafter is not None:
            drafting = time.perf_counter()
            self._draft([slot for slot in generating if not slot.draft_forced], room)
            drafting = time.perf_counter() - drafting
            drafted = sum(len(slot.draft) for slot in generating if not slot.draft_forced)
        for slot in generating:
            assert slot.next_token is not None
            if self.determinism == "full" and len(slot.draft) % 2 == 0:
                n = self._pad(n, slot)  # 1 + draft rows, made even
            slot.batch_index = n
            for token in (slot.next_token, *slot.draft):
                self._add(n, token, len(slot.tokens), slot.seq_id, True)
                slot.tokens.append(token)
                n += 1
            slot.next_token = None
        # Then prompts, in submission order. Prefill costs about the same per token however
        # it is batched (on CPU), so under contention a step takes one chunk of the oldest
        # prompt and only those next prompts that fit whole in what is left of the chunk.
        # Running streams then stall for one short step, not for every queued prompt, and
        # queued prompts get their first token in turn instead of all together at the end
        # (bench/bench_concurrency.py: median time to first token -20 to -35 % with 4-8
        # clients, same throughput). A later prompt is only started once every earlier one
        # finishes its prefill in this step, so it can never get its first token first.
        prefilling = sorted((s for s in self.slots if s.job is not None and s.todo), key=_submission_order)
        contended = n > 0 or len(prefilling) > 1
        budget = min(self.batch_size - n, self.prefill_chunk) if contended else self.batch_size - n
        for slot in prefilling:
            if slot is not prefilling[0] and len(slot.todo) > budget:
                break  # would only be partly done: leave the whole step to the prompts ahead of it
            while budget > 0 and slot.job is not None and slot.todo and is_placeholder(slot.todo[0]):
                budget -= self._evaluate_image(slot)
            if budget <= 0:
                break
            if slot.job is None:
                continue
            take = next((i for i, t in enumerate(slot.todo[:budget]) if is_placeholder(t)), min(budget, len(slot.todo)))
            take, pad = self._even(slot, take, room=self.batch_size - n - take)
            chunk, slot.todo = slot.todo[:take], slot.todo[take:]
            if pad:
                n = self._pad(n, slot)
            budget -= len(chunk) + pad
            for i, token in enumerate(chunk):
                last = not slot.todo and i == len(chunk) - 1
                self._add(n, token, len(slot.tokens), slot.seq_id, last)
                slot.tokens.append(token)
                if last:
                    slot.batch_index = n
                n += 1
            if slot.todo:
                break  # still prefilling (an image next, or the chunk ran out): nothing later jumps it
        if n == 0:
            return
        self.batch.n_tokens = n
        decoding = time.perf_counter()
        status = llama_cpp.llama_decode(self.ctx, self.batch)
        decoding = time.perf_counter() - decoding
        if status != 0:
            raise EngineFailure(f"llama_decode returned {status}")
        for slot in self.slots:
            if slot.batch_index >= 0 and slot.job is not None:
                self._sample(slot)
        if self.draft_length is not None and len(generating) == 1 and not prefilling:
            # A single stream's step: what its rows cost in llama_decode, and the rest of it.
            overhead = time.perf_counter() - started - decoding - drafting
            self.draft_length.observe(n, decoding, overhead, drafted, drafting)

    def _jump_forward(self, slots: list[Slot], room: int) -> int:
        """Give each generating slot whose grammar forces text next that text as its draft
        (jumpforward.py), while as much of its forced drafts is kept as makes them pay beside
        the step's other streams (`forced_draft_pays`). Returns the draft rows left in the batch."""
        assert self.forced is not None
        for slot in slots:
            job, sampler = slot.job, slot.sampler
            assert job is not None and sampler is not None
            slot.draft_forced = False
            if sampler.grammar is None or not forced_draft_pays(slot.forced.kept, len(slots), self.row_cost):
                continue
            k = min(FORCED_MAX, job.max_tokens - slot.generated - 1, self.ctx_size - len(slot.tokens) - 2, room)
            tokens = self.forced.draft(sampler.grammar, k)
            if len(tokens) >= FORCED_MIN_TOKENS:
                slot.draft, slot.draft_forced = tokens, True
                room -= len(tokens)
        return room

    def _draft(self, slots: list[Slot], room: int) -> None:
        """Give each generating slot its draft for this step (`Slot.draft`): as long as its
        acceptance makes pay (`DraftLength`), within its max_tokens, its context and the batch,
        and cut where the slot's grammar would reject it."""
        assert self.drafter is not None and self.draft_length is not None
        wants = []
        for slot in slots:
            job = slot.job
            assert job is not None and slot.next_token is not None
            k = self.draft_length.choose(slot.acceptance.rate, slot.undrafted)
            k = min(k, job.max_tokens - slot.generated - 1, self.ctx_size - len(slot.tokens) - 2, max(room, 0))
            if job.media and isinstance(self.drafter, DraftModel):
                k = 0  # the draft model cannot see the images (placeholders are not its tokens)
            room -= max(k, 0)
            wants.append(DraftWant(slot.seq_id, job, [*slot.tokens, slot.next_token], max(k, 0)))
        try:
            drafts = self.drafter.propose(wants)
        except EngineFailure:
            log.warning("drafting failed; this step decodes without drafts", exc_info=True)
            drafts = [[] for _ in wants]
        for slot, draft in zip(slots, drafts, strict=True):
            assert slot.sampler is not None
            # An n-gram continuation can run into an image's placeholders: never a token to sample.
            draft = list(itertools.takewhile(lambda t: not is_placeholder(t), draft))
            slot.draft = draft[: slot.sampler.grammar_allows(draft)] if draft else []

    def _can_pad(self, slot: Slot) -> bool:
        return self.determinism != "off" and bool(slot.tokens) and not is_placeholder(slot.tokens[-1])

    def _pad(self, n: int, slot: Slot) -> int:
        """Decode the slot's last KV position again, as row `n` of this step, so its sequence
        has one row more in it (see DETERMINISM); it comes out the same as before. Returns the
        next free row (`n` itself when there is nothing to decode again)."""
        last = len(slot.tokens) - 1
        if not self._can_pad(slot) or not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, last, -1):
            return n
        self._add(n, slot.tokens[last], last, slot.seq_id, False)
        return n + 1

    def _even(self, slot: Slot, take: int, room: int) -> tuple[int, bool]:
        """The prompt piece to decode now (`take` tokens of `slot.todo`) under DETERMINISM, and
        whether to pad it with the position before it: never one row alone ("prompt"), an even
        number of rows ("full": llama.cpp splits a batch into equal shares per sequence, and an
        odd count could leave one row). A piece with more of the prompt after it ends a token
        earlier instead; one that cannot be padded (no room, an image before it) too."""
        if self.determinism == "off" or take % 2 == 0 or (take > 1 and self.determinism == "prompt"):
            return take, False
        if take < len(slot.todo) and take > 1:
            return take - 1, False
        if self._can_pad(slot) and room > 0:
            return take, True
        return max(take - 1, 1), False

    def _evaluate_image(self, slot: Slot) -> int:
        """Encode the image at the head of the slot's prompt into its KV (stalls this step).
        Returns the positions it took, which count against the step's prefill budget."""
        job = slot.job
        assert job is not None and self.projector is not None
        media = next(m for m in job.media if m.placeholder == slot.todo[0])
        started = time.perf_counter()
        try:
            self.projector.evaluate(self.ctx, media, len(slot.tokens), slot.seq_id, self.batch_size)
        except EngineFailure as exc:
            self._forget(slot)
            self._release(slot, "error", exc)
            return 0
        slot.tokens += slot.todo[: media.n_pos]
        slot.todo = slot.todo[media.n_pos :]
        log.debug("image of %d positions evaluated in %.1f ms", media.n_pos, (time.perf_counter() - started) * 1000)
        return media.n_pos

    def _inject(self, slot: Slot) -> None:
        """Output the job's injected tokens after the token just sampled; all of them are
        then decoded like a prompt chunk, and sampling goes on after them."""
        job = slot.job
        assert job is not None and job.inject and slot.sampler is not None and slot.next_token is not None
        forced, job.inject = job.inject, None
        for token in forced:
            slot.sampler.accept_forced(token)
            slot.generated += 1
            job.deliver(Token(token, self.model.piece(token)))
        slot.todo = [slot.next_token, *forced]
        slot.next_token = None
        if slot.generated >= job.max_tokens or len(slot.tokens) + len(slot.todo) + 1 >= self.ctx_size:
            self._release(slot, "length")

    def _sample(self, slot: Slot) -> None:
        """Sample the slot's rows of this step in order: the token after the one decoded, then,
        for each draft token that equals what was sampled before it, the token after that one.
        The KV of draft tokens not kept is removed (see speculative.py)."""
        job, draft = slot.job, slot.draft
        assert job is not None and slot.sampler is not None
        slot.draft = []
        decoded = len(slot.tokens) - len(draft)  # KV positions that hold accepted tokens
        stop: StopReason | None = None
        kept = 0
        for row in range(slot.batch_index, slot.batch_index + len(draft) + 1):
            token = slot.sampler.sample(self.ctx, row)
            if self.model.is_eog(token):
                stop = "eog"
                break
            slot.generated += 1
            if job.logprobs is None:
                job.deliver(Token(token, self.model.piece(token)))
            else:
                logprob, top = token_logprobs(self.ctx, row, self.model.n_vocab, token, job.logprobs)
                job.deliver(Token(token, self.model.piece(token), logprob, tuple(top)))
            if slot.generated >= job.max_tokens or decoded + kept + 1 >= self.ctx_size:
                stop = "length"
                break
            if kept == len(draft) or token != draft[kept]:
                slot.next_token = token
                break
            kept += 1  # the draft token is the one sampled: its KV (and logits) are right
        if draft:
            self.drafted += len(draft)
            self.accepted += kept
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, decoded + kept, -1)
            del slot.tokens[decoded + kept :]
        if slot.draft_forced:
            slot.forced.update(len(draft), kept)
        else:
            slot.acceptance.update(len(draft), kept)
            slot.undrafted = 0 if draft else slot.undrafted + 1
        if stop is not None:
            self._release(slot, stop)
