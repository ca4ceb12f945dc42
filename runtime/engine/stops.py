"""Stop strings over a text stream, holding back text that may be the start of one."""

from __future__ import annotations


def held_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some marker."""
    hold = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), hold, -1):
            if text.endswith(marker[:k]):
                hold = k
                break
    return hold


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string hit or None). After a hit, stop feeding."""
        if not self.stops:
            return text, None
        self._buffer += text
        hit: tuple[int, str] | None = None
        for stop in self.stops:
            at = self._buffer.find(stop)
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, stop)
        if hit is not None:
            out, self._buffer = self._buffer[: hit[0]], ""
            return out, hit[1]
        keep = held_suffix(self._buffer, self.stops)
        cut = len(self._buffer) - keep
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out, None

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out
