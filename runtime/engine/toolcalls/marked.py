"""Parsing helpers for families whose calls sit between special tokens, as a section of
calls (DeepSeek R1/V3.1, Kimi K2) or a JSON list (Command R7B): the section scanner
`MarkedCallsParser` and the small readers it and the families share."""

from __future__ import annotations

from typing import ClassVar

from runtime.engine.toolcalls.jsonscan import WHITESPACE, JsonScanner
from runtime.engine.toolcalls.snapshot import CallSnapshot, Content, Item, SnapshotParser, held_suffix_of


def skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in WHITESPACE:
        pos += 1
    return pos


def skip_optional(text: str, pos: int, markers: tuple[str, ...], final: bool) -> int | None:
    """Past each of `markers` that comes next (whitespace around them skipped), in order;
    None while the text ends where one of them may still be coming (at the end of the
    output, such a cut marker is markup and skipped)."""
    for marker in markers:
        at = skip_space(text, pos)
        if text.startswith(marker, at):
            pos = at + len(marker)
        elif marker.startswith(text[at:]):
            if not final:
                return None
            pos = len(text)
    return pos


def json_arguments(name: str, text: str, at: int, final: bool) -> tuple[CallSnapshot, int | None]:
    """The call's JSON arguments from `at` on, and where they end (None while unfinished).

    Arguments that are not an object, or break off malformed, are closed at their last
    JSON-safe point (as mistral.py does): the call keeps what it had, the rest is text.
    """
    start = skip_space(text, at)
    if start == len(text):
        return CallSnapshot(name), None
    if text[start] != "{":
        return CallSnapshot(name, "{}", done=True), start
    scan = JsonScanner()
    n = scan.feed(text[start:])
    value = text[start : start + n]
    if scan.done:
        return CallSnapshot(name, value, done=True), start + n
    if scan.failed:
        return CallSnapshot(name, value[: scan.safe] + scan.heal(), done=True), start + n
    return CallSnapshot(name, value[: scan.safe]), None


class MarkedCallsParser(SnapshotParser):
    """Content, then a section of calls between special tokens: `section_begin` (optional:
    a bare `call_begin` opens it too), calls each starting with `call_begin`, `section_end`
    (optional). Whitespace between calls is layout; text after the section is content.
    Subclasses read one call (`read_call`)."""

    section_begin: ClassVar[str]
    section_end: ClassVar[str]
    call_begin: ClassVar[str]

    def read_call(self, text: str, pos: int, final: bool) -> tuple[CallSnapshot | None, int | None]:
        """The call whose markup goes on at `pos` (just past `call_begin`): the call so far
        (None while its name is unwritten), and where the text after it starts (None while
        the call, its closing marker included, is unfinished)."""
        raise NotImplementedError

    def parse(self, text: str, final: bool) -> list[Item]:
        items: list[Item] = []
        openers = (self.section_begin, self.call_begin)
        pos = 0
        while True:
            found = [(at, m) for m in openers if (at := text.find(m, pos)) >= 0]
            if not found:
                # At the end, a held prefix of a marker is text the model wrote: the markers are
                # special tokens, sampled whole, so they are never cut short.
                keep = 0 if final else held_suffix_of(text[pos:], openers)
                items.append(Content(text[pos : len(text) - keep]))
                return items
            at, marker = min(found)
            items.append(Content(text[pos:at]))
            pos = at + len(marker) if marker == self.section_begin else at
            while True:  # inside the section
                at = skip_space(text, pos)
                if text.startswith(self.call_begin, at):
                    call, end = self.read_call(text, at + len(self.call_begin), final)
                    if call is not None:
                        items.append(call)
                    if end is None:
                        return items
                    pos = end
                    continue
                if text.startswith(self.section_end, at):
                    pos = at + len(self.section_end)
                    break
                rest = text[at:]
                if self.call_begin.startswith(rest) or self.section_end.startswith(rest):
                    return items  # a marker still being written (or, at the end, cut short)
                pos = at  # the section is over without its closing marker
                break
