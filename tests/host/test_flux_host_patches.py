"""Other packs' and the host's own in-block patches on Flux-family blocks, with ProCache on top.

From ComfyUI 0.14 the host's ``DoubleStreamBlock`` / ``SingleStreamBlock`` apply
``transformer_options["patches"]`` (``attn1_patch`` around q/k/v, ``attn1_output_patch`` on the attention
output, ``img_slice`` in the double block's options), which the host's NAG and FluxKVCache nodes use;
FluxKVCache also switches Flux.2 to reference images at timestep zero (a two-row ``vec`` and
``modulation_dims`` the host only hands to its own block call). ProCache's Flux adapter must compute
what the host's block computes with all of that (nodes/adapters/flux.py).

* In process, every host: the ``block_type`` / ``block_index`` / ``total_blocks`` (and ``img_slice``) an
  in-block hook sees are the plain host run's. The hook is the attention override every host calls
  (``optimized_attention_override``) and, where the host's block applies them, ``attn1_patch`` /
  ``attn1_output_patch``; the all-FULL output is bitwise the plain one, a cached step calls no hook.
* In process, hosts with timestep-zero reference images: Flux.2 with a reference image is exact
  all-FULL and its blocks are the adapter's (not the host fallback).
* Server, hosts that have the nodes: the host's NAGuidance + FluxKVCache + ReferenceLatent on a tiny
  Flux.2 with ProCache: all-FULL equals the graph without ProCache bit for bit; a caching schedule
  runs, saves block evaluations and changes the output.
"""
from __future__ import annotations

import copy
import inspect
import re

import pytest
import torch

from _families import patched_run
from _inprocess import load_pack
from comfy_client import COMFY_DIR
from workflows import sample_and_save, sample_through_procache, saved_latent, stats_line, text_conditioning

load_pack()
import test_adapters_pixart_flux_sd3_wan as TAF  # noqa: E402  (tiny Flux.1 and its inputs)
import test_adapters_qwen_flux2_chroma_lumina_hunyuan_ltxv_cosmos_hidream as TAM  # noqa: E402  (Flux.2, Chroma, HunyuanVideo builders and inputs)
from procache_pack.nodes.adapters import flux as F  # noqa: E402


