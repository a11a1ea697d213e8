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

Arithmetic: the host's ``x += apply_mod(out, gate, None, dims)`` is ``x + out * gate`` with the gate row
of each token range, which the engine computes as ``x + G * out`` with ``G`` the same rows laid out per
token, so an all-FULL schedule is bitwise equal. adaLN is lazy: reused blocks evaluate only the gate
rows of plain host ``Modulation`` linears.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ...procache_core.engine import Branch
from . import DitBlockReplace, FamilyAdapter, install_dit_replace
from .flux import _img_first, _lazy_mod, _qkv  # the same host Modulation and q/k/v layout as Flux


def _gate_layout(dims: list | None, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gate chunk -> tensor broadcasting over (B, n, C) with each token range's row (``apply_mod``)."""
    if dims is None:
        return lambda g: g

    def layout(g: torch.Tensor) -> torch.Tensor:
        parts = []
        for start, stop, row in dims:
            stop = n if stop is None else stop
            parts.append(g[:, row:row + 1].expand(g.shape[0], stop - start, g.shape[-1]))
        return torch.cat(parts, dim=1)
    return layout


class HunyuanDoubleBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.flux.layers import apply_mod
        from comfy.ldm.flux.math import attention

        block = self.adapter.dm.double_blocks[self.index]
        img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
        mask, to = args.get("attention_mask"), args.get("transformer_options") or {}
        dims_i, dims_t = args.get("modulation_dims_img"), args.get("modulation_dims_txt")
        im, tm = _lazy_mod(block.img_mod, vec), _lazy_mod(block.txt_mod, vec)
        img_in, txt_in = img, txt
        joint: dict = {}

        def attn_out() -> dict:
            if not joint:
                iq, ik, iv = _qkv(block.img_attn, img_in, im[0], im[1], block.img_norm1, block.num_heads, dims_i)
                tq, tk, tv = _qkv(block.txt_attn, txt_in, tm[0], tm[1], block.txt_norm1, block.num_heads, dims_t)
                if _img_first(block):
                    a = attention(torch.cat((iq, tq), dim=2), torch.cat((ik, tk), dim=2), torch.cat((iv, tv), dim=2),
                                  pe=pe, mask=mask, transformer_options=to)
                    joint["img"], joint["txt"] = a[:, : img_in.shape[1]], a[:, img_in.shape[1]:]
                else:
                    a = attention(torch.cat((tq, iq), dim=2), torch.cat((tk, ik), dim=2), torch.cat((tv, iv), dim=2),
                                  pe=pe, mask=mask, transformer_options=to)
                    joint["txt"], joint["img"] = a[:, : txt_in.shape[1]], a[:, txt_in.shape[1]:]
            return joint

        gi, gt = _gate_layout(dims_i, img.shape[1]), _gate_layout(dims_t, txt.shape[1])
        img = run.run_block(2 * self.index, img, (
            Branch("attn", lambda h: block.img_attn.proj(attn_out()["img"]), im.lazy_gate(2, gi), False),
            Branch("mlp", lambda h: block.img_mlp(apply_mod(block.img_norm2(h), (1 + im[4]), im[3], dims_i)),
                   im.lazy_gate(5, gi), dims_i is None),
        ))
        txt = run.run_block(2 * self.index + 1, txt, (
            Branch("attn", lambda h: block.txt_attn.proj(attn_out()["txt"]), tm.lazy_gate(2, gt), False),
            Branch("mlp", lambda h: block.txt_mlp(apply_mod(block.txt_norm2(h), (1 + tm[4]), tm[3], dims_t)),
                   tm.lazy_gate(5, gt), dims_t is None),
        ))
        joint.clear()
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": img, "txt": txt}


class HunyuanSingleBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.flux.layers import apply_mod
        from comfy.ldm.flux.math import attention

        block = self.adapter.dm.single_blocks[self.index]
        x, vec, pe = args["img"], args["vec"], args["pe"]
        mask, to, dims = args.get("attention_mask"), args.get("transformer_options") or {}, args.get("modulation_dims")
        mod = _lazy_mod(block.modulation, vec)

        def compute(h):
            qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(h), (1 + mod[1]), mod[0], dims)),
                                   [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
            q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k = block.norm(q, k, v)
            attn = attention(q, k, v, pe=pe, mask=mask, transformer_options=to)
            return block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))

        x = run.run_block(self.adapter.single_offset + self.index, x,
                          (Branch("attn_mlp", compute, mod.lazy_gate(2, _gate_layout(dims, x.shape[1])), False),))
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": x}


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
