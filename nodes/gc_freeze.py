"""Keeps the host's start-up heap out of Python's cyclic garbage collector, once, when the server starts.

Why: a full collection walks every object the process tracks, and a ComfyUI process tracks about a
million of them once torch, the host and its node packs are imported. Each full collection stops every
thread (it holds the interpreter lock) for hundreds of milliseconds on a CPU machine; during sampling
those pauses made the UI's slowest answers (benchmarks/results/load_cpu.md: 300-500 ms pauses of a
request whose handler took 1-2 ms). The objects alive when the server starts (modules, classes, functions,
node definitions, caches filled at import) live as long as the process, so walking them again on every full
collection finds nothing. ``gc.freeze()`` moves them, once, into the collector's permanent generation:
later collections skip them; what is created afterwards (models, conditioning, per-run state) is collected
exactly as before, and reference counting frees frozen objects that stop being used, as always. The
one thing given up: a reference cycle made only of start-up objects is never reclaimed (the start-up
heap is collected once just before freezing, so no start-up garbage is kept).

``PROCACHE_GC_FREEZE=0`` keeps the interpreter's default; the server log says which was done.
"""
from __future__ import annotations

import gc
import logging
import os
import time

log = logging.getLogger("procache")

ENV = "PROCACHE_GC_FREEZE"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def freeze_startup_heap() -> dict[str, float | int | bool]:
    """Collects once, then freezes what is left; a no-op (reported) when switched off."""
    if not enabled():
        log.info("ProCache: %s=0, the cyclic garbage collector keeps the interpreter's default", ENV)
        return {"frozen": False, "objects": 0, "collect_ms": 0.0}
    t0 = time.perf_counter()
    gc.collect()
    collect_ms = (time.perf_counter() - t0) * 1e3
    gc.freeze()
    count = gc.get_freeze_count()
    log.info("ProCache: %d start-up objects moved out of the cyclic garbage collector's walks "
             "(full collections no longer pause the server for them; %s=0 to keep the default)", count, ENV)
    return {"frozen": True, "objects": count, "collect_ms": collect_ms}


async def on_startup(app) -> None:  # aiohttp signal handler: runs once the host has loaded every node pack
    try:
        freeze_startup_heap()
    except Exception as exc:  # never stop the server from starting over a tuning step
        log.warning("ProCache: freezing the start-up heap failed (%r); the default collector is used", exc)
