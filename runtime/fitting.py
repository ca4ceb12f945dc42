"""Making a tool round's results fit the context window, so they are never lost.

After server tools ran, the next generation reads their results. When the transcript would no
longer fit the model's context (with room left for an answer), the results of that round are
shortened: each keeps its head and tail, and a marker in the middle says how many tokens were
cut. If even empty results would not fit, the caller ends the response normally with
`finish_reason: "length"` instead of failing after the tools already ran.
"""

from __future__ import annotations

import dataclasses
import logging

from runtime.engine.base import Engine
from runtime.ir import ChatRequest, Message, TextPart, ToolResultPart

log = logging.getLogger(__name__)

MIN_ANSWER_TOKENS = 64  # room kept for the model's next turn, at the least
MAX_ANSWER_TOKENS = 512  # ... and at the most (an eighth of the context in between)
SEARCH_STEPS = 10  # binary search over how much of each result to keep (1/1024 steps)


def answer_room(context_length: int) -> int:
    """Tokens kept free for the next generation."""
    return max(MIN_ANSWER_TOKENS, min(MAX_ANSWER_TOKENS, context_length // 8))


async def fit_results(engine: Engine, request: ChatRequest, count: int) -> ChatRequest | None:
    """`request` with the tool results in its last `count` messages shortened until the prompt
    leaves `answer_room` tokens free; `request` itself when it fits already; None when it
    cannot fit even with those results emptied.

    Cost: one `count_tokens` when it fits; otherwise a binary search of `SEARCH_STEPS` renders,
    plus two per shortened result to count the cut in tokens.
    """
    limit = engine.info.context_length - answer_room(engine.info.context_length)
    if await engine.count_tokens(request) <= limit:
        return request
    head = request.messages[: len(request.messages) - count]
    results = request.messages[len(request.messages) - count :]

    def shortened(fraction: float) -> list[Message]:
        # Searched with the widest marker, so the real one (fewer digits) fits as well.
        return [_shorten(m, fraction, marker(10**9)) for m in results]

    def attempt(fraction: float) -> ChatRequest:
        return dataclasses.replace(request, messages=[*head, *shortened(fraction)])

    if await engine.count_tokens(attempt(0.0)) > limit:
        log.warning("the conversation does not fit the context even without this round's tool output")
        return None
    low, high = 0.0, 1.0  # keep `low` of each result: fits; `high`: does not
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        if await engine.count_tokens(attempt(middle)) <= limit:
            low = middle
        else:
            high = middle
    fitted = [await _with_marker(engine, request, m, low) for m in results]
    final = dataclasses.replace(request, messages=[*head, *fitted])
    log.info("tool output shortened to %.0f%% to fit the context", low * 100)
    return final


def _split(text: str, fraction: float) -> tuple[str, str, str]:
    keep = int(len(text) * fraction)
    head = keep - keep // 2
    tail = keep // 2
    return text[:head], text[head : len(text) - tail], text[len(text) - tail :] if tail else ""


def _shorten(message: Message, fraction: float, marker: str = "") -> Message:
    parts = []
    for part in message.parts:
        if isinstance(part, ToolResultPart) and fraction < 1.0:
            head, _, tail = _split(part.content, fraction)
            part = dataclasses.replace(part, content=f"{head}{marker}{tail}")
        parts.append(part)
    return Message(message.role, parts)


async def _with_marker(engine: Engine, request: ChatRequest, message: Message, fraction: float) -> Message:
    cut = "".join(_split(p.content, fraction)[1] for p in message.parts if isinstance(p, ToolResultPart))
    if not cut:
        return message
    return _shorten(message, fraction, marker(await _text_tokens(engine, request, cut)))


def marker(tokens: int) -> str:
    """What the model reads where output was cut."""
    return f"\n[... {tokens} tokens of output cut here to fit the context window ...]\n"


async def _text_tokens(engine: Engine, request: ChatRequest, text: str) -> int:
    """Tokens `text` takes, as the difference of two one-message prompts."""

    def probe(content: str) -> ChatRequest:
        return dataclasses.replace(request, messages=[Message("user", [TextPart(content)])], tools=[])

    return max(0, await engine.count_tokens(probe(text)) - await engine.count_tokens(probe("")))
