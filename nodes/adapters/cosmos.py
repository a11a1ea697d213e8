"""Cosmos Predict2 (``comfy.ldm.cosmos.predict2.MiniTrainDIT``: text-to-image and video models).

The host's blocks take the token grid as ``(B, T, H, W, D)`` and have no ``dit`` replace patches, so
each block's ``forward`` is replaced with an object patch (``diffusion_model.blocks.N.forward``) that
runs the block on the same values laid out as ``(B, T*H*W, D)`` (what the host's attention sees).
Branches, each ``x + gate * out`` (or fused, below) with the host's expressions:

* ``self_attn`` = ``self_attn(norm(x) * (1 + scale) + shift, rope)``, reused on selective steps;
* ``cross`` = ``cross_attn(norm(x) * (1 + scale) + shift, text)`` (no rotary embedding on
  cross-attention), token-local;
* ``mlp`` = ``mlp(norm(x) * (1 + scale) + shift)``, token-local.

adaLN is ``(B, T_emb, D)``: one row per sample (``T_emb == 1``), or per latent frame when the timestep
is per frame (image-to-video conditioning). Per-frame rows are laid out per token, and then cross
attention and MLP are not token-local (reused on selective steps). The adaLN linears (with the
model-wide adaLN-LoRA term) are evaluated whole every step.

Newer hosts keep the residual stream in float32 when the model computes in float16: each branch input
is cast to the compute dtype (that of ``emb_B_T_D``), its output and gate to the stream's dtype, and the
residual is added with ``torch.addcmul`` (fused multiply-add); they also run ``mlp_patch`` hooks on the
MLP input. Both are followed where the host's block does them (its code names ``residual_dtype`` /
``mlp_patch``); the fused residual makes every branch ``fused`` there (the engine adds it with
``torch.addcmul`` too), so an all-FULL schedule equals the unpatched model bit for bit on every host.
An MLP with ``mlp_patch`` hooks (unknown reach) is reused on selective steps.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, outside_compile
from .registry import register


class CosmosBlockForward(ChainedForward):
    """Replacement of one block's ``forward`` (what was there before when no run of ours is active)."""

    @outside_compile
    def __call__(self, x_B_T_H_W_D, emb_B_T_D, crossattn_emb, rope_emb_L_1_1_D=None, adaln_lora_B_T_3D=None,
                 extra_per_block_pos_emb=None, transformer_options={}, **kwargs):
        block = self.block
        run = active_run(self.owner)
        rest = (emb_B_T_D, crossattn_emb, rope_emb_L_1_1_D, adaln_lora_B_T_3D, extra_per_block_pos_emb,
                transformer_options)
        if run is None:
            return self.call_prev(x_B_T_H_W_D, *rest, **kwargs)
        if self.prev is not None or kwargs:  # one cached residual, on the (B, T*H*W, D) layout the engine keeps
            shape = x_B_T_H_W_D.shape
            flat = (shape[0], -1, shape[-1])
            out = self.prev_as_branch(run, x_B_T_H_W_D.reshape(flat),
                                      lambda h: self.call_prev(h.reshape(shape), *rest, **kwargs).reshape(flat))
            return out.reshape(shape)
        x = x_B_T_H_W_D
        if extra_per_block_pos_emb is not None:
            x = x + extra_per_block_pos_emb
        code = type(block).forward.__code__
        casts = "residual_dtype" in code.co_varnames          # fp32 residual stream, compute-dtype branches
        fused = "addcmul" in code.co_names                    # torch.addcmul(x, gate, out) residuals
        hooks = list((transformer_options.get("patches") or {}).get("mlp_patch") or []) \
            if "mlp_patch" in code.co_consts else []
        res_dtype, comp_dtype = x_B_T_H_W_D.dtype, emb_B_T_D.dtype
        mods = []
        for layer in (block.adaln_modulation_self_attn, block.adaln_modulation_cross_attn, block.adaln_modulation_mlp):
            m = layer(emb_B_T_D) + adaln_lora_B_T_3D if block.use_adaln_lora else layer(emb_B_T_D)
            mods.append(m.chunk(3, dim=-1))  # shift, scale, gate: (B, T_emb, D)
        B, T, H, W, D = x.shape
        te = emb_B_T_D.shape[1]

        def tok(m: torch.Tensor) -> torch.Tensor:
            """(B, T_emb, D) -> broadcastable over (B, T*H*W, D), the host's (B, T_emb, 1, 1, D) rows."""
            if te == 1:
                return m
            return m[:, :, None, None, :].expand(B, T, H, W, D).reshape(B, T * H * W, D)

        (sh_sa, sc_sa, g_sa), (sh_ca, sc_ca, g_ca), (sh_m, sc_m, g_m) = [[tok(t) for t in m] for m in mods]
        if casts:
            g_sa, g_ca, g_m = g_sa.to(res_dtype), g_ca.to(res_dtype), g_m.to(res_dtype)
        to = transformer_options
        rope = rope_emb_L_1_1_D
        local = te == 1

        def cin(t: torch.Tensor) -> torch.Tensor:
            return t.to(comp_dtype) if casts else t

        def cout(t: torch.Tensor) -> torch.Tensor:
            return t.to(res_dtype) if casts else t

        def mlp(h: torch.Tensor) -> torch.Tensor:
            n = cin(block.layer_norm_mlp(h) * (1 + sc_m) + sh_m)
            if hooks:
                margs = {"x": n, "transformer_options": to}
                for p in hooks:
                    margs = p(margs)
                n = margs["x"]
            return cout(block.mlp(n))

        branches = (
            Branch("self_attn", lambda h: cout(block.self_attn(cin(block.layer_norm_self_attn(h) * (1 + sc_sa) + sh_sa),
                                                               None, rope_emb=rope, transformer_options=to)),
                   g_sa, False, fused=fused),
            Branch("cross", lambda h: cout(block.cross_attn(cin(block.layer_norm_cross_attn(h) * (1 + sc_ca) + sh_ca),
                                                            crossattn_emb, rope_emb=rope, transformer_options=to)),
                   g_ca, local, fused=fused),
            Branch("mlp", mlp, g_m, local and not hooks, fused=fused),
        )
        out = run.run_block(self.index, x.reshape(B, T * H * W, D), branches)
        return out.reshape(B, T, H, W, D)