class Hooks:
    """Records what in-block hooks see: the attention override (every host) and, where the host's
    Flux blocks apply them, attn1_patch / attn1_output_patch (identity patches)."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    @staticmethod
    def _where(to: dict) -> tuple:
        return to.get("block_type"), to.get("block_index"), to.get("total_blocks")

    def override(self, func, *args, **kwargs):
        self.seen.append(("attention",) + self._where(kwargs.get("transformer_options") or {}))
        return func(*args, **kwargs)

    def attn1(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        self.seen.append(("attn1_patch",) + self._where(extra_options) + (tuple(extra_options.get("img_slice") or ()),
                                                                          tuple(q.shape)))
        return {}

    def attn1_out(self, attn, extra_options):
        self.seen.append(("attn1_output_patch",) + self._where(extra_options)
                         + (tuple(extra_options.get("img_slice") or ()),))
        return attn

    def options(self) -> dict:
        return {"optimized_attention_override": self.override,
                "patches": {"attn1_patch": [self.attn1], "attn1_output_patch": [self.attn1_out]}}


NETS = {"flux": (lambda: TAF.tiny_flux(), TAF.call),
        "flux2": (lambda: TAM.NF.tiny_flux2_net(seed=1)[0].eval(), TAM.call),
        "chroma": (lambda: TAM.NF.tiny_chroma_net(seed=1)[0].eval(), TAM.call),
        "hunyuan_video": (lambda: TAM.NF.tiny_hunyuan_video_net(seed=1)[0].eval(), TAM.call)}


@pytest.mark.parametrize("family", sorted(NETS))
def test_in_block_hooks_see_the_plain_runs_block_options(family):
    build, call = NETS[family]
    dm = build()
    plain_hooks = Hooks()
    ref = call(family, dm, plain_hooks.options())
    plain = plain_hooks.seen
    kinds = {s[0] for s in plain}
    assert "attention" in kinds, plain  # the override is called by every host's Flux attention
    # the host's blocks apply the in-block patches exactly where the adapter says they do
    assert ("attn1_output_patch" in kinds) == bool(F.reads_patches(dm.double_blocks[0])), kinds
    n_double, n_single = len(dm.double_blocks), len(dm.single_blocks)
    # (HunyuanVideo's token refiner attends outside the blocks: no block options there)
    assert {s[1:4] for s in plain if s[0] == "attention" and s[1] is not None} == \
        {("double", i, n_double) for i in range(n_double)} | {("single", i, n_single) for i in range(n_single)}

    hooks = Hooks()
    seen_per_step: list[list] = []

    def run(fam, _dm, to):
        hooks.seen = []
        out = call(fam, dm, {**to, **hooks.options()})
        seen_per_step.append(hooks.seen)
        return out

    outs, _ = patched_run(family, dm, "FFC", run)
    assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref), family
    assert seen_per_step[0] == plain and seen_per_step[1] == plain
    # a cached step computes no block: no attention and no patch inside one
    assert seen_per_step[2] == [s for s in plain if s[1] is None]


def _has_timestep_zero_refs() -> bool:
    from comfy.ldm.flux.model import Flux

    return "timestep_zero_index" in inspect.signature(Flux.forward_orig).parameters


def test_flux2_reference_image_at_timestep_zero_is_exact():
    """FluxKVCache's reference layout (``index_timestep_zero``): the image blocks get a two-row ``vec``
    and per-range modulation only the host's block call carries; the adapter reads it from there."""
    if not _has_timestep_zero_refs():
        pytest.skip("this host's Flux.forward_orig has no timestep_zero_index (reference images at timestep zero)")
    dm = TAM.NF.tiny_flux2_net(seed=1)[0].eval()
    g = torch.Generator().manual_seed(3)
    x, refs = torch.randn(2, 128, 8, 8, generator=g), [torch.randn(2, 128, 4, 6, generator=g)]
    ctx = torch.nn.functional.pad(torch.randn(2, 6, 48, generator=g), (0, 0, 506, 0))

    def call(_fam, _dm, to):
        with torch.no_grad():
            # no distilled guidance: the host doubles the timestep batch for the reference rows, not the
            # guidance one (Flux.2 klein, which FluxKVCache is for, has none)
            return dm(x, torch.tensor([0.5, 0.5]), ctx, guidance=None, ref_latents=refs,
                      ref_latents_method="index_timestep_zero", transformer_options=to)

    ref = call("flux2", dm, {})
    outs, run = patched_run("flux2", dm, "FFC", call)
    assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref)
    assert not run.adapter._host_noted, run.adapter._host_noted  # the adapter's blocks, no host fallback
    assert run.stats.block_eval_fraction < 1.0  # the cached step reused the blocks

    # another pack's replace patch installed over ProCache's, handing it its own original_block wrapper:
    # the ranges cannot be read from there, so those blocks run as the host's own (still exact)
    def install(fp, do_install):
        do_install()
        dit = fp.model_options["transformer_options"]["patches_replace"]["dit"]
        for key, ours in list(dit.items()):
            dit[key] = lambda args, extra, ours=ours: ours(args, {"original_block": lambda a: extra["original_block"](a)})

    outs, run = patched_run("flux2", dm, "FF", call, install=install)
    assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref)
    assert run.adapter._host_noted, "the two-row blocks should have run as the host's"


# -- the host's NAG and FluxKVCache nodes on a tiny Flux.2 ------------------------------------------------

def _host_node(file: str, node_id: str) -> bool:
    path = COMFY_DIR / "comfy_extras" / file
    return path.exists() and f'node_id="{node_id}"' in path.read_text()


NAG_AND_KV = _host_node("nodes_nag.py", "NAGuidance") and _host_node("nodes_flux.py", "FluxKVCache")
NO_NAG_KV = "this host has no NAGuidance / FluxKVCache node in comfy_extras"


