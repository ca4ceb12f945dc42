"""Request shapes several test modules share."""

from __future__ import annotations

from typing import Any

# The structured-output example of the seed documentation (`country_pick`).
COUNTRY_PICK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "country": {"type": "string", "enum": ["Japan", "Egypt", "Peru"]},
        "reason": {"type": "string"},
    },
    "required": ["country", "reason"],
    "additionalProperties": False,
}
