"""SD3 / SD3.5 (``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT``), patched per joint block with
``dit`` replace patches ``("double_block", i)``.

A joint block has an image stream (``x_block``) and a text stream (``context_block``) sharing one
joint attention; like Flux they run as two engine blocks (text ``2i``, image ``2i+1``: the image stream
is the deeper one, so the deepest engine block is the last image stream, which has an MLP to recompute,
and not the last text stream, which the host never runs) with branches
``attn`` (``attn.post_attention`` of the joint attention, gated by ``gate_msa``; computed lazily once)
and ``mlp`` (gated by ``gate_mlp``; token-local). The last joint block's text stream is ``pre_only``
(no output) and is not run. SD3.5 Medium's image blocks with an extra self-attention
(``x_block_self_attn``) get a third branch ``attn2``; the host sums those two attention outputs with
``torch.stack(...).sum``, so for those blocks an all-FULL schedule matches the unpatched model up to
float rounding rather than bit for bit. Everything else uses the host's exact arithmetic.
adaLN is lazy (``nodes/adapters/modulation.py``): a reused stream evaluates only the gate rows of its
``adaLN_modulation`` linear; computed streams run the host's expression.
"""
from __future__ import annotations

from typing import Any

import torch

from ...procache_core.engine import Branch
from ...procache_core.modulation import LazyModulation
from . import DitBlockReplace, FamilyAdapter, install_dit_replace
from .registry import register
from .modulation import lazy_chunks


_LAYOUTS = {  # chunk names of adaLN_modulation(c).chunk(n, dim=1), per DismantledBlock variant
    9: ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp", "shift_msa2", "scale_msa2",
        "gate_msa2"),
    6: ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp"),
    4: ("scale_msa", "gate_msa", "scale_mlp", "gate_mlp"),
    2: ("shift_msa", "scale_msa"),
    1: ("scale_msa",),
}


class _Mods:
    """adaLN terms of a DismantledBlock, as its pre_attention(_x) computes them, evaluated lazily.

    ``m[name]`` evaluates the block's own expression in full (None for terms the variant lacks);
    ``m.gate(name)`` is a Branch gate that a reused block evaluates from the gate rows alone.
    """

    def __init__(self, block, c) -> None:
        if block.x_block_self_attn:
            n = 9
        elif not block.pre_only:
            n = 4 if block.scale_mod_only else 6
        else:
            n = 1 if block.scale_mod_only else 2
        self.index = {name: i for i, name in enumerate(_LAYOUTS[n])}
        full = (lambda: (block.adaLN_modulation(c),)) if n == 1 else (lambda: block.adaLN_modulation(c).chunk(n, dim=1))
        act, lin = block.adaLN_modulation[0], block.adaLN_modulation[-1]
        self.mod = lazy_chunks(full, lin, lambda: act(c), c, n) if n > 1 else LazyModulation(full)

    def __getitem__(self, name: str):
        i = self.index.get(name)
        return None if i is None else self.mod[i]

    def gate(self, name: str):
        return self.mod.lazy_gate(self.index[name], _unsqueeze1)


def _unsqueeze1(t):
    return t.unsqueeze(1)