@pytest.mark.skipif(not NAG_AND_KV, reason=NO_NAG_KV)
def test_host_nag_and_flux_kv_cache_patches_in_process():
    """The patches the host's NAGuidance and FluxKVCache nodes put on a real ModelPatcher of a tiny Flux.2,
    driven step by step on a positive + negative batch with a reference image: the KV cache stores the
    reference K/V on the first call and drops the reference tokens after it (a stateful attn1_patch and
    a post_input patch), NAG rewrites the image rows of every attention output. All-FULL equals the
    plain run step for step bit for bit; a cached step reuses the blocks and changes the output."""
    from comfy_extras.nodes_flux import FluxKVCache
    from comfy_extras.nodes_nag import NAGuidance

    model = TAM.NF.ProCacheTestTinyDiT.execute(family="flux2", seed=4, context_dim=48).result[0]
    model = NAGuidance.execute(model, nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5).result[0]
    model = FluxKVCache.execute(model).result[0]
    to_host = model.model_options["transformer_options"]
    kv = to_host["patches"]["attn1_patch"][0]
    assert to_host["patches"]["attn1_output_patch"] and to_host["patches"]["post_input"]
    dm = model.model.diffusion_model
    # FluxKVCache's object patch (applied when the host loads the model; passed directly here)
    ref_method = model.object_patches["diffusion_model.params.default_ref_method"]
    assert ref_method == "index_timestep_zero"
    g = torch.Generator().manual_seed(3)
    x, ref_lat = torch.randn(2, 128, 8, 8, generator=g), [torch.randn(2, 128, 4, 6, generator=g)]
    ctx = torch.nn.functional.pad(torch.randn(2, 6, 48, generator=g), (0, 0, 506, 0))
    step = {"i": 0}

    def call(_fam, _dm, to):
        i = step["i"]
        step["i"] += 1
        opts = {"patches": to_host["patches"], **to, "cond_or_uncond": [0, 1]}
        with torch.no_grad():  # the latent moves a little per step, as in sampling
            return dm(x * (1.0 - 0.1 * i), torch.tensor([0.9 - 0.2 * i] * 2), ctx, guidance=None,
                      ref_latents=ref_lat, ref_latents_method=ref_method, transformer_options=opts)

    def fresh():
        kv.cleanup()
        step["i"] = 0

    fresh()
    plain = [call("flux2", dm, {}) for _ in range(3)]
    assert len(kv.cache) == len(dm.double_blocks) + len(dm.single_blocks)  # the KV cache was used
    fresh()
    assert not torch.equal(call("flux2", dm, {"patches": {}}), plain[0])  # the nodes' patches act
    fresh()
    outs, run = patched_run("flux2", dm, "FFF", call)
    for i, (o, r) in enumerate(zip(outs, plain)):
        assert torch.equal(o, r), f"step {i}: max diff {(o - r).abs().max().item()}"
    assert not run.adapter._host_noted, run.adapter._host_noted
    fresh()
    outs, run = patched_run("flux2", dm, "FFC", call)
    assert torch.equal(outs[0], plain[0]) and torch.equal(outs[1], plain[1])
    assert torch.isfinite(outs[2]).all() and not torch.equal(outs[2], plain[2])
    assert run.stats.block_eval_fraction < 1.0
    fresh()


