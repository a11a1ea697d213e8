"""Timing detail of the /procache/ routes for ``benchmarks/load.py``, loaded only when it asks for it
(``PROCACHE_ROUTE_TIMING=1`` in the server's environment; see ``nodes/routes.py``).

With it, a slow answer's ``Server-Timing`` splits into work, waiting for a CPU (the event-loop thread's
run-queue wait) and the rest (the interpreter lock, I/O), and the server's cyclic-GC pauses are recorded
and served at ``GET /procache/timing/gc``, so a client on the same machine can tell which of its
requests a pause overlapped.
"""
from __future__ import annotations

import collections
import gc
import time
from typing import Any

ENV = "PROCACHE_ROUTE_TIMING"


class GcPauses:
    """Cyclic-GC pauses of the server process (any thread; every thread stops for them). Keeps running
    totals and the last pauses themselves (start on the system-wide monotonic clock that
    ``time.perf_counter`` reads on Linux, duration, generation)."""

    def __init__(self, keep: int = 20000) -> None:
        self.t0 = 0.0
        self.total_ms = 0.0
        self.max_ms = 0.0
        self.count = 0
        self.pauses: collections.deque = collections.deque(maxlen=keep)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
        elif self.t0:
            ms = (time.perf_counter() - self.t0) * 1e3
            self.total_ms += ms
            self.max_ms = max(self.max_ms, ms)
            self.count += 1
            self.pauses.append((round(self.t0, 6), round(ms, 3), int(info.get("generation", -1))))

    def payload(self) -> dict[str, Any]:
        """The answer of ``GET /procache/timing/gc``."""
        return {"clock": "perf_counter", "pauses": list(self.pauses), "count": self.count,
                "total_ms": round(self.total_ms, 3), "max_ms": round(self.max_ms, 3)}


GC = GcPauses()


def install() -> GcPauses:
    """Starts recording GC pauses (once)."""
    if GC not in gc.callbacks:
        gc.callbacks.append(GC)
    return GC


def runqueue_wait_ms() -> float | None:
    """Time this thread has spent runnable but not running (Linux schedstat), or None."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def runqueue_parts(rq0: float | None) -> list[str]:
    """The ``runqueue`` entry: this thread's run-queue wait since ``rq0`` (from :func:`runqueue_wait_ms`)."""
    if rq0 is None:
        return []
    rq1 = runqueue_wait_ms()
    return [] if rq1 is None else [f"runqueue;dur={rq1 - rq0:.2f}"]


def gc_parts() -> list[str]:
    """GC totals since the server started (the benchmark takes differences)."""
    return [f"gc_total;dur={GC.total_ms:.2f}", f"gc_max;dur={GC.max_ms:.2f}", f"gc_count;dur={GC.count}"]
