"""GBNF spelling shared by the rule generators and the tool-call envelopes."""

from __future__ import annotations

import json
import re


def literal(text: str) -> str:
    """A GBNF string literal matching exactly `text` (JSON string escapes are GBNF's too;
    a lone surrogate, which UTF-8 cannot carry, is written as its escape)."""
    quoted = json.dumps(text, ensure_ascii=False)
    try:
        quoted.encode("utf-8")
    except UnicodeEncodeError:
        quoted = json.dumps(text)
    return quoted


def char_class(chars: str, *, negated: bool = False) -> str:
    """A GBNF character class of exactly `chars` (or, `negated`, of every other character)."""
    escaped = "".join(_CLASS_ESCAPES.get(c, c) for c in sorted(set(chars)))
    return f"[{'^' if negated else ''}{escaped}]"


_CLASS_ESCAPES = {"\\": "\\\\", "]": "\\]", "[": "\\[", "^": "\\^", "-": "\\-", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def excluding(stop: str, name: str) -> tuple[str, dict[str, str]]:
    """Rules for any text (the empty text included) that does not contain `stop`.

    Returns `(top rule name, {rule name: body})`. The rules are the states of the KMP
    automaton that looks for `stop`: state k means "the text so far ends with the first k
    characters of `stop`", and no transition reaches `len(stop)`. Right recursion only, so
    llama.cpp's grammar stacks stay flat however long the text.
    """
    if not stop:
        raise ValueError("excluding() needs a non-empty stop text")
    n = len(stop)
    fail = [0] * n  # KMP failure function
    k = 0
    for i in range(1, n):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k

    def step(state: int, ch: str) -> int:
        while state and stop[state] != ch:
            state = fail[state - 1]
        return state + 1 if stop[state] == ch else 0

    rules: dict[str, str] = {}
    for state in range(n):
        targets = {ch: step(state, ch) for ch in sorted(set(stop))}
        special = "".join(ch for ch, target in targets.items() if target)  # not back to state 0
        alternatives = [f"{char_class(special, negated=True)} {name}-0"]
        alternatives += [f"{literal(ch)} {name}-{t}" for ch, t in targets.items() if 0 < t < n]
        rules[f"{name}-{state}"] = f"( {' | '.join(alternatives)} )?"
    return f"{name}-0", rules


def after_thinking(gbnf: str, open_tag: str, close_tag: str, *, opened: bool) -> str:
    """`gbnf` preceded by a thinking block: the model may think first (it must finish the
    block if the prompt already `opened` it), then writes what `gbnf` describes.

    Without this a forced grammar would start at the first token, so a thinking model
    would have to write its answer (or call) inside the thinking block.
    """
    top, rules = excluding(close_tag, "thinking-text")
    block = f"{top} {literal(close_tag)} [ \\t\\n]*"
    if not opened:
        block = f"({literal(open_tag)} {block})?"
    renamed, count = re.subn(r"^root ::= ", "answer-root ::= ", gbnf, count=1, flags=re.MULTILINE)
    if count != 1:
        raise ValueError("the grammar has no root rule")
    extra = "\n".join(f"{name} ::= {body}" for name, body in rules.items())
    return f"root ::= {block} answer-root\n{renamed}\n{extra}\n"
