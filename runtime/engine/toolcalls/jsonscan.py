"""An incremental JSON syntax scanner for one value, fed text as the model writes it.

Tool-call parsers use it to stream argument fragments: it says how much of the text so far
is a valid JSON prefix (safe to send), when the value is complete, and - if the text breaks
off (max_tokens) or goes wrong - the shortest suffix that closes what was already sent into a
valid JSON value, so a streamed call always ends with arguments that parse.
"""

from __future__ import annotations

WHITESPACE = " \t\r\n"
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_ESCAPES = set('"\\/bfnrt')
_HEX = set("0123456789abcdefABCDEF")
# Number states in which the text so far is a complete number.
_NUMBER_ENDS = {"zero", "int", "frac", "exp"}


class JsonScanner:
    """Validates one JSON value char by char (RFC 8259).

    `feed` stops at the end of the value or at the first invalid character and returns
    how many characters it consumed. `safe` counts the consumed characters that form a
    prefix worth sending: a comma, and an object key with its colon, are held back until
    the value after them starts, so a healed value never ends in `,}` or `"key": null}`.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []  # open containers: "{" or "["
        self.mode = "value"  # value | key | colon | after | string | esc | hex | number | literal | done
        self.first = True  # right after "{" / "[": the container may close at once
        self.in_key = False  # the open string is an object key
        self.hex_left = 0
        self.number = ""  # number sub-state
        self.literal = ""  # what is left to type of true/false/null
        self.consumed = 0
        self.safe = 0
        self.failed = False
        self._holding = False  # a comma or a key is held back

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def feed(self, text: str) -> int:
        start = self.consumed
        for ch in text:
            if self.mode == "done" or self.failed:
                break
            before = self.mode
            if not self._step(ch):
                if self.mode == "number" and self.number in _NUMBER_ENDS:
                    # A delimiter ends the number; it belongs to the enclosing container.
                    self._value_done()
                    before = self.mode
                    if self.mode != "done" and self._step(ch):
                        self._advance(ch, before)
                        continue
                    if self.mode == "done":
                        break
                self.failed = True
                break
            self._advance(ch, before)
        return self.consumed - start

    def end_of_input(self) -> None:
        """The text ended: a top-level number is complete if it is well-formed."""
        if self.mode == "number" and self.number in _NUMBER_ENDS and not self.stack:
            self.mode = "done"

    def heal(self) -> str:
        """The suffix that turns the first `safe` characters into a complete JSON value."""
        if self.mode == "done":
            return ""
        closers = "".join("}" if c == "{" else "]" for c in reversed(self.stack))
        if self._holding:
            return closers
        match self.mode:
            case "value":
                inner = "" if self.first and self.stack and self.stack[-1] == "[" else "null"
                if not self.stack:
                    inner = "null"
            case "key":
                inner = ""
            case "colon":
                inner = ":null"
            case "string" | "esc" | "hex":
                inner = {"string": "", "esc": "\\", "hex": "0" * self.hex_left}[self.mode] + '"'
                if self.in_key:
                    inner += ":null"
            case "number":
                inner = "" if self.number in _NUMBER_ENDS else "0"
            case "literal":
                inner = self.literal
            case _:
                inner = ""
        return inner + closers

    # -- internals ---------------------------------------------------------------------

    def _advance(self, ch: str, before: str) -> None:
        self.consumed += 1
        if (ch not in WHITESPACE and before == "value") or (before == "key" and ch == "}"):
            self._holding = False  # the value after a held comma/key has started
        if (ch == "," and before == "after") or (before == "key" and ch == '"'):
            self._holding = True
        if not self._holding:
            self.safe = self.consumed

    def _value_done(self) -> None:
        self.mode = "after" if self.stack else "done"
        self.first = False

    def _step(self, ch: str) -> bool:
        mode = self.mode
        if mode == "string":
            if ch == '"':
                if self.in_key:
                    self.mode, self.in_key = "colon", False
                else:
                    self._value_done()
            elif ch == "\\":
                self.mode = "esc"
            elif ord(ch) < 0x20:
                return False
            return True
        if mode == "esc":
            if ch == "u":
                self.mode, self.hex_left = "hex", 4
                return True
            self.mode = "string"
            return ch in _ESCAPES
        if mode == "hex":
            if ch not in _HEX:
                return False
            self.hex_left -= 1
            if self.hex_left == 0:
                self.mode = "string"
            return True
        if mode == "number":
            return self._number(ch)
        if mode == "literal":
            if not self.literal.startswith(ch):
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self._value_done()
            return True
        if ch in WHITESPACE:
            return mode != "done"
        if mode == "value":
            return self._value_start(ch)
        if mode == "key":
            if ch == '"':
                self.mode, self.in_key = "string", True
                return True
            if ch == "}" and self.first:
                return self._close("{")
            return False
        if mode == "colon":
            if ch == ":":
                self.mode = "value"
                self.first = False
                return True
            return False
        if mode == "after":
            if ch == ",":
                self.mode = "key" if self.stack[-1] == "{" else "value"
                self.first = False
                return True
            return self._close(self.stack[-1]) if ch in "}]" else False
        return False

    def _value_start(self, ch: str) -> bool:
        if ch in "{[":
            self.stack.append(ch)
            self.mode = "key" if ch == "{" else "value"
            self.first = True
            return True
        if ch == "]" and self.first and self.stack and self.stack[-1] == "[":
            return self._close("[")
        self.first = False
        if ch == '"':
            self.mode, self.in_key = "string", False
            return True
        if ch == "-" or ch.isdigit():
            self.mode = "number"
            self.number = "sign" if ch == "-" else ("zero" if ch == "0" else "int")
            return ch in "-0123456789"
        if ch in _LITERALS:
            self.mode, self.literal = "literal", _LITERALS[ch][1:]
            return True
        return False

    def _close(self, opener: str) -> bool:
        if not self.stack or self.stack[-1] != opener:
            return False
        self.stack.pop()
        self._value_done()
        return True

    def _number(self, ch: str) -> bool:
        state = self.number
        digit = ch in "0123456789"
        nxt: str | None = None
        if state == "sign" and digit:
            nxt = "zero" if ch == "0" else "int"
        elif state in ("zero", "int"):
            if digit and state == "int":
                nxt = "int"
            elif ch == ".":
                nxt = "dot"
            elif ch in "eE":
                nxt = "e"
        elif state in ("dot", "frac") and digit:
            nxt = "frac"
        elif state == "frac" and ch in "eE":
            nxt = "e"
        elif state == "e" and ch in "+-":
            nxt = "esign"
        elif state in ("e", "esign", "exp") and digit:
            nxt = "exp"
        if nxt is None:
            return False
        self.number = nxt
        return True
