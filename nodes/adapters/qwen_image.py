"""Qwen-Image and Qwen-Image-Edit (``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``).

Each block's ``forward`` is replaced with an object patch (``diffusion_model.transformer_blocks.N.forward``).
The host's ``dit`` replace arguments carry neither the text attention mask (``encoder_hidden_states_mask``,
which newer hosts hand to the joint attention) nor ``timestep_zero_index`` (Qwen-Image-Edit 2511's
reference tokens modulated by a zero timestep); the block's own call has both, and another pack's
``dit`` replace patch still wraps this block (the host's ``original_block`` calls ``block(...)``).
Every block is a joint (MMDiT-style) block with an image and a text stream sharing one attention; each
block runs as two engine blocks (image stream ``2i``, text stream ``2i+1``) with branches:

* ``attn``: the stream's output projection of the joint attention (``to_out`` / ``to_add_out``), gated
  by ``gate1``; computed once, lazily, for both streams; reused on selective steps;
* ``mlp``: ``mlp(modulate(norm2(x)))``, gated by ``gate2``; token-local when the modulation is per sample,
  so selective steps recompute it for the top-k tokens of the stream. With Qwen-Image-Edit the image
  stream also holds the reference-image tokens; they are cached and scored like the others. With
  ``timestep_zero_index`` (``temb`` has two rows per sample: the step's and timestep 0) the image
  stream's tokens from that index on take the second row's shift/scale/gate; the gate is then laid out
  per token and the image MLP is reused on selective steps, like the attention.

Qwen-Image layered (the same class with ``use_additional_t_cond``; latents of batch x 16 x (layers + 1)
x h x w): the host patches every layer into the one image stream, so its blocks are the ones above; the
extra timestep embedding is already in ``temb``, which every block takes as is.

adaLN (``img_mod`` / ``txt_mod``, one ``Linear(C, 6C)`` each) is lazy: reused blocks evaluate only the
gate rows of plain host linears (``nodes/adapters/modulation.py``).

Rounding: the host adds the MLP residual of both streams with ``torch.addcmul(x, gate, out)`` (one fused
multiply-add), on newer hosts (``_apply_gate``) the image stream's attention residual too, and the rest
as ``x + gate * out``; with ``timestep_zero_index`` the image stream is ``x + cat(rows * gate)``, unfused.
Each branch is marked ``fused`` exactly where the host's block fuses it (read from its code), so an
all-FULL schedule equals the unpatched model bit for bit on every host.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, outside_compile
from .modulation import lazy_chunks
from .registry import register


def _unsqueeze1(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1)


def _lazy_mod(seq_mod: Any, temb: torch.Tensor):
    """The host's ``img_mod(temb)`` split into shift1, scale1, gate1, shift2, scale2, gate2."""
    import torch.nn.functional as F

    def full():
        m1, m2 = seq_mod(temb).chunk(2, dim=-1)
        return (*m1.chunk(3, dim=-1), *m2.chunk(3, dim=-1))

    return lazy_chunks(full, seq_mod[1], lambda: F.silu(temb), temb, 6)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, tzi: int | None = None) -> torch.Tensor:
    """The host's ``_modulate``: rows of ``shift``/``scale`` are (B, C), or (2B, C) with ``tzi``, where the
    second half modulates the tokens from ``tzi`` on."""
    if tzi is None:
        return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))
    b = shift.shape[0] // 2
    reg = torch.addcmul(shift[:b].unsqueeze(1), x[:, :tzi], 1 + scale[:b].unsqueeze(1))
    zero = torch.addcmul(shift[b:].unsqueeze(1), x[:, tzi:], 1 + scale[b:].unsqueeze(1))
    return torch.cat((reg, zero), dim=1)


def _split_gate(tzi: int, n: int):
    """Gate (2B, C) -> (B, n, C): the first B rows for tokens before ``tzi``, the others after (the
    host's ``cat(x[:, :tzi] * g[0], x[:, tzi:] * g[1])`` written as one per-token gate)."""
    def gate(g: torch.Tensor) -> torch.Tensor:
        b = g.shape[0] // 2
        return torch.cat((g[:b].unsqueeze(1).expand(b, tzi, g.shape[-1]),
                          g[b:].unsqueeze(1).expand(b, n - tzi, g.shape[-1])), dim=1)
    return gate


def _host_fuses(block: Any) -> tuple[bool, bool, bool]:
    """Which residuals the host's block adds with ``torch.addcmul`` when there is no
    ``timestep_zero_index``: (image attention, image MLP, text MLP). Older hosts write both MLP
    residuals as ``torch.addcmul`` in ``forward`` and the attention ones as ``x + gate * out``; newer ones
    add the image stream's through ``_apply_gate`` (``addcmul`` without the index)."""
    fwd = type(block).forward.__code__
    apply_gate = getattr(type(block), "_apply_gate", None)
    via_gate = ("_apply_gate" in fwd.co_names and apply_gate is not None
                and "addcmul" in getattr(apply_gate, "__code__", fwd).co_names)
    direct = "addcmul" in fwd.co_names
    return via_gate, via_gate or direct, direct


