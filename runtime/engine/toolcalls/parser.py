"""Streaming tool-call parsing: the model's text deltas in, client-facing events out.

One state machine serves every format; a format says which markers open a call section,
what follows a marker, and what separates or closes calls (see `formats.py`). Rules:

- Plain text flows out as `TextDelta`, except a tail that might be the start of a marker,
  which is held until the next delta decides (so `<tool_` never leaks as content).
- A call is committed (`ToolCallStart`, with a fresh `call_<hex>` id) once its name is read
  and its arguments object opens; argument text then streams as `ToolCallDelta` fragments,
  always a valid JSON prefix, and `ToolCallEnd` carries their concatenation.
- Anything malformed before the commit point degrades to text; nothing here raises. If the
  text breaks off inside committed arguments (max_tokens), the arguments are closed with the
  shortest suffix that makes them valid JSON, sent as a last delta.

The parser is deterministic: the same text, however it is split into deltas, gives the same
calls and the same concatenated text (ids aside), so stream and non-stream agree.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection
from typing import Any

from runtime.engine.stops import held_suffix
from runtime.engine.toolcalls.jsonscan import WHITESPACE, JsonScanner
from runtime.events import Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart

log = logging.getLogger(__name__)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class More(Exception):
    """The text so far is a valid prefix: wait for more."""


class Mismatch(Exception):
    """The text cannot be what was expected here."""


def skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in WHITESPACE:
        i += 1
    return i


def expect(s: str, i: int, literal: str) -> int:
    """Position after `literal` at `i`; `More` if `s` ends inside it; `Mismatch` otherwise."""
    got = s[i : i + len(literal)]
    if got == literal:
        return i + len(literal)
    if literal.startswith(got):
        raise More
    raise Mismatch


def json_string(s: str, i: int) -> tuple[str, int]:
    """Decode the JSON string starting at `s[i]`; returns (value, position after it)."""
    if i >= len(s):
        raise More
    if s[i] != '"':
        raise Mismatch
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == '"':
            try:
                return json.loads(s[i : j + 1]), j + 1
            except ValueError as exc:
                raise Mismatch from exc
        j += 1
    raise More


class ToolCallParser:
    """Feed it text deltas; it returns events. Subclasses describe one format."""

    markers: tuple[str, ...] = ()  # open a call section anywhere in the text
    at_start: bool = False  # a "{" as the first non-space character opens a section
    args_keys: tuple[str, ...] = ("arguments",)
    closer: str | None = None  # ends a section; used to resynchronise after broken arguments
    envelope: bool = False  # the section's opening proves it holds calls (not a JSON answer)

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
        self._section_calls = 0  # calls ended in the current section
        self._buf = ""
        self._state = "text"
        self._seen_text = False  # no longer at the start of the output
        self._after_section = False  # whitespace right after calls is dropped
        self._skip = 0  # characters to emit as text when the pending section degrades
        self._pos = 0  # where the pending call object starts in the buffer
        self._whole_start = 0
        self._events: list[Event] = []
        self._call_id = ""
        self._name = ""
        self._args = ""
        self._sent = 0
        self._scan = JsonScanner()

    # -- public ----------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        self._drain(final=False)
        return self._take()

    def finish(self) -> list[Event]:
        """The text ended: flush held text, close or degrade whatever is open."""
        self._drain(final=True)
        if self._state == "args":
            self._scan.end_of_input()
            self._end_args()
        elif self._state in ("open", "call", "whole"):
            if self._section_calls or self._skip or self._state != "open":
                # Call markup cut short (max_tokens) with no arguments yet: not content.
                log.debug("dropping an unfinished tool call after %d complete ones", self._section_calls)
            else:
                self._degrade(all_text=True)
        elif self._state == "text" and self._buf:
            self._text(self._buf)
        self._buf = ""
        self._state = "text"
        return self._take()

    def start_answer(self) -> None:
        """A thinking block just ended: what follows is the start of the answer, where an
        `at_start` call may open."""
        if self._state == "text" and not self._buf.strip(WHITESPACE):
            self._seen_text = False

    # -- format hooks ------------------------------------------------------------------------

    def open_section(self, s: str, i: int) -> int:
        """Consume what follows the marker (or the opening "{") up to the first call object."""
        return i

    def next_call(self, s: str, i: int) -> tuple[bool, int]:
        """After a call object: (another call follows, position). `Mismatch`: the section ended."""
        raise Mismatch

    # -- machinery ---------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def _text(self, text: str) -> None:
        if not text:
            return
        self._seen_text = self._seen_text or bool(text.strip(WHITESPACE))
        if self._events and isinstance(self._events[-1], TextDelta):
            self._events[-1] = TextDelta(self._events[-1].text + text)
        else:
            self._events.append(TextDelta(text))

    def _drain(self, *, final: bool) -> None:
        handlers = {
            "text": self._in_text,
            "open": self._in_open,
            "call": self._in_call,
            "args": self._in_args,
            "whole": self._in_whole,
            "after": self._in_after,
            "extra": self._in_extra,
            "next": self._in_next,
            "resync": self._in_resync,
        }
        while True:
            state, before = self._state, len(self._buf)
            try:
                handlers[self._state](final)
            except More:
                return
            if self._state == state and len(self._buf) == before:
                return

    def _enter(self, state: str, consumed: int = 0) -> None:
        self._state = state
        self._buf = self._buf[consumed:]

    def _degrade(self, *, all_text: bool = False) -> None:
        """The pending section is not a call: its text is content after all."""
        log.debug("tool-call text did not parse; passing it on as text")
        if all_text or not self.markers:
            self._text(self._buf)
            self._buf = ""
        else:
            self._text(self._buf[: self._skip])
            self._buf = self._buf[self._skip :]
        self._seen_text = True
        self._state = "text"

    def _in_text(self, final: bool) -> None:
        if self._after_section:
            self._buf = self._buf.lstrip(WHITESPACE)
            if not self._buf:
                return
            self._after_section = False
        buf = self._buf
        if self.at_start and not self._seen_text:
            i = skip_ws(buf, 0)
            if i == len(buf):
                if final:
                    self._text(buf)
                    self._buf = ""
                return
            if buf[i] == "{":
                self._skip, self._pos, self._section_calls = 0, i, 0
                self._state = "open"
                return
            self._seen_text = True
        hit = min(((buf.find(m), m) for m in self.markers if m in buf), default=None)
        if hit is not None:
            at, marker = hit
            self._text(buf[:at])
            self._buf = buf[at:]
            self._skip, self._pos, self._section_calls = len(marker), len(marker), 0
            self._state = "open"
            return
        keep = 0 if final else held_suffix(buf, list(self.markers))
        self._text(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]

    def _in_open(self, final: bool) -> None:
        try:
            self._pos = self.open_section(self._buf, self._pos)
        except Mismatch:
            self._degrade()
            return
        self._state = "call"

    def _in_call(self, final: bool) -> None:
        if self.max_calls is not None and self.calls >= self.max_calls:
            log.debug("dropping a tool call beyond the %d allowed", self.max_calls)
            self._buf, self._state = "", "resync"
            return
        s = self._buf
        start = skip_ws(s, self._pos)
        try:
            i = skip_ws(s, expect(s, start, "{"))
        except Mismatch:
            self._degrade()
            return
        try:
            key, i = json_string(s, i)
            if key not in ("name", "type", "function", "id", *self.args_keys):
                self._degrade()  # an object, but not a call: no need to wait for its end
                return
            if key != "name":
                raise Mismatch
            i = skip_ws(s, expect(s, skip_ws(s, i), ":"))
            name, i = json_string(s, i)
            i = skip_ws(s, expect(s, skip_ws(s, i), ","))
            key, i = json_string(s, i)
            i = skip_ws(s, expect(s, skip_ws(s, i), ":"))
            if i >= len(s):
                raise More
            # Stream only an object written inline; anything else takes the careful path.
            if key not in self.args_keys or s[i] != "{" or not self._allowed(name):
                raise Mismatch
        except Mismatch:
            self._start_whole(start)
            return
        self._call_id, self._name, self._args, self._sent = self.new_id(), name, "", 0
        self._scan = JsonScanner()
        self._events.append(ToolCallStart(self.calls, self._call_id, name))
        self._enter("args", i)  # the marker and anything held before the call are dropped

    def _allowed(self, name: str) -> bool:
        if self.max_calls is not None and self.calls >= self.max_calls:
            return False
        return self.names is None or name in self.names

    def _in_args(self, final: bool) -> None:
        n = self._scan.feed(self._buf)
        self._args += self._buf[:n]
        self._buf = self._buf[n:]
        if self._scan.safe > self._sent:
            self._events.append(ToolCallDelta(self.calls, self._args[self._sent : self._scan.safe]))
            self._sent = self._scan.safe
        if self._scan.done:
            self._end_args()
            self._state = "after"
        elif self._scan.failed:
            self._end_args()
            self._state = "resync"

    def _end_args(self) -> None:
        suffix = self._scan.heal()
        if suffix:
            log.debug("tool call %s arguments closed with %r", self._name, suffix)
            self._events.append(ToolCallDelta(self.calls, suffix))
        arguments = self._args[: self._scan.safe] + suffix
        self._events.append(ToolCallEnd(self.calls, self._call_id, self._name, arguments))
        self.calls += 1
        self._section_calls += 1

    def _start_whole(self, start: int) -> None:
        self._scan = JsonScanner()
        self._whole_start = self._pos = start
        self._state = "whole"

    def _in_whole(self, final: bool) -> None:
        n = self._scan.feed(self._buf[self._pos :])
        self._pos += n
        if self._scan.failed:
            self._degrade()
            return
        if not self._scan.done:
            return
        call = self._call_from(self._buf[self._whole_start : self._pos])
        if call is None:
            self._degrade()
            return
        name, arguments = call
        if not self._allowed(name):
            if not self._skip and not self.envelope:  # a JSON answer that happens to look like a call
                self._degrade()
                return
            # Call markup for a tool that may not be called here: dropped, never content.
            log.debug("dropping a call to %r (not allowed here)", name)
            self._enter("next", self._pos)
            return
        call_id = self.new_id()
        self._events += [
            ToolCallStart(self.calls, call_id, name),
            ToolCallDelta(self.calls, arguments),
            ToolCallEnd(self.calls, call_id, name, arguments),
        ]
        self.calls += 1
        self._section_calls += 1
        self._enter("next", self._pos)

    def _call_from(self, text: str) -> tuple[str, str] | None:
        """A call written in another key order or shape: {"function": {...}}, string arguments."""
        try:
            obj: Any = json.loads(text)
        except ValueError:
            return None
        if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
            obj = obj["function"]
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        name = obj["name"]
        key = next((k for k in self.args_keys if k in obj), None)
        if key is None and self.names is None:
            return None
        arguments = obj.get(key, {}) if key else {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return name, json.dumps(arguments, ensure_ascii=False)

    def _in_after(self, final: bool) -> None:
        s = self._buf
        i = skip_ws(s, 0)
        if i >= len(s):
            raise More
        if s[i] == "}":
            self._enter("next", i + 1)
        elif s[i] == ",":
            # More keys after the arguments (e.g. an "id"): validate them as an object tail.
            self._scan = JsonScanner()
            self._scan.feed("{")
            self._enter("extra", i + 1)
        else:
            self._state = "next"

    def _in_extra(self, final: bool) -> None:
        n = self._scan.feed(self._buf)
        self._buf = self._buf[n:]
        if self._scan.done:
            self._state = "next"
        elif self._scan.failed:
            self._state = "resync"

    def _in_next(self, final: bool) -> None:
        try:
            more, i = self.next_call(self._buf, 0)
        except Mismatch:
            self._seen_text = True
            self._state = "text"
            self._buf = self._buf[skip_ws(self._buf, 0) :]
            return
        self._skip = 0
        if more:
            self._pos, self._state = i, "call"
        else:
            self._seen_text = self._after_section = True
            self._enter("text", i)

    def _in_resync(self, final: bool) -> None:
        """After broken arguments: drop text up to the end of the section, if it is marked."""
        at = self._buf.find(self.closer) if self.closer else -1
        if at >= 0:
            self._seen_text = True
            self._enter("text", at + len(self.closer or ""))
        else:
            self._buf = ""
