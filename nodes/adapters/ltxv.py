"""LTX-Video (``comfy.ldm.lightricks.model.LTXVModel``).

Patched with ``dit`` replace patches ``("double_block", i)`` (the host's name for its single-stream
blocks; every host hands the replace patch the block's whole call: mask, and on newer hosts
``self_attention_mask`` and ``prompt_timestep``). ``BasicTransformerBlock.forward`` becomes three
branches, PixArt-like:

* ``attn`` = ``attn1(modulate(rms_norm(x)), pe, mask=self_attention_mask)``, gated by ``gate_msa``; reused
  on selective steps;
* ``cross`` = ``attn2(x, context, mask)``, no gate, token-local; with the 9-row adaLN table
  (``cross_attention_adaln``, LTX-2) it is ``attn2(modulate(rms_norm(x)), modulate(context))`` gated by
  ``gate_mca``, token-local when the timestep is per sample;
* ``mlp`` = ``ff(rms_norm(x) * (1 + scale_mlp) + shift_mlp)``, gated by ``gate_mlp``; token-local when
  the timestep is per sample. With per-token timesteps (image / keyframe conditioning, where
  conditioned tokens carry their own noise level) its shift/scale differ per token, so it is reused on
  selective steps, like the attention.

Each host's own expressions are used: hosts whose block takes ``self_attention_mask`` modulate the
attention input as ``rms_norm(x) * (1 + scale) + shift`` and add its residual as ``x + out * gate``;
older hosts use ``addcmul`` for both. The adaLN rows come from the block's ``scale_shift_table`` plus the
model-wide timestep embedding, so there is no per-block linear to slice. Rounding: the MLP residual is
added in place with ``x.addcmul_(out, gate)`` (one fused multiply-add) on every host, on older hosts the
attention residual too; those branches are ``fused`` (the engine's ``torch.addcmul(x, gate, out)``, the
same bits), the others ``x + gate * out``, so an all-FULL schedule equals the unpatched model bit for bit.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from . import DitBlockReplace, FamilyAdapter, install_dit_replace
from .registry import register


def _new_style(block: Any) -> bool:
    """Whether the host's block is the newer one (``self_attention_mask`` argument; plain attention
    modulation and residual, optional cross-attention adaLN)."""
    import inspect

    return "self_attention_mask" in inspect.signature(type(block).forward).parameters


class LTXVBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.common_dit import rms_norm

        block = self.adapter.dm.transformer_blocks[self.index]
        x, context, mask, timestep, pe = args["img"], args["txt"], args.get("attention_mask"), args["vec"], args["pe"]
        to = args.get("transformer_options") or {}
        new = _new_style(block)
        # the host's in-place fused residuals (x.addcmul_): MLP on every host, attention on older ones
        fuses = "addcmul_" in type(block).forward.__code__.co_names
        rows = block.scale_shift_table.shape[0]
        table = block.scale_shift_table[None, None].to(device=x.device, dtype=x.dtype)
        ts = timestep.reshape(x.shape[0], timestep.shape[1], rows, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            (table[:, :, :6] + ts[:, :, :6, :]) if new else (table + ts)).unbind(dim=2)
        per_sample = timestep.shape[1] == 1
        sa_mask = args.get("self_attention_mask")

        if new:
            def attn1(h):
                return block.attn1(rms_norm(h) * (1 + scale_msa) + shift_msa, pe=pe, mask=sa_mask,
                                   transformer_options=to)
        else:
            def attn1(h):
                a = rms_norm(h)
                return block.attn1(torch.addcmul(a, a, scale_msa).add_(shift_msa), pe=pe, transformer_options=to)

        def mlp(h):
            y = rms_norm(h)
            return block.ff(torch.addcmul(y, y, scale_mlp).add_(shift_mlp))

        if new and getattr(block, "cross_attention_adaln", False):
            shift_q, scale_q, gate_mca = (table[:, :, 6:9] + ts[:, :, 6:9, :]).unbind(dim=2)
            prompt_ts = args.get("prompt_timestep")
            shift_kv, scale_kv = (block.prompt_scale_shift_table[None, None].to(device=x.device, dtype=x.dtype)
                                  + prompt_ts.reshape(x.shape[0], prompt_ts.shape[1], 2, -1)).unbind(dim=2)
            ctx = context * (1 + scale_kv) + shift_kv
            # the host multiplies attn2(...) * gate_mca; the engine's gate * out is the same product
            cross = Branch("cross", lambda h: block.attn2(rms_norm(h) * (1 + scale_q) + shift_q, context=ctx,
                                                          mask=mask, transformer_options=to), gate_mca, per_sample)
        else:
            cross = Branch("cross", lambda h: block.attn2(h, context=context, mask=mask, transformer_options=to),
                           None, True)
        x = run.run_block(self.index, x, (Branch("attn", attn1, gate_msa, False, fused=fuses and not new), cross,
                                            Branch("mlp", mlp, gate_mlp, per_sample, fused=fuses)))
        return {"img": x}


class LTXVAdapter(FamilyAdapter):
    family = "ltxv"
    selective_support = "full (cross-attention and, with per-sample timesteps, MLP recompute top-k tokens)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.num_blocks = len(diffusion_model.transformer_blocks)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.num_blocks):
            install_dit_replace(model_patcher, LTXVBlock(self, i, owner), "double_block", i)

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """One token per latent voxel (patch size 1), three branches per block, ``inner_dim`` wide."""
        from ...procache_core.memory import single_stream_layout

        hw = self.grid_hw(x_shape)
        return single_stream_layout(self.num_blocks, hw[0] * hw[1], int(self.dm.inner_dim), 3) if hw else None

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 5:  # patch size 1: one token per latent pixel
            return None
        return (x_shape[2] * x_shape[3], x_shape[4])


def _is_ltxv(dm: Any, model_config: Any) -> bool:
    """Exactly the host's LTXVModel (LTX-2's LTXAVModel is its own family, ltxav.py) with its own blocks."""
    from comfy.ldm.lightricks.model import BasicTransformerBlock, LTXVModel

    return type(dm) is LTXVModel and all(type(b) is BasicTransformerBlock for b in dm.transformer_blocks)


# asked after Qwen-Image (the order it always had); Wan's rule preset (video DiT)
register("ltxv", "LTX-Video", _is_ltxv, lambda dm, name: LTXVAdapter(dm), preset="wan-30-balanced", priority=30,
         selective="cross-attention, and the MLP when the timestep is per sample, all-FULL equal to float rounding")
