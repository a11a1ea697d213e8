"""PixArt-α / PixArt-Σ (``comfy.ldm.pixart.pixartms.PixArtMS``).

The host's PixArt forward passes no ``transformer_options`` to its blocks and has no ``dit`` replace
patches, so each block's ``forward`` is replaced with an object patch
(``diffusion_model.blocks.N.forward``). ``PixArtMSBlock.forward`` is split into three branches with
the host's exact arithmetic:

* ``attn``  = ``attn(t2i_modulate(norm1(x), shift_msa, scale_msa))``, gated by ``gate_msa``; reused on
  selective steps (self-attention mixes tokens);
* ``cross`` = ``cross_attn(x, y, mask)``, no gate; token-local (each query row attends to the prompt);
* ``mlp``   = ``mlp(t2i_modulate(norm2(x), shift_mlp, scale_mlp))``, gated by ``gate_mlp``; token-local.

The adaLN table (shift/scale/gate) is recomputed from the current timestep on every step.
"""
from __future__ import annotations

from typing import Any

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, outside_compile
from .registry import register


class PixArtBlockForward(ChainedForward):
    """Replacement of one block's ``forward`` (what was there before when no run of ours is active)."""

    @outside_compile
    def __call__(self, x, y, t, mask=None, HW=None, **kwargs):
        block = self.block
        run = active_run(self.owner)
        if run is None:
            return self.call_prev(x, y, t, mask, HW, **kwargs)
        if self.prev is not None:
            return self.prev_as_branch(run, x, lambda h: self.prev(h, y, t, mask, HW, **kwargs))
        from comfy.ldm.pixart.blocks import t2i_modulate

        B, N, C = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            block.scale_shift_table[None].to(dtype=x.dtype, device=x.device) + t.reshape(B, 6, -1)).chunk(6, dim=1)
        branches = (
            Branch("attn", lambda h: block.attn(t2i_modulate(block.norm1(h), shift_msa, scale_msa), HW=HW),
                   gate_msa, False),
            Branch("cross", lambda h: block.cross_attn(h, y, mask), None, True),
            Branch("mlp", lambda h: block.mlp(t2i_modulate(block.norm2(h), shift_mlp, scale_mlp)), gate_mlp, True),
        )
        return run.run_block(self.index, x, branches)


class PixArtAdapter(FamilyAdapter):
    family = "pixart"
    selective_support = "full (cross-attention and MLP recompute top-k tokens; self-attention reused)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.num_blocks = len(diffusion_model.blocks)
        self.patch_size = int(diffusion_model.patch_size)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i, block in enumerate(self.dm.blocks):
            install_forward_patch(model_patcher, f"diffusion_model.blocks.{i}.forward",
                                  lambda prev, b=block, i=i: PixArtBlockForward(b, i, owner, prev))

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        from ...procache_core.memory import single_stream_layout

        hw = self.grid_hw(x_shape)
        return single_stream_layout(self.num_blocks, hw[0] * hw[1], int(self.dm.hidden_size), 3) if hw else None

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 4:
            return None
        return (x_shape[2] // self.patch_size, x_shape[3] // self.patch_size)


def _is_pixart(dm: Any, model_config: Any) -> bool:
    from comfy.ldm.pixart.pixartms import PixArtMS

    return isinstance(dm, PixArtMS)


register("pixart", "PixArt-α / PixArt-Σ", _is_pixart, lambda dm, name: PixArtAdapter(dm),
         preset="pixart-alpha-20-balanced", selective="cross-attention, MLP")
