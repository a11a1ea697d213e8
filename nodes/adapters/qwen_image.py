"""Qwen-Image and Qwen-Image-Edit (``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``).

Patched with ``dit`` replace patches ``("double_block", i)``. Every block is a joint (MMDiT-style)
block with an image and a text stream sharing one attention; each block runs as two engine blocks
(image stream ``2i``, text stream ``2i+1``) with branches:

* ``attn``: the stream's output projection of the joint attention (``to_out`` / ``to_add_out``), gated
  by ``gate1``; computed once, lazily, for both streams; reused on selective steps;
* ``mlp``: ``mlp(modulate(norm2(x)))``, gated by ``gate2``; token-local (the modulation is per sample),
  so selective steps recompute it for the top-k tokens of the stream. With Qwen-Image-Edit the image
  stream also holds the reference-image tokens; they are cached and scored like the others.

adaLN (``img_mod`` / ``txt_mod``, one ``Linear(C, 6C)`` each) is lazy: reused blocks evaluate only the
gate rows of plain host linears (``nodes/adapters/modulation.py``).

Rounding: the host adds the attention residual as ``x + gate * out`` (the engine's arithmetic) but the
MLP residual as ``torch.addcmul(x, gate, out)``, a fused multiply-add whose result can differ from
``x + gate * out`` in the last bit. An all-FULL schedule therefore equals the unpatched model up to
float rounding (~1e-6 relative on CPU), not bit for bit.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from . import DitBlockReplace, FamilyAdapter, install_dit_replace
from .modulation import lazy_chunks


def _unsqueeze1(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1)


def _lazy_mod(seq_mod: Any, temb: torch.Tensor):
    """The host's ``img_mod(temb)`` split into shift1, scale1, gate1, shift2, scale2, gate2."""
    import torch.nn.functional as F

    def full():
        m1, m2 = seq_mod(temb).chunk(2, dim=-1)
        return (*m1.chunk(3, dim=-1), *m2.chunk(3, dim=-1))

    return lazy_chunks(full, seq_mod[1], lambda: F.silu(temb), temb, 6)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))  # the host's _modulate


class QwenImageBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        block = self.adapter.dm.transformer_blocks[self.index]
        img, txt, temb, pe = args["img"], args["txt"], args["vec"], args["pe"]
        to = args.get("transformer_options") or {}
        im, tm = _lazy_mod(block.img_mod, temb), _lazy_mod(block.txt_mod, temb)
        img_in, txt_in = img, txt
        joint: dict = {}

        def attn_out() -> dict:
            if not joint:
                joint["img"], joint["txt"] = block.attn(
                    hidden_states=_modulate(block.img_norm1(img_in), im[0], im[1]),
                    encoder_hidden_states=_modulate(block.txt_norm1(txt_in), tm[0], tm[1]),
                    encoder_hidden_states_mask=None, image_rotary_emb=pe, transformer_options=to)
            return joint

        img = run.run_block(2 * self.index, img, (
            Branch("attn", lambda h: attn_out()["img"], im.lazy_gate(2, _unsqueeze1), False),
            Branch("mlp", lambda h: block.img_mlp(_modulate(block.img_norm2(h), im[3], im[4])),
                   im.lazy_gate(5, _unsqueeze1), True),
        ))
        txt = run.run_block(2 * self.index + 1, txt, (
            Branch("attn", lambda h: attn_out()["txt"], tm.lazy_gate(2, _unsqueeze1), False),
            Branch("mlp", lambda h: block.txt_mlp(_modulate(block.txt_norm2(h), tm[3], tm[4])),
                   tm.lazy_gate(5, _unsqueeze1), True),
        ))
        joint.clear()
        return {"img": img, "txt": txt}


class QwenImageAdapter(FamilyAdapter):
    family = "qwen_image"
    selective_support = "full (image and text MLPs recompute top-k tokens; joint attention reused)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.n_blocks = len(diffusion_model.transformer_blocks)
        self.num_blocks = 2 * self.n_blocks
        self.patch_size = int(getattr(diffusion_model, "patch_size", 2))

    def lanes(self) -> list | None:
        return ["img", "txt"] * self.n_blocks  # engine blocks 2i (image stream) and 2i+1 (text stream)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.n_blocks):
            install_dit_replace(model_patcher, QwenImageBlock(self, i, owner), "double_block", i)

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Per block an image (latent tokens + reference-image tokens of an edit) and a text engine
        block, two branches each, ``inner_dim`` wide."""
        from ...procache_core.memory import BlockShape
        from . import ref_latent_tokens

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        img = hw[0] * hw[1] + ref_latent_tokens(cond, self.patch_size)
        width, txt = int(self.dm.inner_dim), context_tokens or 256
        return [s for _ in range(self.n_blocks) for s in (BlockShape(img, width, 2, "img"), BlockShape(txt, width, 2, "txt"))]

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) not in (4, 5):
            return None
        p = self.patch_size
        return ((x_shape[-2] + p // 2) // p, (x_shape[-1] + p // 2) // p)
