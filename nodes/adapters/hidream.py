"""HiDream-I1 (``comfy.ldm.hidream.model.HiDreamImageTransformer2DModel``).

The host's HiDream forward has no ``dit`` replace patches, so each block's ``forward`` (the
``HiDreamImageBlock`` wrapper) is replaced with an object patch
(``diffusion_model.double_stream_blocks.N.forward`` / ``single_stream_blocks.N.forward``).

* A double-stream block has an image and a text stream sharing one attention. It runs as two engine
  blocks (image ``2i``, text ``2i+1``) with branches ``attn`` (the stream's output of the joint
  attention, computed once, lazily; reused on selective steps) and ``mlp``: the image stream's
  mixture-of-experts SwiGLU (each token is routed on its own, so it is token-local) or the text
  stream's SwiGLU, both recomputed for the top-k tokens on selective steps. The text stream the host
  hands each block is the T5 + last-Llama-layer tokens plus that block's own Llama layer; the host
  keeps only the first part afterwards, so the cached residual is exact for what it keeps.
* A single-stream block (image + text tokens + the block's Llama layer in one sequence) has the same
  two branches: ``attn`` reused, the MoE ``mlp`` token-local.

Arithmetic is the host's (``gate * out + x`` is ``x + gate * out`` bit for bit), so an all-FULL
schedule reproduces the unpatched model. adaLN (``Linear(C, 12C)`` / ``Linear(C, 6C)`` after SiLU)
is lazy: reused blocks evaluate only the gate rows of plain host linears.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, log, outside_compile
from .registry import register
from .modulation import lazy_chunks


def _u(t: torch.Tensor) -> torch.Tensor:
    return t[:, None]   # the host's adaLN(...)[:, None]: one row per sample, broadcast over tokens


def _lazy_mod(block: Any, adaln_input: torch.Tensor, n: int):
    import torch.nn.functional as F

    seq = block.adaLN_modulation
    return lazy_chunks(lambda: seq(adaln_input).chunk(n, dim=-1), seq[-1], lambda: F.silu(adaln_input),
                       adaln_input, n)


def _modulate(norm: Any, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return norm(h).to(dtype=h.dtype) * (1 + _u(scale)) + _u(shift)


class HiDreamDoubleForward(ChainedForward):
    """Replacement of one double-stream block's ``forward``."""

    @outside_compile
    def __call__(self, image_tokens, image_tokens_masks=None, text_tokens=None, adaln_input=None, rope=None,
                 transformer_options={}, **kwargs):
        run = active_run(self.owner)
        if run is None:
            return self.call_prev(image_tokens, image_tokens_masks, text_tokens, adaln_input, rope,
                                  transformer_options=transformer_options, **kwargs)
        i = self.index
        if self.prev is not None:  # another pack's forward: each stream cached as one residual
            out: dict = {}

            def prev_out():
                if not out:
                    out["img"], out["txt"] = self.prev(image_tokens, image_tokens_masks, text_tokens, adaln_input,
                                                       rope, transformer_options=transformer_options, **kwargs)
                return out

            if not self._logged:
                self._logged = True
                log.info("ProCache: HiDream double block %d's forward was patched by another node before ProCache "
                         "Apply; each stream is cached as one residual (no selective compute there).", i)
            img = run.run_block(2 * i, image_tokens,
                                (Branch("patched_block", lambda h: prev_out()["img"] - h, None, False),))
            txt = run.run_block(2 * i + 1, text_tokens,
                                (Branch("patched_block", lambda h: prev_out()["txt"] - h, None, False),))
            return img, txt
        b = self.block.block
        to = transformer_options
        mod = _lazy_mod(b, adaln_input, 12)
        img_in, txt_in = image_tokens, text_tokens
        joint: dict = {}

        def attn_out() -> dict:
            if not joint:
                joint["img"], joint["txt"] = b.attn1(_modulate(b.norm1_i, img_in, mod[0], mod[1]), image_tokens_masks,
                                                     _modulate(b.norm1_t, txt_in, mod[6], mod[7]), rope=rope,
                                                     transformer_options=to)
            return joint

        img = run.run_block(2 * i, img_in, (
            Branch("attn", lambda h: attn_out()["img"], mod.lazy_gate(2, _u), False),
            Branch("mlp", lambda h: b.ff_i(_modulate(b.norm3_i, h, mod[3], mod[4])), mod.lazy_gate(5, _u), True),
        ))
        txt = run.run_block(2 * i + 1, txt_in, (
            Branch("attn", lambda h: attn_out()["txt"], mod.lazy_gate(8, _u), False),
            Branch("mlp", lambda h: b.ff_t(_modulate(b.norm3_t, h, mod[9], mod[10])), mod.lazy_gate(11, _u), True),
        ))
        joint.clear()
        return img, txt


