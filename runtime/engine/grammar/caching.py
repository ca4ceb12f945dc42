"""Built grammars, cached by the canonical JSON of what produced them."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class GrammarCache:
    """A small thread-safe LRU of built grammars, keyed by canonical JSON."""

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any, build: Callable[[], str]) -> str:
        k = canonical(key)
        with self._lock:
            if k in self._items:
                self._items.move_to_end(k)
                self.hits += 1
                return self._items[k]
        grammar = build()  # errors propagate and are not cached
        with self._lock:
            self.misses += 1
            self._items[k] = grammar
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return grammar

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


cache = GrammarCache()
