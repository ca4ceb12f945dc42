"""`LlamaEngine`: the default engine, on llama-cpp-python's low-level API."""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import copy
import dataclasses
import functools
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine.base import EngineStats, ModelInfo
from runtime.engine.grammar import after_thinking, json_object_grammar, schema_grammar
from runtime.engine.kvcache import Replies, Reply, common_prefix
from runtime.engine.model import LlamaModel
from runtime.engine.reasoning import ReasoningSplitter, starts_thinking, tags_for_template
from runtime.engine.sampler import GrammarMatcher, GrammarTrigger, SamplerParams
from runtime.engine.scheduler import Done, Scheduler, SequenceJob, Token
from runtime.engine.stops import StopMatcher
from runtime.engine.template import IMAGE_PLACEHOLDER, ChatTemplate
from runtime.engine.toolcalls import SnapshotParser, ToolCallParser, detect_format, format_named
from runtime.engine.vision import MediaChunk, Projector
from runtime.errors import ContextLengthExceeded, InvalidRequest, ServerShuttingDown, UnsupportedFeature
from runtime.events import (
    ChoiceEvent,
    Event,
    Finished,
    PromptUsage,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallStart,
    TopLogprob,
    Usage,
)
from runtime.ir import ChatRequest, ImagePart, Message, TextPart, ToolChoice, ToolSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    tokens: list[int]
    params: SamplerParams
    max_tokens: int
    parser: ToolCallParser | SnapshotParser | None = None  # set when the output may hold calls (or channels)
    thinking_open: bool = False  # the prompt itself opened a thinking block
    media: tuple[MediaChunk, ...] = ()  # the prompt's images, in order (with a projector)
    cache_point: int = 0  # prompt tokens up to the client's cache breakpoint (0: none)
    text: str = ""  # the rendered prompt
    tools: tuple[ToolSpec, ...] = ()  # the tools it describes


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    grammar: str | None = None
    triggers: tuple[GrammarTrigger, ...] = ()
    parser: ToolCallParser | SnapshotParser | None = None