class HiDreamSingleForward(ChainedForward):
    """Replacement of one single-stream block's ``forward`` (``index``: its engine block, after the
    double blocks' two streams)."""

    @outside_compile
    def __call__(self, image_tokens, image_tokens_masks=None, text_tokens=None, adaln_input=None, rope=None,
                 transformer_options={}, **kwargs):
        run = active_run(self.owner)
        if run is None:
            return self.call_prev(image_tokens, image_tokens_masks, text_tokens, adaln_input, rope,
                                  transformer_options=transformer_options, **kwargs)
        if self.prev is not None:
            return self.prev_as_branch(run, image_tokens, lambda h: self.prev(
                h, image_tokens_masks, text_tokens, adaln_input, rope, transformer_options=transformer_options,
                **kwargs))
        b = self.block.block
        to = transformer_options
        mod = _lazy_mod(b, adaln_input, 6)
        return run.run_block(self.index, image_tokens, (
            Branch("attn", lambda h: b.attn1(_modulate(b.norm1_i, h, mod[0], mod[1]), image_tokens_masks, rope=rope,
                                             transformer_options=to), mod.lazy_gate(2, _u), False),
            Branch("mlp", lambda h: b.ff_i(_modulate(b.norm3_i, h, mod[3], mod[4])), mod.lazy_gate(5, _u), True),
        ))


class HiDreamAdapter(FamilyAdapter):
    family = "hidream"
    selective_support = "full (image MoE MLPs and text MLPs recompute top-k tokens; attention reused)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.n_double = len(diffusion_model.double_stream_blocks)
        self.n_single = len(diffusion_model.single_stream_blocks)
        self.single_offset = 2 * self.n_double
        self.num_blocks = 2 * self.n_double + self.n_single
        self.patch_size = int(diffusion_model.patch_size)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i, block in enumerate(self.dm.double_stream_blocks):
            install_forward_patch(model_patcher, f"diffusion_model.double_stream_blocks.{i}.forward",
                                  lambda prev, b=block, i=i: HiDreamDoubleForward(b, i, owner, prev))
        for i, block in enumerate(self.dm.single_stream_blocks):
            install_forward_patch(model_patcher, f"diffusion_model.single_stream_blocks.{i}.forward",
                                  lambda prev, b=block, i=i: HiDreamSingleForward(b, self.single_offset + i, owner, prev))

    def lanes(self) -> list | None:
        return ["img", "txt"] * self.n_double + ["joint"] * self.n_single

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Image tokens; text stream = T5 tokens + two Llama layers' tokens (the kept last layer and the
        block's own); single blocks hold both; two branches everywhere, no kept attention half."""
        from ...procache_core.memory import double_single_layout

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        llama = (cond or {}).get("conditioning_llama3")
        n_llama = int(llama.shape[2]) if getattr(llama, "ndim", 0) == 4 else 128
        txt = (context_tokens or 128) + 2 * n_llama
        return double_single_layout(self.n_double, self.n_single, hw[0] * hw[1], txt, int(self.dm.inner_dim),
                                    single_branches=2, single_aux=False)

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 4:
            return None
        p = self.patch_size
        return (-(-x_shape[2] // p), -(-x_shape[3] // p))

    def modulation_layers(self) -> dict[str, Any]:
        out = {}
        for name in ("double_stream_blocks", "single_stream_blocks"):
            for i, b in enumerate(getattr(self.dm, name)):
                out[f"{name}.{i}.block.adaLN_modulation"] = b.block.adaLN_modulation[-1]
        return out


def _is_hidream(dm: Any, model_config: Any) -> bool:
    from comfy.ldm.hidream.model import (HiDreamImageBlock, HiDreamImageSingleTransformerBlock,
                                         HiDreamImageTransformer2DModel, HiDreamImageTransformerBlock)

    return isinstance(dm, HiDreamImageTransformer2DModel) and \
        all(type(b) is HiDreamImageBlock and type(b.block) is HiDreamImageTransformerBlock
            for b in dm.double_stream_blocks) and \
        all(type(b) is HiDreamImageBlock and type(b.block) is HiDreamImageSingleTransformerBlock
            for b in dm.single_stream_blocks)


register("hidream", "HiDream-I1", _is_hidream, lambda dm, name: HiDreamAdapter(dm), preset="flux-28-balanced",
         selective="image mixture-of-experts MLPs, text MLPs")
