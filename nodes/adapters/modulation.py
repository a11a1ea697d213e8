"""Lazy adaLN for host blocks: reused steps read only the gate rows of a plain host Linear.

``procache_core.modulation.LazyModulation`` does the bookkeeping; this module decides when slicing
a host layer's weight is safe. ComfyUI's Linear can cast weights per call, apply LoRA functions on
the fly (low-VRAM mode), or hold quantized / GGUF tensor subclasses; slicing any of those would skip
that logic, so such layers keep evaluating the full linear (correct, just not faster).

Dynamic VRAM (ComfyUI 0.16+ with comfy-aimdo, default on CUDA): the loader marks every weight layer
``comfy_cast_weights`` and gives it an aimdo allocation (``_v``), LoRA patches as
``weight_lowvram_function`` and prefetched copies as ``_prefetch``; the weight tensor itself may sit in
CPU memory (or on the meta device) while the forward casts it to the input's device. All of these are
told from the layer at each call (the loader sets them when it loads the model, after ProCache Apply),
and the same test decides the Apply-time report (:func:`why_unsliced`) and the per-call evaluator.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ...procache_core.modulation import LazyModulation, linear_rows


def _plain_forward(layer: torch.nn.Module) -> bool:
    import comfy.ops

    return type(layer).forward in (torch.nn.Linear.forward, comfy.ops.disable_weight_init.Linear.forward)


def _cast_on_the_fly(layer: torch.nn.Module) -> str | None:
    """Why the host's forward builds this layer's weights per call (None when it uses them as stored)."""
    if getattr(layer, "comfy_cast_weights", False):
        if hasattr(layer, "_v"):
            return "weights cast on the fly (dynamic VRAM)"
        return "weights cast on the fly (manual cast / low-VRAM)"
    if getattr(layer, "weight_function", None) or getattr(layer, "bias_function", None):
        return "weights patched on the fly (LoRA / low-VRAM)"
    for key in ("weight_lowvram_function", "bias_lowvram_function", "_prefetch", "_v"):
        if getattr(layer, key, None) is not None:
            return "weights patched on the fly (LoRA / low-VRAM)" if "lowvram" in key else \
                "weights cast on the fly (dynamic VRAM)"
    return None


def why_unsliced(layer: torch.nn.Module) -> str | None:
    """Why reused steps must evaluate ``layer`` whole (None when its weight rows can be sliced)."""
    if not isinstance(layer, torch.nn.Linear):
        return f"{type(layer).__name__} is not a torch Linear"
    if not _plain_forward(layer):
        return f"{type(layer).__name__} has its own forward"
    why = _cast_on_the_fly(layer)
    if why is not None:
        return why
    for t in (layer.weight, layer.bias):
        if t is not None and type(t.data) is not torch.Tensor:
            return f"weight is a {type(t.data).__name__}"
    return None


def row_evaluator(layer: torch.nn.Module, act: Callable[[], Tensor], like: Tensor
                  ) -> Callable[[int, int], Tensor] | None:
    """``(start, stop) -> layer(act())[..., start:stop]`` from those weight rows alone, or None when unsafe.

    ``act`` gives the layer's input (evaluated on first use); ``like`` is a tensor with the dtype and
    device that input will have. None (the caller evaluates the layer whole, through the host's
    forward) whenever :func:`why_unsliced` names a reason, or the stored weights are not already in the
    input's dtype and on its device (the host would cast them).
    """
    if why_unsliced(layer) is not None:
        return None
    w, b = layer.weight, layer.bias
    for t in (w, b):
        if t is not None and (t.dtype != like.dtype or t.device != like.device):
            return None
    memo: list[Tensor] = []

    def rows(start: int, stop: int) -> Tensor:
        if not memo:
            memo.append(act())
        return linear_rows(memo[0], w, b, start, stop)

    return rows


def lazy_chunks(full: Callable[[], Sequence[Tensor]], layer: torch.nn.Module, act: Callable[[], Tensor],
                like: Tensor, n_chunks: int) -> LazyModulation:
    """LazyModulation over ``n_chunks`` equal chunks of ``layer``'s output along its last dimension."""
    rows = row_evaluator(layer, act, like)
    if rows is None or n_chunks <= 0 or layer.out_features % n_chunks:
        return LazyModulation(full)
    width = layer.out_features // n_chunks
    return LazyModulation(full, lambda i: rows(i * width, (i + 1) * width))


def _sliceable(layer: torch.nn.Module, like: Tensor, n_chunks: int) -> bool:
    """What :func:`lazy_chunks` requires to evaluate chunks from their weight rows."""
    return row_evaluator(layer, lambda: like, like) is not None and n_chunks > 0 and layer.out_features % n_chunks == 0


def reused_gates(run, layer: torch.nn.Module, vec: Tensor, act: Callable[[], Tensor], like: Tensor,
                 n_chunks: int, chunks: Sequence[int]) -> list[Tensor] | None:
    """Chunks ``chunks`` of ``layer(act())`` for a reused block, from their weight rows alone: the same
    arithmetic as :func:`lazy_chunks`' gates (``linear_rows`` of the activation) with the activation of
    ``vec`` and the layer check done once per model evaluation (``run.memo``). None when the layer is not
    sliced (the caller evaluates it whole, as :func:`lazy_chunks` does)."""
    if not run.memo(("sliceable", id(layer), like.dtype, like.device, n_chunks),
                    lambda: _sliceable(layer, like, n_chunks), keep=layer):
        return None
    a = run.memo(("adaln act", id(vec)), act, keep=vec)
    width = layer.out_features // n_chunks
    w, b = layer.weight, layer.bias
    return [linear_rows(a, w, b, i * width, (i + 1) * width) for i in chunks]
