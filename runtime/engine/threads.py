"""Decode threads that give way when other processes need the CPU.

llama.cpp's worker threads meet at a barrier after every operation, so when one of them is
preempted (a sandboxed tool computing, another service) the others wait for it, and decode
speed collapses: on a 2-core machine one busy process took single-stream decoding from 193
to 48 tokens/s with 2 threads, while 1 thread kept 165. With `--threads` left at its default
the scheduler therefore watches how much CPU *other* processes use and decodes on the cores
they leave free (`llama_set_n_threads` between steps), going back up when they are done.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

_PROC_STAT = Path("/proc/stat")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (None off Linux)."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    values = [int(v) for v in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class ThreadGovernor:
    """Suggests how many decode threads to use, from the CPU other processes took lately."""

    def __init__(self, max_threads: int, *, cores: int | None = None, interval: float = 0.5) -> None:
        self.max_threads = max_threads
        self.cores = cores or len(os.sched_getaffinity(0))
        self.interval = interval
        self.current = max_threads
        self._last = (time.monotonic(), _busy_cpu_seconds(), _own_cpu_seconds())

    @property
    def available(self) -> bool:
        return self._last[1] is not None

    def poll(self) -> int | None:
        """A new thread count when it should change, else None. Cheap; call every step."""
        now = time.monotonic()
        then, busy_then, own_then = self._last
        if busy_then is None or now - then < self.interval:
            return None
        busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
        self._last = (now, busy, own)
        if busy is None:
            return None
        others = max(0.0, (busy - busy_then) - (own - own_then)) / (now - then)  # in cores
        wanted = self.decide(others)
        if wanted == self.current:
            return None
        log.info("other processes use %.1f of %d cores: decoding on %d threads", others, self.cores, wanted)
        self.current = wanted
        return wanted

    def decide(self, others: float) -> int:
        """Threads for the cores that `others` (busy cores used by other processes) leave free.
        A quarter core of background noise does not cost a thread."""
        free = self.cores - others
        return max(1, min(self.max_threads, math.floor(free + 0.25)))
