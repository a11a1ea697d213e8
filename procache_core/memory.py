"""How much memory the cache needs, and where it should live (host independent).

* :class:`CacheMemory` is the resolved choice a :class:`~procache_core.engine.CacheRun` uses:
  placement (``"device"`` or ``"cpu"``), storage dtype (``None`` = activation dtype) and the
  memory-light mode.
* :class:`BlockShape` describes one engine block from shapes alone (tokens, width, branches, lane), so
  the cache size can be worked out before the first step, or for a model that is not loaded at all
  (``benchmarks/memory.py`` uses the published layouts of Flux.1 and Wan 2.1).
* :func:`choose` turns the user's request (``auto`` included) plus free memory into a CacheMemory and
  a sentence saying why; :func:`room_beside_weights` is the device memory a cache can claim beside the
  model's weights, for the hint the host's loader gets.

Light mode keeps per-block caches only for the deep blocks that selective steps use
(``block >= first_selective_block``) and, for the shallower blocks, one residual per *lane* (a
residual stream of constant shape: one for single-stream models, image / text / joint for Flux-like
double+single layouts): ``R = x_out(last shallow block of the lane) - x_in(first one)`` from the last
computed step. A reused step adds ``R`` to the lane's input and skips its shallow blocks.
Difference from the full cache: per-block reuse applies the *current* step's gates to the cached
branch outputs (``x + sum_i gate_i(t) * out_i``); the residual carries the gates of the step that
computed it (``x + sum_i gate_i(t_full) * out_i``). With gates that do not change between the steps
(or no gates) both agree up to float rounding; deep blocks behave identically in both modes.

Stack reuse (``CacheMemory.stack``, either mode) is the same residual idea over a lane's whole stretch,
deep blocks included, as First Block Cache reuses its stack: every computed evaluation also stores
``x_out(last block of the lane) - x_in(first block)``, and a CACHED evaluation adds it at the lane's first
block and passes every other block through (no adaLN, no per-block work); with forecasting the residual
is extrapolated like a branch output. Selective and computed steps are unchanged, so the per-block
cache stays as the mode keeps it; the residuals add one lane-sized tensor each (:func:`estimate_bytes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

MODES = ("full", "light")


@dataclass(frozen=True)
class CacheMemory:
    """Where and how the cache is kept (a resolved choice, no ``auto``)."""

    placement: str = "device"            # "device" (the activations' device) or "cpu"
    dtype: torch.dtype | None = None     # storage dtype; None = the activation dtype
    light: bool = False                  # memory-light mode (see module docstring)
    stack: bool = False                  # stack reuse: CACHED steps add one residual per lane (module docstring)
    step: bool = False                   # step reuse: CACHED steps skip the model call (procache_core.step_reuse)

    def describe(self) -> str:
        where = "CPU memory" if self.placement == "cpu" else "model device"
        dt = str(self.dtype).replace("torch.", "") if self.dtype is not None else "activation dtype"
        reuse = ", stack reuse" if self.stack else ", step reuse" if self.step else ""
        return f"{'light' if self.light else 'full'} cache in {where} ({dt}{reuse})"


@dataclass(frozen=True)
class BlockShape:
    """One engine block: ``tokens`` x ``width`` residual stream, ``branches`` cached outputs of that size."""

    tokens: int
    width: int
    branches: int
    lane: Hashable = 0
    aux_width: int = 0   # width of a kept token-mixing half (``Branch.aux``) deep blocks also cache


def single_stream_layout(n_blocks: int, tokens: int, width: int, branches: int) -> list[BlockShape]:
    """DiT, PixArt, Wan, ...: every block on one stream of the same shape."""
    return [BlockShape(tokens, width, branches, 0) for _ in range(n_blocks)]


def double_single_layout(n_double: int, n_single: int, img_tokens: int, txt_tokens: int, width: int,
                         double_branches: int = 2, single_branches: int = 1,
                         single_aux: bool = True) -> list[BlockShape]:
    """Flux-like: each double block is an image and a text engine block, then single blocks on both.

    ``single_aux``: deep single blocks keep their attention output (``width`` wide) beside the fused
    output, for selective steps (Flux.1/Flux.2/Chroma); False where single blocks are reused whole
    (HunyuanVideo)."""
    out: list[BlockShape] = []
    for _ in range(n_double):
        out.append(BlockShape(img_tokens, width, double_branches, "img"))
        out.append(BlockShape(txt_tokens, width, double_branches, "txt"))
    out += [BlockShape(img_tokens + txt_tokens, width, single_branches, "joint", aux_width=width if single_aux else 0)
            for _ in range(n_single)]
    return out


def estimate_bytes(layout: Sequence[BlockShape], rows: int, elem_bytes: int, first_selective_block: int,
                   light: bool = False, track_tokens: bool = True, keep_input: bool = True,
                   history: int = 0, stack: bool = False) -> int:
    """Bytes the cache holds for ``rows`` batch rows summed over every stream (e.g. 2 with CFG).

    Per-block entries: ``branches`` outputs, times ``1 + history`` with forecasting (``history``: the
    forecast order, one stored difference per order and branch; light-mode lanes are not forecast); deep
    blocks (``>= first_selective_block``) add the input reference (``keep_input``) and the int32 refresh
    steps (``track_tokens``). Light mode replaces the shallow entries with one residual per lane (the shape
    of the lane's last shallow block). ``stack`` adds one residual per lane over all its blocks (the
    shape of the lane's last block), with its forecast history.
    """
    total = 0
    lanes: dict[Hashable, BlockShape] = {}
    for i, b in enumerate(layout):
        deep = i >= first_selective_block
        if light and not deep:
            if b.branches:  # a block that caches nothing (never runs) ends no lane
                lanes[b.lane] = b
            continue
        total += rows * b.tokens * b.width * elem_bytes * b.branches * (1 + history)
        if deep and track_tokens:
            total += rows * b.tokens * 4 + rows * b.tokens * b.aux_width * elem_bytes
            if keep_input:
                total += rows * b.tokens * b.width * elem_bytes
    total += sum(rows * b.tokens * b.width * elem_bytes for b in lanes.values())
    if stack:
        ends = {b.lane: b for b in layout}
        total += sum(rows * b.tokens * b.width * elem_bytes * (1 + history) for b in ends.values())
    return total


@dataclass(frozen=True)
class Plan:
    memory: CacheMemory
    reason: str
    full_bytes: int
    light_bytes: int


def choose(placement: str, light: str, dtype: torch.dtype | None, full_bytes: int, light_bytes: int,
           device_free: int | None, host_free: int | None, margin: float = 0.9) -> Plan:
    """Resolve the user's request.

    ``placement``: ``"auto"``, ``"device"`` or ``"cpu"``; ``light``: ``"auto"``, ``"full"`` or
    ``"light"``. Sizes are for the storage dtype. ``auto`` placement keeps the cache on the device
    when it fits in ``margin`` of the free device memory, else in CPU memory (same output, slower):
    output-changing light mode is chosen by ``auto`` only when the full cache fits nowhere.
    ``None`` free memory means unknown (assumed to fit).
    """
    def fits(n: int, free: int | None) -> bool:
        return free is None or n <= margin * free

    mib = lambda n: f"{n / 2**20:.0f} MiB"  # noqa: E731
    want_light = light == "light"
    need = light_bytes if want_light else full_bytes
    if placement == "cpu":
        where, why = "cpu", "CPU memory requested"
    elif placement == "device":
        where, why = "device", "device requested"
        if not fits(need, device_free):
            why += f" although {mib(need)} exceeds free device memory ({mib(device_free or 0)})"
    elif fits(need, device_free):
        where, why = "device", f"fits in free device memory ({mib(device_free) if device_free is not None else 'unknown'})"
    else:
        where, why = "cpu", f"does not fit in free device memory ({mib(device_free or 0)}): moved to CPU memory"
    if light == "auto" and not want_light and where == "cpu" and not fits(full_bytes, host_free):
        want_light = True
        why += f"; the full cache does not fit in free CPU memory ({mib(host_free or 0)}) either: light mode"
    return Plan(CacheMemory(where, dtype, want_light), why, full_bytes, light_bytes)


def room_beside_weights(total_bytes: int, model_bytes: int, dynamic: bool) -> int:
    """Device memory a cache can take beside the model's weights.

    A loader that keeps the weights resident leaves ``total - model``. A dynamic-VRAM loader (ComfyUI's
    comfy-aimdo ``ModelPatcherDynamic``) keeps no fixed share for them: it faults weights in on demand
    and evicts them when other allocations need the memory, so the whole device is room (how much is
    free when the cache is placed is checked then, evictable memory included)."""
    return int(total_bytes) if dynamic else int(total_bytes) - int(model_bytes)
