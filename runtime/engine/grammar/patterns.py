"""Regex `pattern` -> GBNF for the JSON-encoded strings the pattern matches.

Patterns are parsed with Python's own regex parser; constructs a grammar cannot express
exactly (lookarounds, backreferences, flags, ...) raise `ValueError`.
"""

from __future__ import annotations

import json
import re
import re._constants as _c
import re._parser as _sre_parser
from typing import Any

from runtime.engine.grammar.gbnf import literal

_ANY_JSON_CHAR = "__anychar__"


def pattern_to_gbnf(pattern: str, *, char_rule: str) -> str:
    """GBNF for the JSON-encoded strings a regex `pattern` matches (JSON Schema: a search)."""
    try:
        parsed = _sre_parser.parse(pattern)
    except re.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from exc
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE | re.DOTALL):
        raise ValueError("pattern flags are not supported")
    items = list(parsed)
    anchored_start = bool(items) and items[0] == (_c.AT, _c.AT_BEGINNING)
    anchored_end = bool(items) and items[-1] == (_c.AT, _c.AT_END)
    items = items[1 if anchored_start else 0 : len(items) - (1 if anchored_end else 0)]
    body = _regex_seq(items).replace(_ANY_JSON_CHAR, char_rule)
    head = "" if anchored_start else f"{char_rule}* "
    tail = "" if anchored_end else f" {char_rule}*"
    return f"{head}({body}){tail}"


def _regex_seq(items: Any) -> str:
    parts = [_regex_item(op, arg) for op, arg in items]
    return " ".join(p for p in parts if p) or '""'


def _regex_item(op: Any, arg: Any) -> str:
    if op is _c.LITERAL:
        return _json_chars([(arg, arg)])
    if op is _c.NOT_LITERAL:
        return _json_chars(_complement([(arg, arg)]))
    if op is _c.ANY:
        return _json_chars(_complement([(10, 10)]))  # "." excludes only the newline
    if op is _c.IN:
        return _json_chars(_class_ranges(arg))
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
        lo, hi, sub = arg
        inner = f"({_regex_seq(sub)})"
        if hi == _c.MAXREPEAT:
            return {0: f"{inner}*", 1: f"{inner}+"}.get(lo, f"{inner}{{{lo},}}")
        return f"{inner}?" if (lo, hi) == (0, 1) else f"{inner}{{{lo},{hi}}}"
    if op is _c.SUBPATTERN:
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise ValueError("inline pattern flags are not supported")
        return f"({_regex_seq(sub)})"
    if op is _c.BRANCH:
        return "(" + " | ".join(_regex_seq(alt) for alt in arg[1]) + ")"
    raise ValueError(f"the pattern construct {str(op).lower()} is not supported")


_CATEGORIES = {
    "CATEGORY_DIGIT": [(48, 57)],
    "CATEGORY_SPACE": [(9, 13), (32, 32)],
    "CATEGORY_WORD": [(48, 57), (65, 90), (95, 95), (97, 122)],
}


def _category(cat: Any) -> list[tuple[int, int]]:
    name = str(cat)
    for base, ranges in _CATEGORIES.items():
        if name == base:
            return ranges
        if name == base.replace("CATEGORY_", "CATEGORY_NOT_"):
            return _complement(ranges)
    raise ValueError(f"the pattern class {name.lower()} is not supported")


def _class_ranges(items: Any) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    negate = False
    for op, arg in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            ranges.append((arg, arg))
        elif op is _c.RANGE:
            ranges.append(arg)
        elif op is _c.CATEGORY:
            ranges += _category(arg)
        else:
            raise ValueError(f"the pattern construct {str(op).lower()} is not supported")
    return _complement(ranges) if negate else ranges


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, at = [], 0
    for lo, hi in sorted(ranges):
        if lo > at:
            out.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= 0x10FFFF:
        out.append((at, 0x10FFFF))
    return out


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _json_chars(ranges: list[tuple[int, int]]) -> str:
    """One decoded character from `ranges`, as JSON text writes it: raw where JSON allows,
    escaped for quotes, backslashes and control characters."""
    ranges = _merge_ranges(ranges)
    if ranges == [(0, 0x10FFFF)]:
        return _ANY_JSON_CHAR
    raw: list[tuple[int, int]] = []
    escaped: list[int] = []
    for lo, hi in ranges:
        c = lo
        while c <= min(hi, 0x5C):  # every character JSON must escape is below 0x5D
            if c < 0x20 or c in (0x22, 0x5C):
                escaped.append(c)
            else:
                start = c
                while c + 1 <= min(hi, 0x5B) and c + 1 != 0x22:
                    c += 1
                raw.append((start, c))
            c += 1
        if hi > 0x5C:
            raw.append((max(lo, 0x5D), hi))
    alts = [literal(json.dumps(chr(c))[1:-1]) for c in escaped]
    if raw:
        alts.insert(
            0, "[" + "".join(_cls_char(a) if a == b else f"{_cls_char(a)}-{_cls_char(b)}" for a, b in raw) + "]"
        )
    if not alts:
        raise ValueError("the pattern matches no character")
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _cls_char(code: int) -> str:
    ch = chr(code)
    if ch in "]-^\\" or code > 0x7E:
        return f"\\x{code:02X}" if code <= 0xFF else (f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}")
    return ch
