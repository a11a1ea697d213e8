"""Lumina 2 and Z-Image (``comfy.ldm.lumina.model.NextDiT``).

NextDiT has no ``dit`` replace patches, so each main block's ``forward`` is replaced with an object
patch (``diffusion_model.layers.N.forward``; the small noise/context refiner blocks run every step).
The main blocks see one sequence, caption tokens then image tokens (Z-Image pads both to a multiple
of 32). ``JointTransformerBlock.forward`` with modulation becomes two branches, each written as the
host writes it (``x + tanh(gate).unsqueeze(1) * out``), so an all-FULL schedule is bitwise equal:

* ``attn`` = ``attention_norm2(attention(modulate(attention_norm1(x), scale_msa), mask, freqs))``,
  gated by ``tanh(gate_msa)``; reused on selective steps;
* ``mlp`` = ``ffn_norm2(feed_forward(modulate(ffn_norm1(x), scale_mlp)))``, gated by ``tanh(gate_mlp)``;
  token-local (per-token RMSNorm and FFN, per-sample scale), recomputed for the top-k tokens on
  selective steps (caption tokens compete with image tokens for the k picks).

adaLN (``adaLN_modulation``: ``Linear(·, 4C)``, with SiLU for Lumina 2, without for Z-Image) is lazy:
reused blocks evaluate only the two gate row blocks of plain host linears.

Newer hosts wrap both branch outputs in ``clamp_fp16`` (used here when the host module has it) and pass
``timestep_zero_index`` (Z-Image Omni: ``adaln_input`` has two rows per sample, the step's and timestep
0; token slices of reference images take the second). The scale and gate are then laid out per token
(the same products as the host's slice-wise in-place multiplies, so still bitwise) and the MLP is reused
on selective steps, like the attention. Calls with arguments the block does not take here run the
host's forward as one cached residual.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, outside_compile
from .registry import register
from .modulation import lazy_chunks


def _gate(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1).tanh()


def _slices_per_token(zero: list, n: int):
    """``(2B, 1, C) -> (B, n, C)``: tokens inside the ``zero`` slices take the second B rows (timestep 0),
    the others the first B (the host's ``modulate`` / ``apply_gate`` with ``timestep_zero_index``)."""
    def lay(v: torch.Tensor) -> torch.Tensor:
        b = v.shape[0] // 2
        out = v[:b].expand(b, n, v.shape[-1]).clone()
        for start, stop in zero:
            out[:, start:stop] = v[b:]
        return out
    return lay


class LuminaBlockForward(ChainedForward):
    """Replacement of one main block's ``forward`` (what was there before when no run of ours is active)."""

    @outside_compile
    def __call__(self, x, x_mask, freqs_cis, adaln_input=None, *args, **kwargs):
        block = self.block
        run = active_run(self.owner)
        if run is None or not block.modulation or adaln_input is None:
            return self.call_prev(x, x_mask, freqs_cis, adaln_input, *args, **kwargs)
        known = not args and set(kwargs) <= {"timestep_zero_index", "transformer_options"}
        if self.prev is not None or not known:
            return self.prev_as_branch(run, x, lambda h: self.call_prev(h, x_mask, freqs_cis, adaln_input, *args,
                                                                        **kwargs))
        import torch.nn.functional as F
        import comfy.ldm.lumina.model as lm

        zero = kwargs.get("timestep_zero_index")
        clamp = getattr(lm, "clamp_fp16", None) or (lambda t: t)   # newer hosts clamp fp16 branch outputs
        seq = block.adaLN_modulation
        silu = isinstance(seq[0], torch.nn.SiLU)
        mod = lazy_chunks(lambda: seq(adaln_input).chunk(4, dim=1), seq[-1],
                          (lambda: F.silu(adaln_input)) if silu else (lambda: adaln_input), adaln_input, 4)
        to = kwargs.get("transformer_options") or {}
        if zero is None:
            modulate, gate = lm.modulate, _gate
        else:  # two adaLN rows per sample: the zero-timestep slices (Z-Image Omni references) take the second
            lay = _slices_per_token(zero, x.shape[1])

            def modulate(h, scale):
                return h * lay(1 + scale.unsqueeze(1))

            def gate(t):
                return lay(t.unsqueeze(1).tanh())
        branches = (
            Branch("attn", lambda h: block.attention_norm2(clamp(block.attention(
                modulate(block.attention_norm1(h), mod[0]), x_mask, freqs_cis, transformer_options=to))),
                mod.lazy_gate(1, gate), False),
            Branch("mlp", lambda h: block.ffn_norm2(clamp(block.feed_forward(modulate(block.ffn_norm1(h), mod[2])))),
                   mod.lazy_gate(3, gate), zero is None),
        )
        return run.run_block(self.index, x, branches)


def lumina_variant(dm: Any) -> str:
    """``"z_image"`` (adaLN without SiLU, the host's ``z_image_modulation``) or ``"lumina2"``."""
    seq = dm.layers[0].adaLN_modulation
    return "lumina2" if isinstance(seq[0], torch.nn.SiLU) else "z_image"


class LuminaAdapter(FamilyAdapter):
    family = "lumina2"
    selective_support = "full (MLPs recompute top-k tokens; attention reused)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.num_blocks = len(diffusion_model.layers)
        self.family = lumina_variant(diffusion_model)

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """One sequence of caption then image tokens, each padded to the host's ``pad_tokens_multiple``
        (Z-Image: 32), two branches per main block."""
        from ...procache_core.memory import single_stream_layout

        if len(x_shape) != 4:
            return None
        p = int(self.dm.patch_size)
        img, cap = -(-x_shape[2] // p) * -(-x_shape[3] // p), context_tokens or 256
        m = getattr(self.dm, "pad_tokens_multiple", None)
        if m:
            img, cap = img + (-img) % m, cap + (-cap) % m
        return single_stream_layout(self.num_blocks, img + cap, int(self.dm.dim), 2)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i, block in enumerate(self.dm.layers):
            install_forward_patch(model_patcher, f"diffusion_model.layers.{i}.forward",
                                  lambda prev, b=block, i=i: LuminaBlockForward(b, i, owner, prev))


def _is_lumina(variant: str):
    def detect(dm: Any, model_config: Any) -> bool:
        from comfy.ldm.lumina.model import JointTransformerBlock, NextDiT

        return isinstance(dm, NextDiT) and len(dm.layers) > 0 and \
            all(type(b) is JointTransformerBlock and b.modulation for b in dm.layers) and lumina_variant(dm) == variant
    return detect


LUMINA_SELECTIVE = "MLPs of the main blocks, refiners run every step"
register("z_image", "Z-Image", _is_lumina("z_image"), lambda dm, name: LuminaAdapter(dm), preset="flux-28-balanced",
         selective=LUMINA_SELECTIVE)
register("lumina2", "Lumina 2", _is_lumina("lumina2"), lambda dm, name: LuminaAdapter(dm), preset="flux-28-balanced",
         selective=LUMINA_SELECTIVE)
