"""The agent loop: generate, run the server-side tools the model called, feed the results
back, generate again — until the model answers, calls a client tool, or the loop hits its cap.

Server-run calls never reach the client as calls it must execute: their ToolCall* events are
swallowed here and replaced by ToolRunStart/ToolResult events. Client calls pass through.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from runtime.engine.base import Engine
from runtime.events import (
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
)
from runtime.fitting import fit_results
from runtime.ir import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    TextPart,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
)
from runtime.plugins import ToolRegistry
from runtime.sessions import Session
from runtime.tools import MODEL_IMAGE_TYPES, Tool, ToolContext, ToolOutput

log = logging.getLogger(__name__)

MAX_OUTPUT_CHARS = 20_000  # what the model sees of one tool result
RESTORED_NOTE = (
    "[This session was closed since its last call (idle, or a server restart). Its workspace files "
    "are still here, but Python state (variables, imports, open files) was lost: re-run what you need.]"
)
_RESTORE_NOTED = "runtime.restore_noted"


@dataclass(frozen=True, slots=True)
class AgentLimits:
    max_iterations: int = 8  # tool-running rounds per request
    tool_timeout: float = 60.0  # seconds per tool call


@dataclass(slots=True)
class _Turn:
    """What one generation produced, as the loop needs it."""

    text: str = ""
    server_calls: list[ToolCallEnd] = field(default_factory=list)
    client_calls: int = 0
    finish: Finished | None = None


@dataclass(slots=True)
class _UsageSum:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    written: int = 0

    def add(self, usage: Usage) -> None:
        self.prompt += usage.prompt_tokens
        self.completion += usage.completion_tokens
        self.cached += usage.cached_tokens
        self.written += usage.cache_write_tokens

    def event(self) -> Usage:
        return Usage(self.prompt, self.completion, self.cached, self.written)


def with_server_tools(request: ChatRequest, tools: list[Tool]) -> ChatRequest:
    """The request as the model sees it: client tools plus the enabled server tools."""
    client_names = {t.name for t in request.tools}
    specs = [ToolSpec(t.name, t.description, t.parameters) for t in tools if t.name not in client_names]
    return dataclasses.replace(request, tools=[*request.tools, *specs])


async def run_agent(
    engine: Engine,
    request: ChatRequest,
    *,
    tools: list[Tool],
    registry: ToolRegistry,
    session: Session,
    limits: AgentLimits,
) -> AsyncIterator[Event]:
    server = {t.name: t for t in tools}
    current = with_server_tools(request, tools)
    cap = limits.max_iterations
    # OpenAI's `max_tool_calls`: calls, not rounds. Calls past it are not run; the model is
    # told so in their results, and the next round is the last one.
    budget = request.server_tools.max_calls
    usage = _UsageSum()
    for iteration in range(cap + 1):
        last = iteration == cap or budget == 0
        if last:
            # Out of rounds (or calls): one last generation without server tools, so the model answers.
            current = dataclasses.replace(
                current,
                tools=list(request.tools),
                tool_choice=_without_server(request.tool_choice, server),
                calls_forbidden=not request.tools,
            )
        turn = _Turn()
        async for event in _forward(engine.generate(current), set(server), turn):
            if isinstance(event, Usage):
                usage.add(event)
            else:
                yield event
        if not turn.server_calls or last:
            # Server calls past the cap are not run (and were never shown as client calls).
            finish = turn.finish or Finished("stop")
            if finish.reason == "tool_calls" and not turn.client_calls:
                finish = Finished("stop")
            yield usage.event()
            yield finish
            return
        results: list[ToolResult] = []
        for call in turn.server_calls:
            if budget is not None and budget <= 0:
                limit = request.server_tools.max_calls
                text = f"not run: this request allows at most {limit} tool call{'s' * (limit != 1)} (max_tool_calls)"
                result = ToolResult(call.id, call.name, call.arguments, text, is_error=True)
            else:
                if budget is not None:
                    budget -= 1
                yield ToolRunStart(call.id, call.name, call.arguments)
                result = await _run_tool(server[call.name], call, registry, session, limits)
            results.append(result)
            yield result
        # A forced call has been made; from now on the model must be free to answer in text.
        choice = ToolChoice("auto") if current.tool_choice.mode in ("required", "function") else current.tool_choice
        before = current
        # A model with a projector sees the images the tools displayed as image inputs.
        images = await model_images(results) if engine.info.vision else {}
        current = _with_round(before, turn, results, choice, images)
        if turn.client_calls:
            yield usage.event()
            yield Finished("tool_calls")
            return
        # The tools ran: their results must reach the client whatever happens next. If the
        # transcript outgrows the context, the results are shortened (images dropped first,
        # for the text note); if nothing would fit, the response ends here (the results are
        # already out) as cut by length.
        fitted = await fit_results(engine, current, len(results) + bool(images))
        if fitted is None and images:
            log.info("this round's images do not fit the context; the model reads a note instead")
            current = _with_round(before, turn, results, choice, {})
            fitted = await fit_results(engine, current, len(results))
        if fitted is None:
            yield usage.event()
            yield Finished("length")
            return
        current = fitted


def _with_round(
    request: ChatRequest, turn: _Turn, results: list[ToolResult], choice: ToolChoice, images: dict[str, list[ImagePart]]
) -> ChatRequest:
    """`request` extended by one tool round (the calls, their results, `images` by call id)."""
    return dataclasses.replace(
        request,
        messages=[*request.messages, *_transcript(turn, results, request.prefill, images)],
        tool_choice=choice,
        prefill="",  # now part of the transcript
    )


def _without_server(choice: ToolChoice, server: dict[str, Tool]) -> ToolChoice:
    if choice.mode == "function" and choice.name in server:
        return ToolChoice("none")
    return choice if choice.mode != "required" else ToolChoice("auto")


async def _forward(events: AsyncIterator[Event], server_names: set[str], turn: _Turn) -> AsyncIterator[Event]:
    """Pass client-visible events on; keep server calls back; re-index client calls."""
    server_indexes: set[int] = set()
    client_index: dict[int, int] = {}
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            match event:
                case TextDelta(text=text):
                    turn.text += text
                    yield event
                case ReasoningDelta():
                    yield event
                case ToolCallStart(index=index, name=name) if name in server_names:
                    server_indexes.add(index)
                case ToolCallStart(index=index):
                    client_index[index] = len(client_index)
                    yield dataclasses.replace(event, index=client_index[index])
                case ToolCallDelta(index=index) if index in server_indexes:
                    pass
                case ToolCallDelta(index=index):
                    yield dataclasses.replace(event, index=client_index.get(index, index))
                case ToolCallEnd(index=index) if index in server_indexes:
                    turn.server_calls.append(event)
                case ToolCallEnd(index=index):
                    turn.client_calls += 1
                    yield dataclasses.replace(event, index=client_index.get(index, index))
                case Finished():
                    turn.finish = event
                case _:
                    yield event


async def _run_tool(
    tool: Tool, call: ToolCallEnd, registry: ToolRegistry, session: Session, limits: AgentLimits
) -> ToolResult:
    output = await execute_tool(tool, call.arguments, registry, session, limits.tool_timeout)
    return to_result(call.id, tool.name, call.arguments, output)


async def execute_tool(
    tool: Tool, arguments: str, registry: ToolRegistry, session: Session, timeout: float
) -> ToolOutput:
    """Run one tool call; every failure becomes an error output the model can read."""
    try:
        parsed = json.loads(arguments or "{}")
    except (ValueError, RecursionError) as exc:
        return ToolOutput(f"the arguments are not valid JSON ({exc}); call {tool.name} again with a JSON object", True)
    if problem := registry.validate_arguments(tool, parsed):
        return ToolOutput(problem, is_error=True)
    started = time.monotonic()
    context = ToolContext(session=session, deadline=started + timeout)
    try:
        async with session.lock:
            if session.closed:  # deleted while this request waited for the lock
                return ToolOutput("the tool session was deleted; nothing ran", is_error=True)
            session.running = asyncio.ensure_future(asyncio.wait_for(tool.run(parsed, context), timeout + 5.0))
            try:
                output = await session.running
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this request itself is being cancelled (client gone, shutdown)
                output = ToolOutput(f"{tool.name} was stopped: its session was deleted while it ran", is_error=True)
            finally:
                session.running = None
    except TimeoutError:
        output = ToolOutput(f"{tool.name} did not finish within {timeout:.0f} s and was stopped", is_error=True)
    except Exception as exc:  # a broken plugin must not fail the request
        log.exception("tool %s failed", tool.name)
        output = ToolOutput(f"{tool.name} failed: {type(exc).__name__}: {exc}", is_error=True)
    if session.restored and not session.state.get(_RESTORE_NOTED):
        session.state[_RESTORE_NOTED] = True
        output = dataclasses.replace(output, text=f"{RESTORED_NOTE}\n{output.text}", session_restored=True)
    elapsed = time.monotonic() - started
    if output.is_error:  # say why, so an operator can tell a limit from a bug
        reason = output.text.strip().splitlines()[-1][:200] if output.text.strip() else "no output"
        log.info("tool %s failed after %.3f s: %s", tool.name, elapsed, reason)
    else:
        log.info("tool %s ran in %.3f s", tool.name, elapsed)
    return output


def to_result(call_id: str, name: str, arguments: str, output: ToolOutput) -> ToolResult:
    attachments = [a.wire() for a in output.attachments]
    return ToolResult(call_id, name, arguments, output.text, output.is_error, attachments, output.session_restored)


async def model_images(results: list[ToolResult]) -> dict[str, list[ImagePart]]:
    """The images of `results` a vision model can be shown, by call id: PNG, JPEG and GIF
    attachments that decode (checked with Pillow, since they come out of the sandbox).
    Others (SVG, HTML, anything broken) reach the client only."""
    shown: dict[str, list[ImagePart]] = {}
    for result in results:
        for i, attachment in enumerate(result.attachments):
            if attachment.get("media_type") not in MODEL_IMAGE_TYPES:
                continue
            data = await asyncio.to_thread(_decodable, str(attachment.get("data", "")))
            if data is not None:
                where = f"tool_results[{result.call_id}].attachments[{i}]"
                shown.setdefault(result.call_id, []).append(ImagePart(data, None, attachment["media_type"], where))
    return shown


def _decodable(encoded: str) -> bytes | None:
    """The image's bytes, or None when they are not base64 of an image Pillow can read."""
    try:
        data = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        log.info("a tool's image attachment could not be decoded; the model is not shown it")
        return None
    return data


