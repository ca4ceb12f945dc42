from __future__ import annotations

import pytest

from runtime.engine.reasoning import THINK, ReasoningSplitter, starts_thinking, tags_for_template


def split(pieces: list[str], *, inside: bool = False) -> tuple[str, str]:
    splitter = ReasoningSplitter(THINK, inside=inside)
    segments = [seg for piece in pieces for seg in splitter.feed(piece)] + splitter.flush()
    reasoning = "".join(t for r, t in segments if r)
    answer = "".join(t for r, t in segments if not r)
    return reasoning, answer


TEXT = "<think>\nLet me see.\n</think>\n\nThe answer is 4."


@pytest.mark.parametrize("cut", range(len(TEXT) + 1))
def test_tags_split_at_every_position(cut: int) -> None:
    assert split([TEXT[:cut], TEXT[cut:]]) == ("Let me see.\n", "The answer is 4.")


def test_one_character_at_a_time() -> None:
    assert split(list(TEXT)) == ("Let me see.\n", "The answer is 4.")


def test_template_opened_the_block() -> None:
    assert split(["Hmm, 2+2.", "</think>", "4"], inside=True) == ("Hmm, 2+2.", "4")


def test_no_tags_is_all_answer() -> None:
    assert split(["just ", "text <thin", "king aloud"]) == ("", "just text <thinking aloud")


def test_unclosed_thinking_stays_reasoning() -> None:
    assert split(["<think>still going"]) == ("still going", "")


def test_family_detection() -> None:
    assert tags_for_template("{% if enable_thinking %}<think>{% endif %}") == THINK
    assert tags_for_template("{{ messages }}") is None
    assert starts_thinking("<|im_start|>assistant\n<think>\n", THINK)
    assert not starts_thinking("<|im_start|>assistant\n", THINK)
