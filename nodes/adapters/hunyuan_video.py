"""HunyuanVideo 1.0 / 1.5 and HunyuanImage 2.1 (``comfy.ldm.hunyuan_video.model.HunyuanVideo``).

The host builds these from Flux.1's blocks (``DoubleStreamBlock`` with ``flipped_img_txt=True``, image
tokens first in the joint attention, and ``SingleStreamBlock``), patched here with ``dit`` replace
patches ``("double_block", i)`` / ``("single_block", i)``. The host's arguments differ from Flux.1's:
the mask is ``attention_mask`` and image-to-video token replacement passes ``modulation_dims`` (token
ranges that take different adaLN rows: the first frame uses the ``guiding_frame_index`` embedding).

* Double blocks run as two engine blocks (image stream ``2i``, text stream ``2i+1``), branches ``attn``
  (the stream's projection of the joint attention, computed once, lazily) and ``mlp``. The MLP is
  token-local, so selective steps recompute it for the top-k tokens, unless ``modulation_dims`` is set
  (its shift/scale depend on the token range; then it is reused on selective steps).
* Single blocks are one fused ``attn_mlp`` branch (``linear2(cat(attn, mlp))``), reused on selective steps.

The block maths is Flux's (``flux.FluxDoubleBlock`` / ``FluxSingleBlock``): the same host layers, and the
same reading of what differs between hosts (joint-attention order, in-block ``attn1_patch`` /
``attn1_output_patch`` from ComfyUI 0.14 on, ``block_index`` / ``total_blocks`` / ``block_type``).

Arithmetic: the host's ``x += apply_mod(out, gate, None, dims)`` is ``x + out * gate`` with the gate row
of each token range, which the engine computes as ``x + G * out`` with ``G`` the same rows laid out per
token, so an all-FULL schedule is bitwise equal. adaLN is lazy: reused blocks evaluate only the gate
rows of plain host ``Modulation`` linears.
"""
from __future__ import annotations

from typing import Any

from . import FamilyAdapter, install_dit_replace
from .registry import register
from .flux import FluxDoubleBlock, FluxSingleBlock


class HunyuanDoubleBlock(FluxDoubleBlock):
    """Flux's double block; the host passes ``attention_mask`` and ``modulation_dims_img/_txt`` in the args."""


class HunyuanSingleBlock(FluxSingleBlock):
    keeps_attention = False  # the cache layout keeps no attention half (reused whole on selective steps)


def hunyuan_variant(model_config: Any) -> str:
    """Family name from the host's model config class: 1.0 (and its I2V variants), 1.5, Image 2.1."""
    name = type(model_config).__name__ if model_config is not None else ""
    if name.startswith("HunyuanVideo15"):
        return "hunyuan_video15"
    if name.startswith("HunyuanImage21"):
        return "hunyuan_image21"
    return "hunyuan_video"


class HunyuanVideoAdapter(FamilyAdapter):
    family = "hunyuan_video"
    selective_support = "partial (double-block MLPs recompute top-k tokens; single blocks reuse on selective steps)"

    def __init__(self, diffusion_model: Any, family: str = "hunyuan_video") -> None:
        super().__init__(diffusion_model)
        self.family = family
        self.n_double = len(diffusion_model.double_blocks)
        self.n_single = len(diffusion_model.single_blocks)
        self.single_offset = 2 * self.n_double
        self.num_blocks = 2 * self.n_double + self.n_single
        p = getattr(diffusion_model, "patch_size", (1, 2, 2))
        p = tuple(int(v) for v in p) if isinstance(p, (list, tuple)) else (int(p), int(p))
        self.patch_size = (1,) * (3 - len(p)) + p  # HunyuanImage 2.1 patches in 2-D

    def lanes(self) -> list | None:
        return ["img", "txt"] * self.n_double + ["joint"] * self.n_single

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Flux-like layout. Text stream: the prompt tokens, plus ByT5 glyph tokens (1.5 / Image 2.1) and
        vision tokens (1.5 image-to-video) when the model has those inputs; single blocks keep no
        attention half (reused whole on selective steps)."""
        from ...procache_core.memory import double_single_layout
        from . import cond_tokens

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        txt = context_tokens or 256
        if getattr(self.dm, "byt5_in", None) is not None:
            txt += cond_tokens(cond, "conditioning_byt5small")
        if getattr(self.dm, "vision_in", None) is not None:
            txt += cond_tokens(cond, "clip_vision_output", "last_hidden_state")
        return double_single_layout(self.n_double, self.n_single, hw[0] * hw[1], txt, int(self.dm.hidden_size),
                                    single_aux=False)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.n_double):
            install_dit_replace(model_patcher, HunyuanDoubleBlock(self, i, owner), "double_block", i)
        for i in range(self.n_single):
            install_dit_replace(model_patcher, HunyuanSingleBlock(self, i, owner), "single_block", i)

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        pt, ph, pw = self.patch_size
        if len(x_shape) == 5:
            t = (x_shape[2] + pt - 1) // pt
            return (t * ((x_shape[3] + ph - 1) // ph), (x_shape[4] + pw - 1) // pw)
        if len(x_shape) == 4:
            return ((x_shape[2] + ph - 1) // ph, (x_shape[3] + pw - 1) // pw)
        return None


def _is_hunyuan(variant: str):
    def detect(dm: Any, model_config: Any) -> bool:
        from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
        from comfy.ldm.hunyuan_video.model import HunyuanVideo

        return isinstance(dm, HunyuanVideo) and \
            all(type(b) is DoubleStreamBlock and b.modulation for b in dm.double_blocks) and \
            all(type(b) is SingleStreamBlock and b.modulation is not None for b in dm.single_blocks) and \
            hunyuan_variant(model_config) == variant
    return detect


HUNYUAN_SELECTIVE = "double-block MLPs, reused with I2V token replacement"
register("hunyuan_video", "HunyuanVideo 1.0", _is_hunyuan("hunyuan_video"), HunyuanVideoAdapter,
         preset="wan-30-balanced", selective=HUNYUAN_SELECTIVE)
register("hunyuan_video15", "HunyuanVideo 1.5", _is_hunyuan("hunyuan_video15"), HunyuanVideoAdapter,
         preset="wan-30-balanced", selective=HUNYUAN_SELECTIVE)
register("hunyuan_image21", "HunyuanImage 2.1", _is_hunyuan("hunyuan_image21"), HunyuanVideoAdapter,
         preset="flux-28-balanced", selective=HUNYUAN_SELECTIVE)
