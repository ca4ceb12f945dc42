"""Tool-call parsing by snapshots: parse the whole output so far, emit what is new.

The families whose calls are not one JSON object (XML parameters, harmony channels, a name
between special tokens followed by JSON) are easier to get right as a plain function from
text to structure than as a character state machine. A `SnapshotParser` subclass writes that
function, `parse(text, final)`, and this base turns successive snapshots into events, the
same way llama.cpp's `common_chat_parse(..., is_partial)` + diff does (common/chat.cpp).

The contract a family's `parse` keeps:

- It returns the output as an ordered list of `Content`, `Reasoning` and `CallSnapshot`.
- With `final=False` the text may end anywhere (inside a marker, a name, a value): what it
  reports must be a prefix of what it will report for any longer text. In particular it
  holds back a tail that could still become a marker (see `held_suffix`), and a call's
  `arguments` is always a JSON prefix that later text only extends.
- With `final=True` the text is complete; a call cut short keeps `done=False` and the base
  closes its arguments into valid JSON (max_tokens). Unfinished markup with no call name
  yet is dropped, never shown as content.
- It never raises on any input: text that is not a call is content.

Given that, events are the same however the text is split into deltas (`test_toolcall_*`
tests feed every split), so stream and non-stream agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from runtime.engine.toolcalls.jsonscan import JsonScanner
from runtime.engine.toolcalls.parser import new_call_id
from runtime.events import Event, ReasoningDelta, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """One call as far as it is written: `arguments` is JSON text (a prefix while not done)."""

    name: str
    arguments: str = ""
    done: bool = False


Item = Content | Reasoning | CallSnapshot


class SnapshotParser:
    """Feed it text deltas; it returns events. Subclasses implement `parse`.

    The same interface as `ToolCallParser`: `feed`, `finish`, `calls`, `start_answer`.
    `names`: the tools the model may call (others are dropped, with a log line);
    `max_calls`: calls beyond it are dropped (a single forced call, `parallel_tool_calls: false`).
    """

    def __init__(
        self,
        *,
        names: Collection[str] | None = None,
        max_calls: int | None = None,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self.names = set(names) if names is not None else None
        self.max_calls = max_calls
        self.new_id = new_id
        self.calls = 0  # calls ended (ToolCallEnd emitted)
        self._text = ""
        self._sent: list[Item] = []  # what has been emitted, item by item
        self._ids: dict[int, tuple[int, str] | None] = {}  # snapshot call position -> (event index, id) or dropped
        self._started = 0  # ToolCallStart events emitted

    # -- the family's part -------------------------------------------------------------------

    def parse(self, text: str, final: bool) -> list[Item]:
        """The output so far as items (see the module docstring for the contract)."""
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        self._text += text
        return self._diff(self.parse(self._text, final=False), final=False)

    def finish(self) -> list[Event]:
        return self._diff(self.parse(self._text, final=True), final=True)

    def start_answer(self) -> None:
        """A thinking block just ended: what follows is the start of the answer."""

    # -- diffing -----------------------------------------------------------------------------

    def _diff(self, items: list[Item], *, final: bool) -> list[Event]:
        events: list[Event] = []
        items = _merge(items)
        call_pos = -1
        for i, item in enumerate(items):
            if isinstance(item, CallSnapshot):
                call_pos += 1
            old = self._sent[i] if i < len(self._sent) else None
            if old is not None and type(old) is not type(item):
                log.warning(
                    "tool-call parser %s changed its mind at item %d; ignoring the rest", type(self).__name__, i
                )
                break
            if isinstance(item, Content | Reasoning):
                before = old.text if isinstance(old, Content | Reasoning) else ""
                if not item.text.startswith(before):
                    log.warning("tool-call parser %s rewrote emitted text; ignoring it", type(self).__name__)
                    break
                if len(item.text) > len(before):
                    extra = item.text[len(before) :]
                    events.append(TextDelta(extra) if isinstance(item, Content) else ReasoningDelta(extra))
            else:
                events += self._call_events(call_pos, item, old if isinstance(old, CallSnapshot) else None, final)
            if i < len(self._sent):
                self._sent[i] = item
            else:
                self._sent.append(item)
        if final:
            # A call the text broke off inside (max_tokens): close its arguments into valid JSON.
            pos = -1
            for item in self._sent:
                if isinstance(item, CallSnapshot):
                    pos += 1
                    if not item.done:
                        events += self._close(pos, item)
        return events

    def _call_events(self, pos: int, item: CallSnapshot, old: CallSnapshot | None, final: bool) -> list[Event]:
        if pos not in self._ids:
            if not item.name:
                return []  # the name is not written yet
            if not self._allowed(item.name):
                log.debug("dropping a call to %r (not allowed here)", item.name)
                self._ids[pos] = None
                return []
            self._ids[pos] = (self._started, self.new_id())
            self._started += 1
            old = None
            out: list[Event] = [ToolCallStart(self._ids[pos][0], self._ids[pos][1], item.name)]  # type: ignore[index]
        else:
            out = []
        slot = self._ids[pos]
        if slot is None:
            return []
        index, call_id = slot
        before = old.arguments if old is not None else ""
        if old is not None and old.done:
            return []
        if not item.arguments.startswith(before):
            log.warning("tool-call parser %s rewrote the arguments of %r", type(self).__name__, item.name)
            return out
        if len(item.arguments) > len(before):
            out.append(ToolCallDelta(index, item.arguments[len(before) :]))
        if item.done:
            out.append(ToolCallEnd(index, call_id, item.name, item.arguments))
            self.calls += 1
        return out

    def _close(self, pos: int, item: CallSnapshot) -> list[Event]:
        slot = self._ids.get(pos)
        if slot is None:
            return []
        index, call_id = slot
        scan = JsonScanner()
        scan.feed(item.arguments)
        scan.end_of_input()
        if not item.arguments.strip():
            suffix, arguments = "{}", "{}"
        else:
            suffix = scan.heal()
            arguments = item.arguments[: scan.safe] + suffix
            if scan.safe < len(item.arguments):  # a family broke the "safe prefix" contract
                log.warning("tool call %r: arguments sent past a JSON-safe point; closing the safe part", item.name)
        out: list[Event] = [ToolCallDelta(index, suffix)] if suffix else []
        out.append(ToolCallEnd(index, call_id, item.name, arguments))
        self.calls += 1
        return out

    def _allowed(self, name: str) -> bool:
        if self.max_calls is not None and self._started >= self.max_calls:
            return False
        return self.names is None or name in self.names


def _merge(items: list[Item]) -> list[Item]:
    """Adjacent text items of one kind become one (so item positions stay stable)."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, Content | Reasoning) and not item.text:
            continue
        if out and isinstance(item, Content | Reasoning) and type(out[-1]) is type(item):
            out[-1] = type(item)(out[-1].text + item.text)  # type: ignore[union-attr]
        else:
            out.append(item)
    return out


def held_suffix_of(text: str, markers: Collection[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:n]):
                best = max(best, n)
                break
    return best
