"""Chroma and Chroma Radiance (``comfy.ldm.chroma.model.Chroma`` and its pixel-space subclass).

Chroma keeps Flux.1's blocks (``DoubleStreamBlock`` / ``SingleStreamBlock`` with ``modulation=False``)
and ``dit`` replace patches with the same arguments; the adaLN chunks come from the model-wide
distilled-guidance approximator, sliced per block and passed as ``vec``. The Flux.1 adapter's branch
split applies as is (``nodes/adapters/flux.py``): double blocks run as an image and a text engine block
with ``attn`` and a token-local ``mlp``; single blocks are one fused ``attn_mlp`` branch reused on
selective steps. Blocks Chroma skips (``skip_mmdit`` / ``skip_dit``) are never called, so they cost
nothing and cache nothing. Chroma Radiance's pixel-space head (NeRF decoder) runs every step.

Chroma Radiance works on the image itself (3 channels) in 16 x 16 pixel patches: the host pads the image to
the patch size, so the token grid is ``ceil(h / 16) x ceil(w / 16)`` (Flux's rounding formula gives one
row fewer for sizes 1 to 7 pixels past a multiple of 16; for Chroma's 2 x 2 patches both agree).
"""
from __future__ import annotations

from typing import Any

from .flux import FLUX_SELECTIVE, FluxAdapter, flux_blocks
from .registry import register


class ChromaAdapter(FluxAdapter):
    family = "chroma"
    selective_support = "partial (double-block MLPs recompute top-k tokens; single blocks reuse on selective steps)"

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 4:
            return None
        p = self.patch_size
        return (-(-int(x_shape[2]) // p), -(-int(x_shape[3]) // p))


def _is_chroma(dm: Any, model_config: Any) -> bool:
    from comfy.ldm.chroma.model import Chroma  # ChromaRadiance is a subclass

    return isinstance(dm, Chroma) and flux_blocks(dm)


# after flux / flux2 (the order they were always asked in); no preset of its own: Flux.1's rule preset
register("chroma", "Chroma / Chroma Radiance", _is_chroma, lambda dm, name: ChromaAdapter(dm),
         preset="flux-28-balanced", priority=11, selective=FLUX_SELECTIVE)
