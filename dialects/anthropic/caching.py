"""Anthropic `cache_control` breakpoints: where the prefix a client asked to cache ends.

Anthropic caches the prompt in the order tools, system, messages, up to and including the
block that carries the last breakpoint (or, with a top-level `cache_control`, up to the last
block of all). This server caches every prefix anyway; the breakpoint only decides how usage
splits the prompt: `cache_read_input_tokens` (served from the KV cache),
`cache_creation_input_tokens` (up to the breakpoint, computed and so written this time) and
`input_tokens` (the rest). The adapter turns the location found here into an IR `CachePoint`.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from dialects.anthropic.protocol import (
    CacheControl,
    ContentBlock,
    ContentSource,
    DocumentBlock,
    InputMessage,
    MessageInputs,
    ToolResultBlock,
)
from runtime.errors import InvalidRequest

MAX_BREAKPOINTS = 4  # Anthropic's own limit, top-level automatic caching included


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """One marked place. `kind` and `index` say which: a tool (`index` = (i,)), a system
    block ((j,)), a message block ((message, block)), or the top level ("auto": the end)."""

    kind: str  # "tools" | "system" | "messages" | "auto"
    index: tuple[int, ...]
    ttl: str

    @property
    def order(self) -> tuple[int, ...]:
        """Position in Anthropic's caching order: tools, then system, then messages."""
        return (("tools", "system", "messages", "auto").index(self.kind), *self.index)


def _marker(block: ContentBlock) -> list[CacheControl]:
    """The breakpoints a message block carries: its own, and those on blocks nested in a
    tool result or a document (they end at the same top-level block)."""
    found = [block.cache_control] if getattr(block, "cache_control", None) is not None else []
    nested: list[object] = []
    if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
        nested = list(block.content)
    elif isinstance(block, DocumentBlock) and isinstance(block.source, ContentSource):
        nested = list(block.source.content) if isinstance(block.source.content, list) else []
    found += [c for item in nested if (c := getattr(item, "cache_control", None)) is not None]
    return found


def breakpoints(wire: MessageInputs) -> list[Breakpoint]:
    """Every breakpoint of the request, in caching order. More than four is a 400, as Anthropic
    answers it."""
    found: list[Breakpoint] = []
    for i, tool in enumerate(wire.tools or []):
        if tool.cache_control is not None:
            found.append(Breakpoint("tools", (i,), tool.cache_control.ttl))
    if isinstance(wire.system, list):
        for j, text in enumerate(wire.system):
            if text.cache_control is not None:
                found.append(Breakpoint("system", (j,), text.cache_control.ttl))
    for i, message in enumerate(wire.messages):
        if isinstance(message.content, str):
            continue
        for j, block in enumerate(message.content):
            found += [Breakpoint("messages", (i, j), marker.ttl) for marker in _marker(block)]
    if wire.cache_control is not None:
        found.append(Breakpoint("auto", (), wire.cache_control.ttl))
    if len(found) > MAX_BREAKPOINTS:
        raise InvalidRequest(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(found)}."
        )
    return sorted(found, key=lambda b: b.order)


def cut_at(wire: MessageInputs, point: Breakpoint) -> MessageInputs:
    """The request as it would be if it ended with the breakpoint's block (the whole request
    for automatic caching). Only its tools, system and messages matter."""
    if point.kind == "auto":
        return wire
    if point.kind == "tools":
        return msgspec.structs.replace(wire, tools=(wire.tools or [])[: point.index[0] + 1], system=None, messages=[])
    if point.kind == "system":
        system = wire.system[: point.index[0] + 1] if isinstance(wire.system, list) else wire.system
        return msgspec.structs.replace(wire, system=system, messages=[])
    i, j = point.index
    message = wire.messages[i]
    content = message.content[: j + 1] if isinstance(message.content, list) else message.content
    return msgspec.structs.replace(wire, messages=[*wire.messages[:i], InputMessage(message.role, content)])