class Mailbox:
    """Hands the decode thread's tokens to one event loop. A step delivers a token to every
    running stream; the loop is woken once for all of them, not once per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[asyncio.Queue[tuple[int, Token | Done]], tuple[int, Token | Done]]] = []
        self._lock = threading.Lock()

    def post(self, queue: asyncio.Queue[tuple[int, Token | Done]], index: int, item: Token | Done) -> None:
        with self._lock:
            self._pending.append((queue, (index, item)))
            if len(self._pending) > 1:
                return  # a flush is already scheduled and will take this one too
        self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, item in pending:
            queue.put_nowait(item)


class LlamaEngine:
    def __init__(self, config: EngineConfig, *, model_id: str, defaults: SamplingDefaults) -> None:
        self.config = config
        self.defaults = defaults
        self.model = LlamaModel(config.model_path, n_gpu_layers=config.n_gpu_layers)
        self.ctx_size = min(config.ctx_size, self.model.n_ctx_train) if self.model.n_ctx_train else config.ctx_size
        if self.ctx_size != config.ctx_size:
            log.warning("ctx-size %d is above the model's training context; using %d", config.ctx_size, self.ctx_size)
            config = dataclasses.replace(config, ctx_size=self.ctx_size)
        source = config.chat_template_file.read_text() if config.chat_template_file else self.model.chat_template()
        self.template = ChatTemplate(source, bos_token=self.model.bos_token, eos_token=self.model.eos_token)
        self.tool_format = format_named(config.tool_format) if config.tool_format else detect_format(source)
        how = "--tool-format" if config.tool_format else "detected from the chat template"
        log.info("tool-call format: %s (%s)", self.tool_format.name, how)
        # Families with reasoning channels (gpt-oss, Gemma 4) split reasoning in their parser.
        self.thinking_tags = None if self.tool_format.owns_reasoning else tags_for_template(self.template.source)
        # Written by the engine itself when a thinking budget is spent.
        tags = self.thinking_tags
        self._close_thinking = self.model.tokenize(tags.close + "\n\n", add_special=False) if tags else []
        self.projector = (
            Projector(config.mmproj_path, self.model, threads=config.thread_count) if config.mmproj_path else None
        )
        self.scheduler = Scheduler(self.model, config, projector=self.projector)
        # Prompts are rendered and tokenized one at a time, in arrival order: a pool of
        # several threads let a request that arrived later reach the scheduler's FIFO first.
        self._preparer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-prepare")
        # Finished generations, for the agent loop's next round (`prompt`): a few per slot, so
        # that tools running for a while in many sessions rarely lose theirs.
        self.replies = Replies(max(64, 8 * config.parallel))
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = weakref.WeakKeyDictionary()
        self._info = ModelInfo(
            id=model_id,
            context_length=self.ctx_size,
            created=int(config.model_path.stat().st_mtime),
            description=self.model.description(),
            vision=self.projector is not None,
        )
        log.info(
            "model %s ready: %s, context %d tokens per request, %d parallel slots",
            model_id,
            self._info.description,
            self.ctx_size,
            config.parallel,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def stats(self) -> EngineStats:
        active, waiting = self.scheduler.counts()
        scheduler = self.scheduler
        cache = scheduler.host_cache
        return EngineStats(
            active=active,
            waiting=waiting,
            slots=len(scheduler.slots),
            threads=scheduler.governor.current if scheduler.governor is not None else scheduler.threads,
            host_cache_bytes=cache.used if cache is not None else 0,
            draft_tokens=scheduler.drafted,
            draft_tokens_accepted=scheduler.accepted,
        )

    def drain(self) -> None:
        self.scheduler.drain()

    async def close(self) -> None:
        self._preparer.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.scheduler.close)
        if self.projector is not None:
            self.projector.close()
        self.model.close()

    # -- prompt ---------------------------------------------------------------------------

    def prompt_tools(self, request: ChatRequest) -> list[ToolSpec]:
        """The client tools this request offers the model (none under `tool_choice: none`)."""
        choice = request.tool_choice
        if choice.mode == "none":
            return []
        if choice.mode in ("required", "function") and not request.tools:
            raise InvalidRequest(f"tool_choice {choice.mode!r} needs at least one tool", param="tool_choice")
        if choice.mode == "function" and choice.name not in {t.name for t in request.tools}:
            raise InvalidRequest(
                f"tool_choice names {choice.name!r}, which is not among the tools", param="tool_choice"
            )
        return request.tools

    def render(self, request: ChatRequest, tools: list[ToolSpec] | None = None) -> str:
        """The prompt text; `tools`: the tools to describe (default: `prompt_tools`)."""
        tools = self.prompt_tools(request) if tools is None else tools
        # Native formats hand tools, earlier calls and results to the template itself (a few
        # reshape them the way their template reads them); the generic format rewrites the
        # history, since templates without tool support cannot render calls and results.
        fmt = self.tool_format
        messages = fmt.prepare_messages(request.messages, tools)
        native_tools = tools if tools and fmt.native else None
        marker = self.projector.marker if self.projector is not None else IMAGE_PLACEHOLDER
        prompt = self.template.render(
            messages,
            tools=native_tools,
            image_marker=marker,
            string_arguments=fmt.string_arguments,
            transform=lambda dicts: fmt.template_messages(dicts, self.template.source),
            **self.template_kwargs(request),
        )
        return fmt.finish_prompt(prompt) + request.prefill

    def template_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """The request's own template variables, plus the thinking switch: the request's
        choice, else the server's `--reasoning` default, else on (as llama.cpp does: some
        templates, QwQ's, close the thinking block when the switch is merely undefined)."""
        kwargs = {**self.tool_format.template_kwargs(request), **request.template_kwargs}
        if request.reasoning_effort and "reasoning_effort" in self.template.source:
            kwargs.setdefault("reasoning_effort", request.reasoning_effort)
        if self.template.supports_thinking_switch and "enable_thinking" not in kwargs:
            default = self.config.reasoning != "off"
            kwargs["enable_thinking"] = request.reasoning if request.reasoning is not None else default
        return kwargs

    def tokenize_prompt(self, prompt: str, request: ChatRequest) -> tuple[list[int], list[MediaChunk]]:
        """The prompt's tokens; with a projector, the request's images become placeholder runs."""
        add_bos = self.model.add_bos and not (self.template.bos_token and prompt.startswith(self.template.bos_token))
        if self.projector is not None and (images := _image_bytes(request)):
            return self.projector.tokenize(prompt, images, add_special=add_bos)
        return self.model.tokenize(prompt, add_special=add_bos), []

    def prompt(self, request: ChatRequest) -> tuple[str, list[int], list[MediaChunk], list[ToolSpec]]:
        """The prompt's text, tokens and images, and the tools it describes.

        A request that continues a generation of this engine (`Replies.continued`: the agent
        loop's next round) and whose text extends that generation's prompt and output is
        tokenized from there: that prompt's tokens, the tokens the model sampled, then only
        the new text. The slot's KV cache holds exactly those; tokenizing the whole text
        again often spells the reply differently (under a call grammar SmolLM2 writes `{"`
        as `{` `"`), and the prefix cache would then prefill the whole reply again. The
        loop's last round (calls forbidden, no tools of its own) still describes the tools
        the conversation had, when the family's grammar can forbid calls, so its prompt
        extends the last one instead of changing the system prompt and prefilling it all.
        """
        tools = self.prompt_tools(request)
        images = self.projector is not None and _has_images(request)  # placeholder runs: tokenized whole
        reply = None if images else self.replies.continued(request.messages)
        prompt = self.render(request, tools)
        last_round = request.calls_forbidden and not tools and self.tool_format.no_calls_grammar() is not None
        if reply is not None and reply.tools and last_round and not prompt.startswith(reply.text):
            shown = self.render(request, reply.tools)
            if shown.startswith(reply.text):
                prompt, tools = shown, reply.tools
        if reply is not None and prompt.startswith(reply.text):
            suffix = self.model.tokenize(prompt[len(reply.text) :], add_special=False)
            return prompt, [*reply.tokens, *suffix], [], tools
        tokens, media = self.tokenize_prompt(prompt, request)
        return prompt, tokens, media, tools

    async def count_tokens(self, request: ChatRequest) -> int:
        _, tokens, _, _ = await asyncio.to_thread(self.prompt, request)
        return len(tokens)

    def _prepare(self, request: ChatRequest) -> PreparedPrompt:
        prompt, tokens, media, tools = self.prompt(request)
        thinking_open = self.thinking_tags is not None and starts_thinking(prompt, self.thinking_tags)
        constraint = self.constraint(request, thinking_open=thinking_open)
        if len(tokens) >= self.ctx_size:
            raise ContextLengthExceeded(
                f"this model's context window is {self.ctx_size} tokens; the prompt takes {len(tokens)}"
            )
        room = self.ctx_size - len(tokens)
        s, d = request.sampling, self.defaults
        wanted = s.max_tokens if s.max_tokens is not None else d.max_tokens
        if wanted is not None and wanted < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        params = SamplerParams(
            temperature=d.temperature if s.temperature is None else s.temperature,
            top_p=d.top_p if s.top_p is None else s.top_p,
            top_k=d.top_k if s.top_k is None else s.top_k,
            min_p=d.min_p if s.min_p is None else s.min_p,
            repeat_penalty=d.repeat_penalty if s.repeat_penalty is None else s.repeat_penalty,
            presence_penalty=s.presence_penalty or 0.0,
            frequency_penalty=s.frequency_penalty or 0.0,
            seed=s.seed,
            grammar=constraint.grammar,
            grammar_triggers=constraint.triggers,
            thinking_close=self.thinking_tags.close if self.thinking_tags is not None else None,
        )
        max_tokens = min(wanted, room) if wanted else room
        point = self.cache_point_tokens(request, tokens)
        return PreparedPrompt(
            tokens, params, max_tokens, constraint.parser, thinking_open, tuple(media), point, prompt, tuple(tools)
        )

    def cache_point_tokens(self, request: ChatRequest, tokens: list[int]) -> int:
        """How many of the prompt's `tokens` lie up to the client's cache breakpoint
        (`request.cache_point`): the prefix request is rendered and tokenized on its own,
        and the count is where its tokens part from the whole prompt's. At most
        len(tokens) - 1: the last prompt token is always decoded anew, for its logits. A
        prefix the template cannot render alone counts 0 (reported as not written)."""
        point = request.cache_point
        if point is None:
            return 0
        messages = request.messages[: point.messages]
        if messages and point.parts is not None:
            last = messages[-1]
            messages = [*messages[:-1], Message(last.role, last.parts[: point.parts])]
        if not any(m.role == "user" for m in messages):
            # Templates want a user turn; this one differs from the prompt's, so the
            # prefix's tokens part from the prompt's where its own messages begin.
            messages = [*messages, Message("user", [TextPart(".")])]
        tools = request.tools if point.tools is None else request.tools[: point.tools]
        prefix = dataclasses.replace(
            request,
            messages=messages,
            tools=tools,
            prefill="",
            cache_point=None,
            tool_choice=ToolChoice("none" if request.tool_choice.mode == "none" else "auto"),
        )
        try:
            prefix_tokens, _ = self.tokenize_prompt(self.render(prefix), prefix)
        except Exception:  # a template that refuses the cut conversation: nothing is claimed
            log.debug("the cache breakpoint's prefix could not be rendered alone", exc_info=True)
            return 0
        return min(common_prefix(prefix_tokens, tokens), len(tokens) - 1)

    def constraint(self, request: ChatRequest, *, thinking_open: bool = False) -> OutputConstraint:
        """The grammar (and tool-call parser) a request's tools and response format ask for.

        `thinking_open`: the prompt left the model inside a thinking block. A grammar that
        applies from the first token (a forced call, a response format) then lets the model
        finish its thinking first, and lets a thinking model open a block of its own.
        """
        out = request.output_format
        if request.prefill and (out.kind != "text" or request.tool_choice.mode in ("required", "function")):
            # The grammar describes the whole reply, and the prefill would already be part of it.
            raise UnsupportedFeature(
                "a prefilled assistant reply cannot be combined with a structured output format or a forced tool_choice"
            )
        response: dict[str, Any] | None = None
        if out.kind == "json_schema":
            if not isinstance(out.schema, dict):
                raise InvalidRequest("a json_schema response format needs a schema object", param="response_format")
            response = out.schema
        elif out.kind == "json_object":
            response = {"type": "object"}
        tools = self.prompt_tools(request)
        if tools:
            fmt = self.tool_format
            calls = fmt.grammar(tools, request.tool_choice, request.parallel_tool_calls, response, out.strict)
            parser = fmt.parser(tools, request.tool_choice, request.parallel_tool_calls)
            constraint = OutputConstraint(calls.gbnf, calls.triggers, parser)
        elif response is not None:
            grammar = self.tool_format.answer_grammar(response, out.strict) or (
                json_object_grammar() if out.kind == "json_object" else schema_grammar(response, strict=out.strict)
            )
            constraint = OutputConstraint(grammar, parser=self._channel_parser(request.calls_forbidden))
        elif request.calls_forbidden:
            constraint = OutputConstraint(self.tool_format.no_calls_grammar(), parser=self._channel_parser(True))
        else:
            return OutputConstraint(parser=self._channel_parser())
        tags = self.thinking_tags
        eager = bool(constraint.grammar) and not constraint.triggers and not request.calls_forbidden
        if eager and tags is not None and (request.reasoning is not False or thinking_open):
            grammar = after_thinking(constraint.grammar or "", tags.open, tags.close, opened=thinking_open)
            constraint = dataclasses.replace(constraint, grammar=grammar)
        if constraint.grammar:
            # Compile once here (microseconds) so a bad grammar fails the request up front,
            # never inside the decode thread when a lazy grammar triggers.
            GrammarMatcher(self.model.vocab, constraint.grammar).close()
        return constraint

    def _channel_parser(self, calls_forbidden: bool = False) -> ToolCallParser | SnapshotParser | None:
        """Without client tools, a parser only for families whose output has channels
        (reasoning and answer) or when calls are forbidden; call markup is then dropped,
        never shown as content."""
        if not self.tool_format.owns_reasoning and not calls_forbidden:
            return None
        return self.tool_format.parser([], ToolChoice(), True)

    # -- generation -------------------------------------------------------------------------

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = Mailbox(loop)
        return mailbox

    async def generate(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Events for one request; with `request.n > 1`, n choices decoded together (the
        prompt prefilled once), their events wrapped in `ChoiceEvent`, one `Usage` at the end."""
        loop = asyncio.get_running_loop()
        # One preparing thread: requests reach `submit`, and so a slot, in the order they
        # called `generate` (#15).
        prepared = await loop.run_in_executor(self._preparer, self._prepare, request)
        queue: asyncio.Queue[tuple[int, Token | Done]] = asyncio.Queue()
        post = self._mailbox(loop).post
        jobs: list[SequenceJob] = []
        for i in range(max(1, request.n)):
            params = prepared.params
            if i and params.seed is not None:
                params = dataclasses.replace(params, seed=params.seed + i)  # choice i: seed + i
            jobs.append(
                SequenceJob(
                    prompt=prepared.tokens,
                    params=params,
                    max_tokens=prepared.max_tokens,
                    media=prepared.media,
                    scope=request.cache_scope,
                    deliver=functools.partial(post, queue, i),
                    logprobs=request.sampling.logprobs,
                    fork_of=jobs[0] if jobs else None,
                )
            )
        self.scheduler.submit(*jobs)
        choices = [_Choice(self, request, prepared, job) for job in jobs]
        wrap = len(jobs) > 1
        running = len(jobs)
        try:
            while running:
                index, item = await queue.get()
                choice = choices[index]
                if choice.finish is not None:
                    continue  # the Done of a job ended early by a stop sequence
                if isinstance(item, Token):
                    if not any(c.generated for c in choices):
                        yield PromptUsage(len(prepared.tokens), jobs[0].cached, _written(prepared, jobs[0]))
                    events = choice.token(item)
                else:
                    if item.error is not None:
                        raise item.error
                    if item.reason == "cancelled":
                        # Only drain() (SIGTERM) cancels a job whose end is still read here: this
                        # side cancels only once it stops reading. The output is cut, not finished.
                        raise ServerShuttingDown()
                    events = choice.done(item)
                if choice.finish is not None:
                    running -= 1
                    if not wrap:
                        for event in events:
                            yield event
                        break
                    events.append(choice.finish)
                for event in events:
                    yield ChoiceEvent(index, event) if wrap else event
            if not wrap:
                self._remember(request, prepared, choices[0])
            yield Usage(
                prompt_tokens=len(prepared.tokens),
                completion_tokens=sum(c.generated for c in choices),
                cached_tokens=jobs[0].cached,
                cache_write_tokens=_written(prepared, jobs[0]),
            )
            if not wrap:
                assert choices[0].finish is not None
                yield choices[0].finish
        finally:
            for job in jobs:
                job.cancelled = True  # a no-op when finished; stops decoding when the client went away

    def _remember(self, request: ChatRequest, prepared: PreparedPrompt, choice: _Choice) -> None:
        """Keep a finished reply for the request that continues it (see `prompt`)."""
        finish = choice.finish
        if prepared.media or finish is None or finish.reason not in ("stop", "tool_calls"):
            return  # cut short (length, a stop sequence): the text goes on differently
        try:
            text = bytes(choice.sampled_bytes).decode("utf-8")
        except UnicodeDecodeError:
            return
        tokens = [*prepared.tokens, *choice.sampled]
        self.replies.add(Reply(list(request.messages), list(prepared.tools), prepared.text + text, tokens))


class _Choice:
    """One sequence's tokens -> events: UTF-8 decoding, stop sequences, the thinking block,
    tool-call parsing, and the tokens' logprobs attached to the text they became."""

    def __init__(self, engine: LlamaEngine, request: ChatRequest, prepared: PreparedPrompt, job: SequenceJob) -> None:
        self.model = engine.model
        self.job = job
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = StopMatcher(request.sampling.stop)
        # Parsers keep state: every choice after the first gets its own copy.
        self.parser = prepared.parser if job.fork_of is None else copy.deepcopy(prepared.parser)
        tags = engine.thinking_tags
        self.splitter = ReasoningSplitter(tags, inside=prepared.thinking_open) if tags is not None else None
        self.in_thinking = prepared.thinking_open
        # A thinking budget (Anthropic's `budget_tokens`): once spent, the engine writes the
        # closing tag itself and the model goes on to the answer. Tokens already in flight
        # when the budget runs out may overshoot it by a few.
        self.budget = request.reasoning_budget if self.splitter is not None else None
        self.close_thinking = engine._close_thinking
        self.thinking = 0
        self.generated = 0
        self.sampled: list[int] = []  # the tokens, as the KV cache holds them (see `LlamaEngine.prompt`)
        self.sampled_bytes = bytearray()
        self.cached = 0
        self.pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not out yet
        self.finish: Finished | None = None

    def _convert(self, segments: list[tuple[bool, str]]) -> list[Event]:
        out: list[Event] = []
        parser = self.parser
        for thinking, segment in segments:
            if parser is not None and self.in_thinking and not thinking:
                parser.start_answer()  # a call may open the answer right after the thinking block
            self.in_thinking = thinking
            found = parser.feed(segment) if parser is not None else [TextDelta(segment)]
            # Calls written inside a thinking block are still calls; only text turns into reasoning.
            out += [ReasoningDelta(e.text) if thinking and isinstance(e, TextDelta) else e for e in found]
        return self._attach(out)

    def _attach(self, events: list[Event]) -> list[Event]:
        """Answer text carries the logprobs of the tokens it came from; reasoning and calls
        do not (OpenAI's `logprobs.content` covers the message content only)."""
        if not self.pending:
            return events
        out: list[Event] = []
        for event in events:
            if isinstance(event, TextDelta) and self.pending:
                event = TextDelta(event.text, tuple(self.pending))
                self.pending.clear()
            elif isinstance(event, ReasoningDelta | ToolCallStart):
                self.pending.clear()
            out.append(event)
        return out

    def _events(self, text: str) -> list[Event]:
        return self._convert(self.splitter.feed(text) if self.splitter is not None else [(False, text)])

    def token(self, item: Token) -> list[Event]:
        job, splitter = self.job, self.splitter
        self.generated += 1
        self.sampled.append(item.id)
        self.sampled_bytes += item.piece
        if item.logprob is not None:
            top = tuple(TopLogprob(self.model.piece(t), lp) for t, lp in item.top)
            self.pending.append(TokenLogprob(item.piece, item.logprob, top))
        if self.budget is not None and splitter is not None and splitter.inside:
            self.thinking += 1
            if self.thinking == self.budget:
                job.inject = list(self.close_thinking)
        text, hit = self.stops.feed(self.decoder.decode(item.piece))
        events = self._events(text) if text else []
        if hit is not None:
            job.cancelled = True
            events += self._end(Finished("stop_sequence", stop_sequence=hit))
        return events

    def done(self, item: Done) -> list[Event]:
        tail, _ = self.stops.feed(self.decoder.decode(b"", final=True))
        tail += self.stops.flush()
        events = self._events(tail) if tail else []
        if self.splitter is not None:
            events += self._convert(self.splitter.flush())
        self.cached = item.cached_tokens
        return events + self._end(Finished("length" if item.reason == "length" else "stop"))

    def _end(self, finish: Finished) -> list[Event]:
        events: list[Event] = []
        if self.parser is not None:
            events = self._attach(self.parser.finish())
            if self.parser.calls and finish.reason != "length":
                finish = Finished("tool_calls")
        self.finish = finish
        return events


def _written(prepared: PreparedPrompt, job: SequenceJob) -> int:
    """Prompt tokens up to the cache breakpoint that were decoded, not read from cache."""
    return max(0, prepared.cache_point - job.cached)


def _has_images(request: ChatRequest) -> bool:
    return any(isinstance(part, ImagePart) for message in request.messages for part in message.parts)


def _image_bytes(request: ChatRequest) -> list[bytes]:
    """The request's images in prompt order; they must be fetched already (runtime/images.py)."""
    images: list[bytes] = []
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, ImagePart):
                if part.data is None:
                    raise InvalidRequest("an image URL was not fetched before tokenizing")
                images.append(part.data)
    return images
