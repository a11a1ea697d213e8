"""Flux.1 (``comfy.ldm.flux.model.Flux`` with the host's Double/SingleStreamBlock).

Patched with ``dit`` replace patches ``("double_block", i)`` and ``("single_block", i)``.

* A double block has two residual streams (image, text) sharing one joint attention. It is run as two
  engine blocks (image stream ``2i``, text stream ``2i+1``) with branches ``attn`` (the stream's
  output projection of the joint attention, gated by ``mod1.gate``; the joint attention is computed
  lazily, once, only when some stream needs it) and ``mlp`` (gated by ``mod2.gate``; token-local, so
  selective steps recompute it for the top-k tokens of that stream).
* A single block fuses attention and MLP in ``linear2(cat(attn, mlp))``: one branch ``attn_mlp``, gated
  by ``mod.gate``. Only its attention input mixes tokens, so in the deep blocks the attention output is
  kept as the branch's token-mixing half (``Branch.aux``) and selective steps recompute the MLP half for
  the chosen tokens (``linear1``'s MLP rows, ``mlp_act``, ``linear2``) with the kept attention rows
  (``Branch.partial``). ``linear1`` is sliced to its MLP rows when it is a plain host Linear; a cast,
  patched or quantized ``linear1`` is evaluated whole for those tokens (one log line).

Engine blocks: ``2 * n_double + n_single``, so the stats' block evaluations count a double block
twice per model evaluation (2 double + 2 single blocks, 4 steps: 24 block evaluations, not 16).

Modulation is lazy (``nodes/adapters/modulation.py``): a reused block evaluates only the gate rows
of its ``Modulation`` linear; computed blocks call the host's ``Modulation`` itself.

Arithmetic is the host's (``x + gate * out`` is what its ``x += out * gate`` computes), so an
all-FULL schedule reproduces the unpatched model.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ...procache_core.modulation import LazyModulation
from . import DitBlockReplace, FamilyAdapter, install_dit_replace, log
from .compiled import compiled
from .modulation import lazy_chunks, row_evaluator


def _img_first(block) -> bool:
    """Joint-attention order of a double block: image tokens first (HunyuanVideo's blocks before ComfyUI
    0.14, ``flipped_img_txt=True``) or text first (Flux, and every double block from 0.14 on, which has no
    ``flipped_img_txt`` attribute any more)."""
    return bool(getattr(block, "flipped_img_txt", False))


def _flat(mods) -> list:
    """(ModulationOut, ModulationOut | None) -> [shift, scale, gate, (shift, scale, gate)]."""
    return [t for m in mods if m is not None for t in (m.shift, m.scale, m.gate)]


def _lazy_mod(modulation, vec) -> LazyModulation:
    """The host's ``Modulation(vec)`` (full, exact) with gate chunks from their weight rows alone."""
    import torch.nn.functional as F

    v = vec[:, None, :] if vec.ndim == 2 else vec
    return lazy_chunks(lambda: _flat(modulation(vec)), modulation.lin, lambda: F.silu(v), v,
                       modulation.multiplier)


def _qkv(attn_mod, x, shift, scale, norm, num_heads, dims=None):
    """q, k, v of one stream; ``dims`` is the host's per-token modulation layout (HunyuanVideo I2V)."""
    from comfy.ldm.flux.layers import apply_mod

    h = apply_mod(norm(x), (1 + scale), shift, dims)
    qkv = attn_mod.qkv(h)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn_mod.norm(q, k, v)
    return q, k, v


# Pure branch maths (block module, tensors in; tensors out): what ``compiled`` hands to torch.compile
# when the host compiled the model. No ProCache state in here.
# The host's attention itself (rope + optimized attention) runs eagerly between the graphs: its CPU
# sub-quadratic path reads the free memory (dynamo would guard on that number), and it needs the run's
# transformer_options (a tensor like ``sample_sigmas`` in there would be guarded on, per step count).

def double_qkv(block, img, txt, ishift, iscale, tshift, tscale):
    """q, k, v of the joint attention of a double block (both streams, in the block's order)."""
    iq, ik, iv = _qkv(block.img_attn, img, ishift, iscale, block.img_norm1, block.num_heads)
    tq, tk, tv = _qkv(block.txt_attn, txt, tshift, tscale, block.txt_norm1, block.num_heads)
    if _img_first(block):
        return torch.cat((iq, tq), dim=2), torch.cat((ik, tk), dim=2), torch.cat((iv, tv), dim=2)
    return torch.cat((tq, iq), dim=2), torch.cat((tk, ik), dim=2), torch.cat((tv, iv), dim=2)


def stream_mlp(norm, mlp, h, shift, scale):
    """One stream's MLP branch output (any subset of its tokens), before gating."""
    from comfy.ldm.flux.layers import apply_mod

    return mlp(apply_mod(norm(h), (1 + scale), shift, None))


def single_pre(block, h, shift, scale):
    """A single block's q, k, v and MLP input (``linear1`` of the modulated stream)."""
    from comfy.ldm.flux.layers import apply_mod

    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(h), (1 + scale), shift, None)),
                           [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    return q, k, v, mlp


def single_post(block, attn, mlp):
    """A single block's fused branch output before gating: ``linear2(cat(attn, act(mlp)))``."""
    return block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))


class FluxDoubleBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.flux.math import attention

        block = self.adapter.dm.double_blocks[self.index]
        img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
        attn_mask, to = args.get("attn_mask"), args.get("transformer_options") or {}
        if block.modulation:
            im, tm = _lazy_mod(block.img_mod, vec), _lazy_mod(block.txt_mod, vec)
        else:
            im, tm = (LazyModulation(lambda m=m: _flat(m)) for m in vec)
        img_in, txt_in = img, txt
        joint: dict = {}
        kw = getattr(self.adapter, "block_compile", None)
        qkv_fn, compiled_mlp = compiled(double_qkv, kw), compiled(stream_mlp, kw)

        def attn_out() -> dict:
            if not joint:
                q, k, v = qkv_fn(block, img_in, txt_in, im[0], im[1], tm[0], tm[1])
                a = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=to)
                n = img_in.shape[1] if _img_first(block) else txt_in.shape[1]
                ia, ta = (a[:, :n], a[:, n:]) if _img_first(block) else (a[:, n:], a[:, :n])
                joint["img"], joint["txt"] = block.img_attn.proj(ia), block.txt_attn.proj(ta)
            return joint

        def mlp_fn(norm, mlp, h, shift, scale):
            if kw:  # token count varies (both streams, selective rows): one dynamic graph, no recompiles
                torch._dynamo.maybe_mark_dynamic(h, 1)
            return compiled_mlp(norm, mlp, h, shift, scale)

        img = run.run_block(2 * self.index, img, (
            Branch("attn", lambda h: attn_out()["img"], im.lazy_gate(2), False),
            Branch("mlp", lambda h: mlp_fn(block.img_norm2, block.img_mlp, h, im[3], im[4]), im.lazy_gate(5), True),
        ))
        txt = run.run_block(2 * self.index + 1, txt, (
            Branch("attn", lambda h: attn_out()["txt"], tm.lazy_gate(2), False),
            Branch("mlp", lambda h: mlp_fn(block.txt_norm2, block.txt_mlp, h, tm[3], tm[4]), tm.lazy_gate(5), True),
        ))
        joint.clear()
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": img, "txt": txt}


class FluxSingleBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.flux.layers import apply_mod
        from comfy.ldm.flux.math import attention

        block = self.adapter.dm.single_blocks[self.index]
        x, vec, pe = args["img"], args["vec"], args["pe"]
        attn_mask, to = args.get("attn_mask"), args.get("transformer_options") or {}
        mod = _lazy_mod(block.modulation, vec) if block.modulation else LazyModulation(lambda: _flat((vec, None)))

        kept: dict = {}

        kw = getattr(self.adapter, "block_compile", None)
        pre_fn, post_fn = compiled(single_pre, kw), compiled(single_post, kw)

        def compute(h):
            q, k, v, mlp = pre_fn(block, h, mod[0], mod[1])
            attn = kept["attn"] = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=to)
            return post_fn(block, attn, mlp)

        def partial(rows, attn_rows):
            h = apply_mod(block.pre_norm(rows), (1 + mod[1]), mod[0], None)
            width = 3 * block.hidden_size
            sliced = row_evaluator(block.linear1, lambda: h, h)
            if sliced is not None:
                mlp = sliced(width, width + block.mlp_hidden_dim_first)
            else:
                self.adapter.note_unsliced()
                mlp = block.linear1(h)[..., width:]
            return block.linear2(torch.cat((attn_rows.to(mlp.dtype), block.mlp_act(mlp)), 2))

        x = run.run_block(self.adapter.single_offset + self.index, x, (
            Branch("attn_mlp", compute, mod.lazy_gate(2), False, aux=lambda: kept.pop("attn", None), partial=partial),))
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": x}


class FluxAdapter(FamilyAdapter):
    family = "flux"
    compiles_branches = True  # double/single branch maths go through adapters/compiled.py
    selective_support = ("full (double-block MLPs and the MLP half of single blocks recompute top-k tokens; "
                         "attention reused)")

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.n_double = len(diffusion_model.double_blocks)
        self.n_single = len(diffusion_model.single_blocks)
        self.single_offset = 2 * self.n_double
        self.num_blocks = 2 * self.n_double + self.n_single
        self.patch_size = int(getattr(diffusion_model, "patch_size", 2))
        self._noted = False

    def note_unsliced(self) -> None:
        if not self._noted:
            self._noted = True
            log.info("ProCache: Flux single-block linear1 is cast, patched or quantized; selective steps evaluate "
                     "its full width (attention rows included) for the chosen tokens.")

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.n_double):
            install_dit_replace(model_patcher, FluxDoubleBlock(self, i, owner), "double_block", i)
        for i in range(self.n_single):
            install_dit_replace(model_patcher, FluxSingleBlock(self, i, owner), "single_block", i)

    def lanes(self) -> list | None:
        return ["img", "txt"] * self.n_double + ["joint"] * self.n_single

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        from ...procache_core.memory import double_single_layout
        from . import ref_latent_tokens

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        img = hw[0] * hw[1] + ref_latent_tokens(cond, self.patch_size)  # Kontext / Flux.2 reference images
        return double_single_layout(self.n_double, self.n_single, img, context_tokens or 512,
                                    int(self.dm.hidden_size))

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 4:
            return None
        p = self.patch_size
        return ((x_shape[2] + p // 2) // p, (x_shape[3] + p // 2) // p)

    def modulation_layers(self) -> dict[str, Any]:
        out = {}
        for i, b in enumerate(self.dm.double_blocks):
            if b.modulation:  # Flux.2 / Chroma blocks take their modulation from outside the block
                out[f"double_blocks.{i}.img_mod.lin"] = b.img_mod.lin
                out[f"double_blocks.{i}.txt_mod.lin"] = b.txt_mod.lin
        for i, b in enumerate(self.dm.single_blocks):
            if b.modulation:
                out[f"single_blocks.{i}.modulation.lin"] = b.modulation.lin
        return out
