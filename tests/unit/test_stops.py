from __future__ import annotations

from runtime.engine.stops import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, str | None]:
    out = ""
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            return out, hit
    return out + matcher.flush(), None


def test_stop_split_across_pieces_is_never_leaked() -> None:
    matcher = StopMatcher(["</end>"])
    emitted = []
    for piece in ["Hello </", "en", "d> more"]:
        text, hit = matcher.feed(piece)
        emitted.append(text)
        if hit:
            break
    assert emitted == ["Hello ", "", ""]
    assert hit == "</end>"


def test_partial_match_that_fails_is_released() -> None:
    assert feed_all(StopMatcher(["STOP"]), ["a ST", "OP?", "x"]) == ("a ", "STOP")
    assert feed_all(StopMatcher(["STOP"]), ["a ST", "ART"]) == ("a START", None)


def test_earliest_stop_wins() -> None:
    assert feed_all(StopMatcher(["b", "a"]), ["xxab"]) == ("xx", "a")


def test_no_stops_passes_through() -> None:
    assert StopMatcher([]).feed("anything") == ("anything", None)
