"""A host-RAM cache of evicted slot contents, so a conversation that comes back is restored.

Slots keep their KV cache between requests, but with more live conversations than slots
(agent loops in many sessions) a slot is soon taken by another prompt and the next turn of
the first conversation would prefill everything again. Before a slot's content is thrown
away it is copied out (`llama_state_seq_get_data`), and a later prompt that starts with it
copies it back in (`llama_state_seq_set_data`): about 23 KB per token for SmolLM2-135M,
copied in under a millisecond, where prefilling costs ~2 ms per token on a small CPU.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import count

import llama_cpp

from runtime.ir import Message, ToolSpec

log = logging.getLogger(__name__)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False, slots=True)
class SavedSequence:
    key: int
    tokens: list[int]  # what the saved KV holds, position by position
    scope: str  # only prompts of the same scope may use it
    data: ctypes.Array[ctypes.c_uint8]

    @property
    def size(self) -> int:
        return len(self.data)


class HostCache:
    """Saved sequences, least recently used first out, within `capacity` bytes.
    Used by the decode thread only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._entries: OrderedDict[int, SavedSequence] = OrderedDict()
        self._ids = count()

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: list[int], scope: str) -> tuple[SavedSequence | None, int]:
        """The saved sequence of `scope` sharing the longest prefix with `prompt`, and that length."""
        best, length = None, 0
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, prompt) if entry.scope == scope else 0
            if n > length:
                best, length = entry, n
        return best, length

    def save(self, ctx: llama_cpp.llama_context_p, seq_id: int, tokens: list[int], scope: str) -> None:
        """Copy sequence `seq_id` (holding `tokens`) out of the context."""
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        if size == 0 or size > self.capacity:
            return
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, data, size, seq_id) != size:
            return
        # What this one extends is now redundant: the longer entry restores it too.
        redundant = [
            k for k, e in self._entries.items() if e.scope == scope and common_prefix(e.tokens, tokens) == len(e.tokens)
        ]
        for key in redundant:
            self._drop(key)
        while self._entries and self.used + size > self.capacity:
            self._drop(next(iter(self._entries)))
        key = next(self._ids)
        self._entries[key] = SavedSequence(key, list(tokens), scope, data)
        self.used += size
        log.debug("saved %d tokens (%d KiB); host cache %d MiB", len(tokens), size >> 10, self.used >> 20)

    def restore(self, ctx: llama_cpp.llama_context_p, entry: SavedSequence, seq_id: int) -> bool:
        """Copy `entry` into the (empty) sequence `seq_id`."""
        read = llama_cpp.llama_state_seq_set_data(ctx, entry.data, entry.size, seq_id)
        if entry.key in self._entries:  # (a save just before may have evicted it)
            self._entries.move_to_end(entry.key)
        return read > 0

    def _drop(self, key: int) -> None:
        self.used -= self._entries.pop(key).size


@dataclass(eq=False, slots=True)
class Reply:
    """A finished generation, kept so that the request continuing it (the agent loop's next
    round) is tokenized from where it ended."""

    messages: list[Message]  # its request's messages, held: their identity marks a continuation
    tools: list[ToolSpec]  # the tools its prompt described
    text: str  # its prompt, then the text the model generated
    tokens: list[int]  # the prompt's tokens, then the tokens sampled: what the slot's KV holds


class Replies:
    """The latest `Reply`s, at most `capacity` (oldest out first). Thread-safe: added from the
    event loop, read from the preparing thread and from token counting."""

    def __init__(self, capacity: int) -> None:
        self._replies: deque[Reply] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, reply: Reply) -> None:
        with self._lock:
            self._replies.append(reply)

    def continued(self, messages: list[Message]) -> Reply | None:
        """The latest reply whose request's messages `messages` extends with the very same
        objects. The agent loop builds each round's conversation from the last round's list;
        a client that sends a conversation again builds new objects, so a request from the
        wire is always tokenized afresh, the same way whatever ran before it."""
        with self._lock:
            replies = list(self._replies)
        for reply in reversed(replies):
            n = len(reply.messages)
            if len(messages) > n and all(a is b for a, b in zip(reply.messages, messages, strict=False)):
                return reply
        return None
