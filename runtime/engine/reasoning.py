"""Splitting thinking text (`<think>…</think>` and family equivalents) out of the answer,
also when the stream cuts a tag in two."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.engine.stops import held_suffix


@dataclass(frozen=True, slots=True)
class ThinkingTags:
    open: str
    close: str


THINK = ThinkingTags("<think>", "</think>")  # Qwen3, DeepSeek-R1, SmolLM3, ...
FAMILIES = (
    THINK,
    ThinkingTags("[THINK]", "[/THINK]"),  # Mistral Magistral
    ThinkingTags("<|START_THINKING|>", "<|END_THINKING|>"),  # Cohere Command
)


def tags_for_template(template_source: str) -> ThinkingTags | None:
    """The thinking tags a chat template knows about, if any."""
    for tags in FAMILIES:
        if tags.open in template_source or tags.close in template_source:
            return tags
    return None


def starts_thinking(prompt: str, tags: ThinkingTags) -> bool:
    """Templates that open the thinking block themselves (the generation prompt ends with
    `<think>`) leave the model inside it from its first token."""
    return prompt.rstrip().endswith(tags.open)


class ReasoningSplitter:
    """Feed text deltas; get back `(is_reasoning, text)` segments in order."""

    def __init__(self, tags: ThinkingTags, *, inside: bool = False) -> None:
        self.tags = tags
        self.inside = inside
        self._buffer = ""
        self._at_boundary = True  # newlines right after a tag are layout, not content

    def feed(self, text: str) -> list[tuple[bool, str]]:
        self._buffer += text
        out: list[tuple[bool, str]] = []
        while True:
            if self._at_boundary:
                self._buffer = self._buffer.lstrip("\n")
                if not self._buffer:
                    return out
                self._at_boundary = False
            marker = self.tags.close if self.inside else self.tags.open
            at = self._buffer.find(marker)
            if at < 0:
                break
            if at:
                out.append((self.inside, self._buffer[:at]))
            self._buffer = self._buffer[at + len(marker) :]
            self.inside = not self.inside
            self._at_boundary = True
        marker = self.tags.close if self.inside else self.tags.open
        keep = held_suffix(self._buffer, [marker])
        cut = len(self._buffer) - keep
        if cut:
            out.append((self.inside, self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
        return out

    def flush(self) -> list[tuple[bool, str]]:
        out = [(self.inside, self._buffer)] if self._buffer else []
        self._buffer = ""
        return out