def nag_kv_prompt(prefix: str, procache: dict | None = None) -> dict:
    """Tiny Flux.2 -> NAGuidance -> FluxKVCache, a reference latent on both prompts, CFG 2 (NAG needs the
    positive and negative prompt in one batch), 4 euler steps at 64x64."""
    p = {
        "model": {"class_type": "ProCacheTestTinyDiT", "inputs": {"family": "flux2", "seed": 4, "context_dim": 48}},
        "nag": {"class_type": "NAGuidance", "inputs": {"model": ["model", 0], "nag_scale": 5.0, "nag_alpha": 0.5,
                                                     "nag_tau": 1.5}},
        "kv": {"class_type": "FluxKVCache", "inputs": {"model": ["nag", 0]}},
        **text_conditioning(48, 16),
        # no distilled guidance (as Flux.2 klein): the host's timestep-zero reference rows double the
        # timestep batch only, so a guidance vector would not match it
        "pnog": {"class_type": "FluxDisableGuidance", "inputs": {"conditioning": ["pos", 0]}},
        "nnog": {"class_type": "FluxDisableGuidance", "inputs": {"conditioning": ["neg", 0]}},
        "reflat": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": 48, "height": 32, "batch_size": 1}},
        "posref": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["pnog", 0], "latent": ["reflat", 0]}},
        "negref": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["nnog", 0], "latent": ["reflat", 0]}},
        "latent": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        **sample_and_save("kv", positive="posref", negative="negref", prefix=prefix),
    }
    if procache is not None:
        sample_through_procache(p, "kv", procache)
    return copy.deepcopy(p)



@pytest.mark.skipif(not NAG_AND_KV, reason=NO_NAG_KV)
def test_host_nag_and_flux_kv_cache_nodes_with_procache(comfy_server):
    plain = saved_latent(comfy_server, comfy_server.run(nag_kv_prompt("nagkv_plain"), timeout=600))
    assert torch.isfinite(plain).all()
    # NAG and the KV cache act in this graph: without them the result is another one
    bare = nag_kv_prompt("nagkv_bare")
    bare["sampler"]["inputs"]["model"] = ["model", 0]
    assert not torch.equal(saved_latent(comfy_server, comfy_server.run(bare, timeout=600)), plain)

    full = comfy_server.run(nag_kv_prompt("nagkv_ffff", {"actions": "FFFF"}), timeout=600)
    assert torch.equal(saved_latent(comfy_server, full), plain)
    assert "[flux2]" in stats_line(full) and "(4 full / 0 selective / 0 cached)" in stats_line(full)

    # step 1 holds the reference tokens, later steps do not (the KV cache drops them): FFCC reuses step 2
    cached = comfy_server.run(nag_kv_prompt("nagkv_ffcc", {"actions": "FFCC"}), timeout=600)
    lat, text = saved_latent(comfy_server, cached), stats_line(cached)
    m = re.search(r"blocks computed ([\d.]+)% of full", text)
    assert m and float(m.group(1)) < 100.0, text
    assert torch.isfinite(lat).all() and not torch.equal(lat, plain)
    err = float((lat.double() - plain.double()).norm() / plain.double().norm())
    assert 0.0 < err < 0.5, err


# -- Ovis layout: yak_mlp blocks (hosts whose Flux has it) ---------------------------------------------------

def test_flux_yak_mlp_blocks_exact_and_selective():
    """Ovis-style Flux (``yak_mlp``: SwiGLU MLPs; single blocks take SiLU of the second half of their MLP
    rows times the first half): all-FULL bitwise the plain model; a selective step recomputes the MLP half
    of single-block tokens through the same activation (a wrong one cannot even match linear2's width)."""
    import dataclasses

    import comfy.ops
    from comfy.ldm.flux.model import Flux, FluxParams

    fields = {f.name for f in dataclasses.fields(FluxParams)}
    if "yak_mlp" not in fields:
        pytest.skip("this host's FluxParams has no yak_mlp (Ovis blocks)")
    extra = {"txt_ids_dims": []} if "txt_ids_dims" in fields else {}
    dm = TAF._init(Flux(in_channels=4, out_channels=4, vec_in_dim=16, context_in_dim=32, hidden_size=64, mlp_ratio=2.0,
                        num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
                        qkv_bias=True, guidance_embed=False, yak_mlp=True, operations=comfy.ops.disable_weight_init,
                        **extra), 5)
    assert dm.single_blocks[0].yak_mlp
    ref = TAF.call("flux", dm, {})
    outs, run = patched_run("flux", dm, "FF", TAF.call)
    assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref)
    outs, run = patched_run("flux", dm, "FS", TAF.call, ratio=0.5)
    assert torch.isfinite(outs[1]).all()
    assert 0.0 < run.stats.block_eval_fraction < 1.0