class CosmosPredict2Adapter(FamilyAdapter):
    family = "cosmos_predict2"
    selective_support = "full (cross-attention and MLP recompute top-k tokens with per-sample adaLN)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.num_blocks = len(diffusion_model.blocks)
        self.patch = (int(diffusion_model.patch_temporal), int(diffusion_model.patch_spatial))

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i, block in enumerate(self.dm.blocks):
            install_forward_patch(model_patcher, f"diffusion_model.blocks.{i}.forward",
                                  lambda prev, b=block, i=i: CosmosBlockForward(b, i, owner, prev))

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Tokens of the patchified (T, H, W) grid, three branches per block, ``model_channels`` wide."""
        from ...procache_core.memory import single_stream_layout

        hw = self.grid_hw(x_shape)
        return single_stream_layout(self.num_blocks, hw[0] * hw[1], int(self.dm.model_channels), 3) if hw else None

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        pt, ps = self.patch
        if len(x_shape) == 5:
            return (((x_shape[2] + pt - 1) // pt) * (x_shape[3] // ps), x_shape[4] // ps)
        if len(x_shape) == 4:
            return (x_shape[2] // ps, x_shape[3] // ps)
        return None


def _is_cosmos_predict2(dm: Any, model_config: Any) -> bool:
    from comfy.ldm.cosmos.predict2 import Block, MiniTrainDIT

    return isinstance(dm, MiniTrainDIT) and all(type(b) is Block for b in dm.blocks)


register("cosmos_predict2", "Cosmos Predict2", _is_cosmos_predict2, lambda dm, name: CosmosPredict2Adapter(dm),
         preset="wan-30-balanced", selective="cross-attention, MLP with per-sample adaLN")
