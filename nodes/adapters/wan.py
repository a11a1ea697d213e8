"""Wan 2.x (``comfy.ldm.wan.model.WanModel`` and subclasses with ``WanAttentionBlock`` blocks).

Wan has ``dit`` replace patches, but they do not carry the block's ``context_img_len`` (image-to-video
cross-attention needs it), so each block's ``forward`` is replaced with an object patch
(``diffusion_model.blocks.N.forward``), which receives every argument. Branches:

* ``self_attn``, gated by ``e[2]`` (reused on selective steps);
* ``cross`` = ``cross_attn(norm3(x), context)``, no gate, token-local;
* ``attn2_patch`` (only when ``transformer_options["patches"]["attn2_patch"]`` hooks are present and the
  host's block runs them, after cross-attention; older hosts' blocks ignore them, and so does this
  adapter there): ``hooks(x) - x``, not token-local;
* ``ffn``, gated by ``e[5]``; token-local when the modulation is per sample (Wan 2.1/2.2 14B). With
  per-frame modulation (Wan 2.2 5B) it is treated as not token-local (reused on selective steps).

The host writes both gated residuals as ``torch.addcmul(x, y, gate)`` (one fused multiply-add, every
host); those branches are ``fused``: the engine's ``torch.addcmul(x, gate, y)`` gives the same bits (the
product commutes), so an all-FULL schedule equals the unpatched model bit for bit.

Only blocks whose ``forward`` is ``WanAttentionBlock.forward`` itself are split (detection): subclasses
with their own arithmetic (HuMo's audio blocks, the causal blocks) get the model-level fallback. A call
with arguments the plain block does not take runs the host's forward as one cached residual.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, outside_compile
from .registry import register


class WanBlockForward(ChainedForward):
    @outside_compile
    def __call__(self, x, e, freqs, context, context_img_len=257, transformer_options={}, **kwargs):
        block = self.block
        run = active_run(self.owner)
        if run is None:
            return self.call_prev(x, e, freqs, context, context_img_len=context_img_len,
                                  transformer_options=transformer_options, **kwargs)
        if self.prev is not None or kwargs:
            return self.prev_as_branch(run, x, lambda h: self.call_prev(
                h, e, freqs, context, context_img_len=context_img_len, transformer_options=transformer_options,
                **kwargs))
        import comfy.model_management
        from comfy.ldm.wan.model import repeat_e

        mod = comfy.model_management.cast_to(block.modulation, dtype=x.dtype, device=x.device)
        e = (mod + e).chunk(6, dim=1) if e.ndim < 4 else (mod.unsqueeze(0) + e).unbind(2)
        x = x.contiguous()
        per_sample = all(t.size(1) == 1 for t in e)
        to = transformer_options
        attn2 = list((to.get("patches") or {}).get("attn2_patch") or []) if _block_runs_attn2(block) else []
        branches = [
            Branch("self_attn", lambda h: block.self_attn(torch_addcmul(repeat_e(e[0], h), block.norm1(h), 1 + repeat_e(e[1], h)),
                                                          freqs, transformer_options=to),
                   repeat_e(e[2], x), False, fused=True),
            Branch("cross", lambda h: block.cross_attn(block.norm3(h), context, context_img_len=context_img_len,
                                                       transformer_options=to), None, True),
        ]
        if attn2:  # newer hosts run these hooks after cross-attention; unknown reach: one reused residual
            branches.append(Branch("attn2_patch", lambda h: _run_attn2(attn2, h, to) - h, None, False))
        branches += [
            Branch("ffn", lambda h: block.ffn(torch_addcmul(repeat_e(e[3], h), block.norm2(h), 1 + repeat_e(e[4], h))),
                   repeat_e(e[5], x), per_sample, fused=True),
        ]
        return run.run_block(self.index, x, branches)


def _block_runs_attn2(block) -> bool:
    """Whether the host's block ``forward`` runs ``attn2_patch`` hooks itself (newer hosts; the name is
    a constant of its code)."""
    return "attn2_patch" in type(block).forward.__code__.co_consts


def torch_addcmul(a, b, c):
    return torch.addcmul(a, b, c)


def _run_attn2(patches: list, x, to: dict):
    """The host's ``attn2_patch`` hooks of a Wan block (``x = p({"x": x, "transformer_options": to})``)."""
    for p in patches:
        x = p({"x": x, "transformer_options": to})
    return x


class WanAdapter(FamilyAdapter):
    family = "wan"
    selective_support = "partial (cross-attention and, with per-sample modulation, FFN recompute top-k tokens)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.num_blocks = len(diffusion_model.blocks)
        self.patch_size = tuple(int(p) for p in diffusion_model.patch_size)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i, block in enumerate(self.dm.blocks):
            install_forward_patch(model_patcher, f"diffusion_model.blocks.{i}.forward",
                                  lambda prev, b=block, i=i: WanBlockForward(b, i, owner, prev))

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        from ...procache_core.memory import single_stream_layout

        hw = self.grid_hw(x_shape)
        return single_stream_layout(self.num_blocks, hw[0] * hw[1], int(self.dm.dim), 3) if hw else None

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 5:
            return None
        pt, ph, pw = self.patch_size
        t = (x_shape[2] + pt - 1) // pt
        return (t * ((x_shape[3] + ph - 1) // ph), (x_shape[4] + pw - 1) // pw)


def _is_wan(dm: Any, model_config: Any) -> bool:
    """Only blocks running WanAttentionBlock's own forward (the HuMo audio and causal subclasses have their
    own maths: model-level fallback)."""
    from comfy.ldm.wan.model import WanAttentionBlock, WanModel

    return isinstance(dm, WanModel) and all(type(b).forward is WanAttentionBlock.forward for b in dm.blocks)


register("wan", "Wan 2.x", _is_wan, lambda dm, name: WanAdapter(dm), preset="wan-30-balanced",
         selective="cross-attention, FFN")