class QwenImageBlockForward(ChainedForward):
    """Replacement of one block's ``forward`` (what was there before when no run of ours is active)."""

    @outside_compile
    def __call__(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask=None, temb=None,
                 image_rotary_emb=None, *args, **kwargs):
        run = active_run(self.owner)
        call = (hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb, *args)
        if run is None:
            return self.call_prev(*call, **kwargs)
        tzi = kwargs.get("timestep_zero_index")
        known = not args and set(kwargs) <= {"timestep_zero_index", "transformer_options"}
        if self.prev is not None or not known:
            return self._as_residuals(run, call, kwargs)
        block = self.block
        to = kwargs.get("transformer_options") or {}
        img, txt = hidden_states, encoder_hidden_states
        im = _lazy_mod(block.img_mod, temb)
        t_temb = temb.chunk(2, dim=0)[0] if tzi is not None else temb
        tm = _lazy_mod(block.txt_mod, t_temb)
        img_gate = _unsqueeze1 if tzi is None else _split_gate(int(tzi), img.shape[1])
        fuse_img_attn, fuse_img_mlp, fuse_txt_mlp = _host_fuses(block)
        if tzi is not None:  # the host's ``y + cat(x[:, :tzi] * g0, x[:, tzi:] * g1)``: not fused
            fuse_img_attn = fuse_img_mlp = False
        joint: dict = {}

        def attn_out() -> dict:
            if not joint:
                joint["img"], joint["txt"] = block.attn(
                    hidden_states=_modulate(block.img_norm1(img), im[0], im[1], tzi),
                    encoder_hidden_states=_modulate(block.txt_norm1(txt), tm[0], tm[1]),
                    encoder_hidden_states_mask=encoder_hidden_states_mask, image_rotary_emb=image_rotary_emb,
                    transformer_options=to)
            return joint

        img = run.run_block(2 * self.index, img, (
            Branch("attn", lambda h: attn_out()["img"], im.lazy_gate(2, img_gate), False, fused=fuse_img_attn),
            Branch("mlp", lambda h: block.img_mlp(_modulate(block.img_norm2(h), im[3], im[4], tzi)),
                   im.lazy_gate(5, img_gate), tzi is None, fused=fuse_img_mlp),
        ))
        txt = run.run_block(2 * self.index + 1, txt, (
            Branch("attn", lambda h: attn_out()["txt"], tm.lazy_gate(2, _unsqueeze1), False),  # x + gate * out
            Branch("mlp", lambda h: block.txt_mlp(_modulate(block.txt_norm2(h), tm[3], tm[4])),
                   tm.lazy_gate(5, _unsqueeze1), True, fused=fuse_txt_mlp),
        ))
        joint.clear()
        return txt, img

    def _as_residuals(self, run: Any, call: tuple, kwargs: dict):
        """An earlier pack's forward, or arguments this adapter does not know: the block's own forward,
        each stream cached as one residual (no selective compute there)."""
        out: dict = {}

        def prev_out() -> dict:
            if not out:
                out["txt"], out["img"] = self.call_prev(*call, **kwargs)
            return out

        if not self._logged:
            self._logged = True
            from . import log
            log.info("ProCache: Qwen-Image block %d runs the host's (or an earlier patch's) forward; each stream "
                     "is cached as one residual (no selective compute there).", self.index)
        img = run.run_block(2 * self.index, call[0],
                            (Branch("patched_block", lambda h: prev_out()["img"] - h, None, False),))
        txt = run.run_block(2 * self.index + 1, call[1],
                            (Branch("patched_block", lambda h: prev_out()["txt"] - h, None, False),))
        return txt, img


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
        for i, block in enumerate(self.dm.transformer_blocks):
            install_forward_patch(model_patcher, f"diffusion_model.transformer_blocks.{i}.forward",
                                  lambda prev, b=block, i=i: QwenImageBlockForward(b, i, owner, prev))

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Per block an image (latent tokens + reference-image tokens of an edit) and a text engine
        block, two branches each, ``inner_dim`` wide. Qwen-Image layered: every layer of the 5-D latent
        (batch, channels, layers, h, w) is image tokens (the host patches each layer), and so is every
        frame of a 5-D reference latent."""
        from ...procache_core.memory import BlockShape

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        refs = (cond or {}).get("reference_latents") or []
        img = hw[0] * hw[1] + sum(self._tokens(tuple(r.shape)) for r in refs
                                  if getattr(r, "shape", None) is not None and len(r.shape) in (4, 5))
        width, txt = int(self.dm.inner_dim), context_tokens or 256
        return [s for _ in range(self.n_blocks) for s in (BlockShape(img, width, 2, "img"), BlockShape(txt, width, 2, "txt"))]

    def _tokens(self, shape: tuple) -> int:
        hw = self.grid_hw(shape)
        return hw[0] * hw[1] if hw is not None else 0

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        """Token grid of the host's ``process_img``: the latent padded to the patch size, patched per
        layer (frame), layers stacked: (layers * rows, columns); a 4-D latent is one layer."""
        if len(x_shape) not in (4, 5):
            return None
        p = self.patch_size
        layers = int(x_shape[2]) if len(x_shape) == 5 else 1
        return (layers * -(-int(x_shape[-2]) // p), -(-int(x_shape[-1]) // p))


def _is_qwen_image(dm: Any, model_config: Any) -> bool:
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel, QwenImageTransformerBlock

    return isinstance(dm, QwenImageTransformer2DModel) and \
        all(type(b) is QwenImageTransformerBlock for b in dm.transformer_blocks)


# asked right after the Flux-block families (the order it always had); Flux.1's rule preset (joint blocks)
register("qwen_image", "Qwen-Image (and Edit)", _is_qwen_image, lambda dm, name: QwenImageAdapter(dm),
         preset="flux-28-balanced", priority=20,
         selective="image and text MLPs, all-FULL equal to float rounding")
