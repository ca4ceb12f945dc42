"""Choosing a backend: least outstanding requests, `session_id` affinity, failing backends out.

Affinity uses rendezvous (highest-random-weight) hashing over the backends' URLs: every
front-end ranks the backends the same way for a session without sharing any state, so a
conversation keeps reaching the backend whose prefix cache holds it even when a load balancer
sends its turns to different front-ends. The first backend in that ranking is taken unless it
carries more than its share of the load (consistent hashing with bounded loads, c = 1.25):
then the next one in the ranking. Requests without a session go to the backend with the fewest
outstanding requests.

A backend that fails (refused connection, reset, timeout, 502/503/504) is taken out for a
backoff that doubles from 1 s to 30 s while it keeps failing; a prober tries it again when the
backoff ends and puts it back as soon as it answers.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

from runtime.engine.upstream.profiles import PROFILES, Profile

LOAD_BOUND = 1.25  # a backend takes at most this times its fair share of a session's load
BACKOFF_START = 1.0  # seconds out after the first failure
BACKOFF_MAX = 30.0


@dataclass(eq=False, slots=True)
class Backend:
    url: str  # the base URL, without /v1
    profile: Profile = field(default_factory=lambda: PROFILES["generic"])
    probed: bool = False  # the kind is known (a probe answered)
    outstanding: int = 0  # requests streaming from it now
    failures: int = 0  # consecutive failures
    down_until: float = 0.0  # monotonic time it may be tried again; 0: up
    served: int = 0  # requests it has taken, for logs and tests
    model: str | None = None  # the first model it lists
    context_length: int | None = None  # tokens per request, when it says
    vision: bool = False  # it says its model takes images
    tools: bool | None = None  # its chat template can offer tools (None: it does not say)

    @property
    def up(self) -> bool:
        return self.down_until == 0.0

    def mark_down(self, now: float) -> float:
        """Take the backend out; the seconds until it is tried again."""
        self.failures += 1
        backoff = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self.failures - 1))
        self.down_until = now + backoff
        return backoff

    def mark_up(self) -> None:
        self.failures = 0
        self.down_until = 0.0


def _weight(url: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{url}\x00{key}".encode(), digest_size=8).digest(), "big")


class Balancer:
    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("at least one upstream URL is needed")
        self.backends = [Backend(url) for url in urls]

    def available(self, exclude: set[int] | frozenset[int] = frozenset()) -> list[Backend]:
        return [b for i, b in enumerate(self.backends) if b.up and i not in exclude]

    def pick(self, affinity: str | None, exclude: set[int] | frozenset[int] = frozenset()) -> Backend | None:
        """The backend for the next request (None when every one is down or excluded).

        `affinity`: a stable key for the conversation (API key scope + session id), or None.
        `exclude`: indexes already tried for this request."""
        candidates = self.available(exclude)
        if not candidates:
            return None
        if affinity is None:
            # Fewest outstanding; among equals the one that has served least (round robin).
            return min(candidates, key=lambda b: (b.outstanding, b.served))
        ranked = sorted(candidates, key=lambda b: _weight(b.url, affinity), reverse=True)
        total = sum(b.outstanding for b in candidates) + 1
        bound = math.ceil(LOAD_BOUND * total / len(candidates))
        for backend in ranked:
            if backend.outstanding + 1 <= bound:
                return backend
        return ranked[0]

    def index(self, backend: Backend) -> int:
        return self.backends.index(backend)

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until the first down backend is tried again (at least 1)."""
        now = time.monotonic() if now is None else now
        waits = [b.down_until - now for b in self.backends if not b.up]
        return max(1, math.ceil(min(waits))) if waits else 1