class SD3JointBlock(DitBlockReplace):
    def run_block(self, run: Any, args: dict) -> dict:
        import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

        jb = self.adapter.dm.joint_blocks[self.index]
        cb, xb = jb.context_block, jb.x_block
        x, context, c = args["img"], args["txt"], args["vec"]
        to = args.get("transformer_options") or {}
        cm, xm = _Mods(cb, c), _Mods(xb, c)
        x_in, ctx_in = x, context
        joint: dict = {}

        def attn_out() -> dict:
            if not joint:
                cq = cb.attn.pre_attention(mmdit.modulate(cb.norm1(ctx_in), cm["shift_msa"], cm["scale_msa"]))
                if xb.x_block_self_attn:
                    x_norm = xb.norm1(x_in)
                    xq = xb.attn.pre_attention(mmdit.modulate(x_norm, xm["shift_msa"], xm["scale_msa"]))
                    joint["qkv2"] = xb.attn2.pre_attention(mmdit.modulate(x_norm, xm["shift_msa2"], xm["scale_msa2"]))
                else:
                    xq = xb.attn.pre_attention(mmdit.modulate(xb.norm1(x_in), xm["shift_msa"], xm["scale_msa"]))
                qkv = tuple(torch.cat((cq[t], xq[t]), dim=1) for t in range(3))
                a = mmdit.optimized_attention(qkv[0], qkv[1], qkv[2], heads=xb.attn.num_heads, transformer_options=to)
                joint["ctx"], joint["x"] = a[:, : cq[0].shape[1]], a[:, cq[0].shape[1]:]
            return joint

        def attn2(h):
            q2 = attn_out()["qkv2"]
            return xb.attn2.post_attention(
                mmdit.optimized_attention(q2[0], q2[1], q2[2], heads=xb.attn2.num_heads, transformer_options=to))

        x_branches = [Branch("attn", lambda h: xb.attn.post_attention(attn_out()["x"]),
                             xm.gate("gate_msa"), False)]
        if xb.x_block_self_attn:
            x_branches.append(Branch("attn2", attn2, xm.gate("gate_msa2"), False))
        x_branches.append(Branch("mlp", lambda h: xb.mlp(mmdit.modulate(xb.norm2(h), xm["shift_mlp"], xm["scale_mlp"])),
                                 xm.gate("gate_mlp"), True))
        if not cb.pre_only:
            context = run.run_block(2 * self.index, context, (
                Branch("attn", lambda h: cb.attn.post_attention(attn_out()["ctx"]), cm.gate("gate_msa"), False),
                Branch("mlp", lambda h: cb.mlp(mmdit.modulate(cb.norm2(h), cm["shift_mlp"], cm["scale_mlp"])),
                       cm.gate("gate_mlp"), True),
            ))
        else:
            context = None
        x = run.run_block(2 * self.index + 1, x, x_branches)
        joint.clear()
        return {"txt": context, "img": x}


class SD3Adapter(FamilyAdapter):
    family = "sd3"
    selective_support = "partial (joint-block MLPs of both streams recompute top-k tokens; attention reused)"

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.n_joint = len(diffusion_model.joint_blocks)
        self.num_blocks = 2 * self.n_joint
        ps = diffusion_model.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.n_joint):
            install_dit_replace(model_patcher, SD3JointBlock(self, i, owner), "double_block", i)

    def lanes(self) -> list | None:
        # the last joint block's context half is never run (pre_only): its own lane, so the text lane
        # ends at a block that runs
        return ["img", "txt"] * (self.n_joint - 1) + ["img", "txt_unused"]

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        from ...procache_core.memory import BlockShape

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        width = int(self.dm.x_embedder.proj.out_channels)
        x_br = 3 if getattr(self.dm.joint_blocks[0].x_block, "x_block_self_attn", False) else 2
        out = []
        for i in range(self.n_joint):
            out.append(BlockShape(hw[0] * hw[1], width, x_br, "img"))
            last = i == self.n_joint - 1
            out.append(BlockShape(context_tokens or 333, width, 0 if last else 2, "txt_unused" if last else "txt"))
        return out

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 4:
            return None
        p = self.patch_size
        return ((x_shape[2] + p - 1) // p, (x_shape[3] + p - 1) // p)

    def modulation_layers(self) -> dict[str, Any]:
        out = {}
        for i, jb in enumerate(self.dm.joint_blocks):
            for side in ("x_block", "context_block"):
                out[f"joint_blocks.{i}.{side}.adaLN_modulation"] = getattr(jb, side).adaLN_modulation[-1]
        return out


def _is_sd3(dm: Any, model_config: Any) -> bool:
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return isinstance(dm, MMDiT)


register("sd3", "SD3 / SD3.5 (MMDiT)", _is_sd3, lambda dm, name: SD3Adapter(dm), preset="sd3-28-balanced",
         selective="MLPs")
