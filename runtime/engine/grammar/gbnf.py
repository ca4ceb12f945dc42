"""GBNF spelling shared by the rule generators and the tool-call envelopes."""

from __future__ import annotations

import json


def literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)
