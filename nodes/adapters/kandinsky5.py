"""Kandinsky 5 video and image (``comfy.ldm.kandinsky5.model.Kandinsky5``; configs ``Kandinsky5`` and
``Kandinsky5Image``: families ``kandinsky5`` and ``kandinsky5_image``).

The network runs a few text *encoder* blocks on the prompt tokens, then the visual *decoder* blocks
(``visual_transformer_blocks``) on the video / image tokens, cross-attending to the encoded prompt.
Only the decoder blocks are engine blocks: they hold the image tokens and are the cost of a step
(tens of blocks over thousands of tokens). The encoder blocks (2 blocks over the prompt tokens, well
under 1% of a step at usual sizes) run every step as the host's own: their output feeds the
cross-attention of every token a selective step recomputes, so keeping it fresh costs little and
keeps those tokens exact; caching it would add a text lane for no measurable saving.

The host's ``forward_orig`` consults ``dit`` replace patches ``("double_block", i)``, but the
``original_block`` it hands them calls the block as ``block(x=..., context=..., ...)``, keywords that
``TransformerDecoderBlock.forward`` (``visual_embed, text_embed, ...``) does not take (ComfyUI 0.8.1 and
0.29.0): a replace patch could neither be verified against nor fall back to the host's block. So each
decoder block's ``forward`` is replaced with an object patch
(``diffusion_model.visual_transformer_blocks.N.forward``), which receives the block's whole call as the
unpatched loop makes it. Each ``TransformerDecoderBlock`` becomes three branches:

* ``self_attn`` = ``self_attention(modulate(self_attention_norm(x)), freqs)``, gated; reused on
  selective steps;
* ``cross`` = ``cross_attention(modulate(cross_attention_norm(x)), text)``, gated; token-local;
* ``ffn`` = ``feed_forward(modulate(feed_forward_norm(x)))``, gated; token-local.

The modulation comes from the block's own ``visual_modulation`` (``Linear(time_dim, 9 * dim)`` after
SiLU) of the per-sample time embedding, so shift / scale / gate are one row per sample and the last two
branches are token-local. It is lazy: reused steps evaluate only the gate rows of a plain host linear.

Arithmetic: the branches call the host module's own ``apply_scale_shift_norm`` (``addcmul(shift,
norm(x), scale + 1)``), and the host adds each residual with ``apply_gate_sum`` =
``torch.addcmul(x, gate, out)``; the branches are ``fused`` exactly when that helper fuses (read from
its code), so the engine's residual is the host's and an all-FULL schedule is bitwise.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import ChainedForward, FamilyAdapter, install_forward_patch, outside_compile, registry
from .modulation import lazy_chunks

# the host's classes: a host without Kandinsky 5 fails this import and the family is not registered
from comfy.ldm.kandinsky5 import model as _host  # noqa: E402
from comfy.ldm.kandinsky5.model import Kandinsky5, TransformerDecoderBlock  # noqa: E402


def _host_fuses() -> bool:
    """Whether the host adds its block residuals with one fused multiply-add (``apply_gate_sum``)."""
    block_names = TransformerDecoderBlock.forward.__code__.co_names
    helper = getattr(_host, "apply_gate_sum", None)
    return "apply_gate_sum" in block_names and helper is not None and "addcmul" in helper.__code__.co_names


def _u(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1)   # the host's get_shift_scale_gate: one row per sample, broadcast over tokens


def _lazy_mod(block: Any, time_embed: torch.Tensor):
    """``visual_modulation(time_embed)`` as nine (B, dim) chunks, in the host's order: (shift, scale,
    gate) of self-attention, cross-attention and feed-forward."""
    import torch.nn.functional as F

    mod = block.visual_modulation

    def full():
        return tuple(c for part in torch.chunk(mod(time_embed), 3, dim=-1) for c in torch.chunk(part, 3, dim=-1))

    return lazy_chunks(full, mod.out_layer, lambda: F.silu(time_embed), time_embed, 9)


class Kandinsky5BlockForward(ChainedForward):
    """Replacement of one decoder block's ``forward`` (what was there before when no run of ours is active).
    ``fused``: the host adds the residuals with ``addcmul`` (:func:`_host_fuses`)."""

    def __init__(self, block: Any, index: int, owner: Any, prev: Any = None, fused: bool = True) -> None:
        super().__init__(block, index, owner, prev)
        self.fused = fused

    @outside_compile
    def __call__(self, visual_embed, text_embed, time_embed, freqs, transformer_options={}, **kwargs):
        run = active_run(self.owner)
        if run is None:
            return self.call_prev(visual_embed, text_embed, time_embed, freqs,
                                  transformer_options=transformer_options, **kwargs)
        if self.prev is not None or kwargs:  # another pack's forward, or a call this adapter does not know
            return self.prev_as_branch(run, visual_embed, lambda h: self.call_prev(
                h, text_embed, time_embed, freqs, transformer_options=transformer_options, **kwargs))
        block, to = self.block, transformer_options
        m = _lazy_mod(block, time_embed)
        norm = _host.apply_scale_shift_norm
        fused = self.fused
        return run.run_block(self.index, visual_embed, (
            Branch("self_attn", lambda h: block.self_attention(
                norm(block.self_attention_norm, h, _u(m[1]), _u(m[0])), freqs, transformer_options=to),
                m.lazy_gate(2, _u), False, fused=fused),
            Branch("cross", lambda h: block.cross_attention(
                norm(block.cross_attention_norm, h, _u(m[4]), _u(m[3])), text_embed, transformer_options=to),
                m.lazy_gate(5, _u), True, fused=fused),
            Branch("ffn", lambda h: block.feed_forward(norm(block.feed_forward_norm, h, _u(m[7]), _u(m[6]))),
                   m.lazy_gate(8, _u), True, fused=fused),
        ))


class Kandinsky5Adapter(FamilyAdapter):
    family = "kandinsky5"
    selective_support = "full (cross-attention and feed-forward recompute top-k tokens; self-attention reused)"

    def __init__(self, diffusion_model: Any, family: str = "kandinsky5") -> None:
        super().__init__(diffusion_model)
        self.family = family
        self.num_blocks = len(diffusion_model.visual_transformer_blocks)
        self.patch_size = tuple(int(p) for p in diffusion_model.patch_size)

    def install(self, model_patcher: Any, owner: Any) -> None:
        fused = _host_fuses()
        for i, block in enumerate(self.dm.visual_transformer_blocks):
            install_forward_patch(model_patcher, f"diffusion_model.visual_transformer_blocks.{i}.forward",
                                  lambda prev, b=block, i=i: Kandinsky5BlockForward(b, i, owner, prev, fused))

    def modulation_layers(self) -> dict[str, Any]:
        return {f"visual_transformer_blocks.{i}.visual_modulation.out_layer": b.visual_modulation.out_layer
                for i, b in enumerate(self.dm.visual_transformer_blocks)}

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """One stream of visual tokens (the prompt's encoder blocks are not cached), three branches per
        decoder block, ``model_dim`` wide."""
        from ...procache_core.memory import single_stream_layout

        hw = self.grid_hw(x_shape)
        return single_stream_layout(self.num_blocks, hw[0] * hw[1], int(self.dm.model_dim), 3) if hw else None

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        """Token grid (frames x rows stacked, columns): the host pads the latent to whole patches and
        flattens (T, H, W) in that order; an image latent (B, C, H, W) is one frame."""
        if len(x_shape) == 4:
            t, h, w = 1, x_shape[2], x_shape[3]
        elif len(x_shape) == 5:
            t, h, w = x_shape[2], x_shape[3], x_shape[4]
        else:
            return None
        pt, ph, pw = self.patch_size
        return (-(-t // pt) * -(-h // ph), -(-w // pw))


def variant(model_config: Any) -> str:
    """Family name from the host's model config class: the image model, else the video model."""
    return "kandinsky5_image" if type(model_config).__name__ == "Kandinsky5Image" else "kandinsky5"


def _is_kandinsky5(dm: Any) -> bool:
    return isinstance(dm, Kandinsky5) and len(dm.visual_transformer_blocks) > 0 and \
        all(type(b) is TransformerDecoderBlock for b in dm.visual_transformer_blocks)


registry.register("kandinsky5", "Kandinsky 5 (video)",
                  lambda dm, cfg: _is_kandinsky5(dm) and variant(cfg) == "kandinsky5",
                  lambda dm, name: Kandinsky5Adapter(dm, name), preset="wan-30-balanced",
                  selective="cross-attention, feed-forward")
registry.register("kandinsky5_image", "Kandinsky 5 (image)",
                  lambda dm, cfg: _is_kandinsky5(dm) and variant(cfg) == "kandinsky5_image",
                  lambda dm, name: Kandinsky5Adapter(dm, name), preset="flux-28-balanced",
                  selective="cross-attention, feed-forward")
