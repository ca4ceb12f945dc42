"""The decode-thread governor: fewer threads while other processes keep cores busy."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from runtime.engine.threads import ThreadGovernor


@pytest.mark.parametrize(
    ("others", "threads"),
    [(0.0, 4), (0.2, 4), (0.8, 3), (1.0, 3), (2.6, 1), (9.0, 1)],
)
def test_threads_follow_the_cores_others_leave_free(others: float, threads: int) -> None:
    assert ThreadGovernor(4, cores=4).decide(others) == threads


def test_never_more_than_asked_for() -> None:
    assert ThreadGovernor(2, cores=8).decide(0.0) == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a core to give away")
def test_a_busy_process_takes_a_thread_away() -> None:
    cores = len(os.sched_getaffinity(0))
    governor = ThreadGovernor(cores, interval=0.5)
    assert governor.available  # Linux: /proc/stat
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.7)
        suggested = governor.poll()
    finally:
        hog.kill()
        hog.wait()
    assert suggested is not None and suggested <= cores - 1
    assert governor.poll() is None  # not again before the next interval