def _for_model(result: ToolResult, shown: int = 0) -> str:
    """What the model reads of one result; `shown` of its images follow in a user message."""
    text = result.output
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n[... {len(result.output) - MAX_OUTPUT_CHARS} more characters cut]"
    images = sum(1 for a in result.attachments if a.get("type") == "image")
    if images:
        follow = "" if not shown else f"; {shown} of them follow" if shown < images else " and follow"
        text += f"\n[{images} image(s) were shown to the user{follow}]"
    return ("Error: " + text) if result.is_error else text


def _transcript(
    turn: _Turn, results: list[ToolResult], prefill: str = "", images: dict[str, list[ImagePart]] | None = None
) -> list[Message]:
    """The round as the model reads it next: its own message with the calls, one `tool`
    message per result and, when `images` (by call id) is not empty, one user message with
    those images, each result's introduced by a line (the IR's tool results are text, and
    every chat template renders images in a user turn; Anthropic clients' own tool-result
    images take the same place, see dialects/anthropic/content.py)."""
    images = images or {}
    text = prefill + turn.text
    parts: list[Part] = [TextPart(text)] if text else []
    parts += [ToolCallPart(c.id, c.name, c.arguments) for c in turn.server_calls]
    messages = [Message("assistant", parts)]
    messages += [
        Message("tool", [ToolResultPart(r.call_id, _for_model(r, len(images.get(r.call_id, []))), r.is_error, r.name)])
        for r in results
    ]
    shown: list[Part] = []
    for r in results:
        if found := images.get(r.call_id):
            shown += [TextPart(f"[{len(found)} image(s) displayed by the {r.name} call above:]\n"), *found]
    if shown:
        messages.append(Message("user", shown))
    return messages
