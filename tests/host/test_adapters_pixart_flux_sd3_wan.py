"""Family adapters, in process, on tiny random models built from the host's own classes.

For every family: an all-FULL run through the adapter equals the unpatched model bit for bit (SD3.5's
extra self-attention blocks: to float rounding, see its adapter), a cached step reuses every block (no block
computed), a selective step recomputes tokens where the family has token-local branches, and
family detection / the unsupported-model error work. The run is driven the way the bridge drives
it: ``CacheRun.begin_step`` + ``set_stream`` and the state pushed on the active stack.
"""
from __future__ import annotations

import types

import pytest
import torch

from _families import patched_run as shared_patched_run
from _inprocess import FakePatcher, load_pack

pack = load_pack()
from procache_pack.nodes import adapters as A  # noqa: E402
from procache_pack.procache_core.errors import UnsupportedModelError  # noqa: E402


def _init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        # buffers such as SD3's pos_embed are allocated with torch.empty by the host: never leave them
        # holding whatever memory was there (NaN in a full test run)
        for _, b in sorted(model.named_buffers()):
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def tiny_pixart():
    import torch.nn as nn
    from comfy.ldm.pixart.pixartms import PixArtMS

    return _init(PixArtMS(depth=3, hidden_size=96, num_heads=4, patch_size=2, in_channels=4, pred_sigma=True,
                          micro_condition=True, model_max_length=8, caption_channels=32, operations=nn), 1)


def tiny_flux():
    import comfy.ops
    from comfy.ldm.flux.model import Flux, FluxParams

    # ComfyUI 0.8+ requires txt_ids_dims (Flux.1: none, what its detection gives)
    extra = {"txt_ids_dims": []} if "txt_ids_dims" in FluxParams.__dataclass_fields__ else {}
    return _init(Flux(in_channels=4, out_channels=4, vec_in_dim=16, context_in_dim=32, hidden_size=64, mlp_ratio=2.0,
                      num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
                      qkv_bias=True, guidance_embed=False, operations=comfy.ops.disable_weight_init, **extra), 2)


def tiny_sd3(x_self_attn: bool = False):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    return _init(OpenAISignatureMMDITWrapper(
        input_size=None, patch_size=2, in_channels=4, depth=2, adm_in_channels=16, out_channels=4,
        pos_embed_max_size=16, num_patches=256, qk_norm="rms" if x_self_attn else None,
        x_block_self_attn=x_self_attn, x_block_self_attn_layers=[0] if x_self_attn else [],
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
        operations=comfy.ops.disable_weight_init), 3)


def tiny_wan():
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    return _init(WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=8, in_dim=4, dim=64, ffn_dim=128,
                          freq_dim=32, text_dim=32, out_dim=4, num_heads=4, num_layers=2,
                          operations=comfy.ops.disable_weight_init), 4)


def call(family, dm, to):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if family == "pixart":
            x = torch.randn(2, 4, 48, 48, generator=g)
            return dm(x, torch.tensor([500.0, 500.0]), torch.randn(2, 8, 32, generator=g))
        if family == "flux":
            x = torch.randn(2, 4, 16, 16, generator=g)
            return dm(x, torch.tensor([0.5, 0.5]), torch.randn(2, 6, 32, generator=g), y=torch.randn(2, 16, generator=g),
                      transformer_options=to)
        if family == "sd3":
            x = torch.randn(2, 4, 16, 16, generator=g)
            return dm(x, torch.tensor([500.0, 500.0]), torch.randn(2, 6, 32, generator=g),
                      y=torch.randn(2, 16, generator=g), transformer_options=to)
        x = torch.randn(2, 4, 2, 16, 16, generator=g)
        return dm(x, torch.tensor([500.0, 500.0]), torch.randn(2, 8, 32, generator=g), transformer_options=to)


BUILDERS = {"pixart": tiny_pixart, "flux": tiny_flux, "sd3": tiny_sd3, "wan": tiny_wan}


def patched_run(family, dm, schedule: str, ratio: float = 0.5):
    """Outputs of every step of `schedule`, evaluated on the same inputs through the adapter."""
    outs, run = shared_patched_run(family, dm, schedule, call, ratio=ratio)
    return outs, run.stats


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_all_full_is_bitwise_equal(family):
    dm = BUILDERS[family]()
    ref = call(family, dm, {})
    outs, stats = patched_run(family, dm, "FF")
    for o in outs:
        # Wan: the host's torch.addcmul(x, y, gate) residuals are fused branches (see wan.py)
        assert torch.equal(o, ref), f"{family}: max diff {(o - ref).abs().max().item()}"
    assert stats.block_eval_fraction == 1.0


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_cached_step_reuses_every_block_and_stays_close(family):
    dm = BUILDERS[family]()
    ref = call(family, dm, {})
    outs, stats = patched_run(family, dm, "FC")
    # same inputs on both steps: reusing the block outputs of step 0 reproduces them (same gates)
    assert torch.allclose(outs[1], ref, atol=1e-5, rtol=1e-4)
    n = stats.block_evals_full // 2
    assert stats.block_evals_done == pytest.approx(n)  # step 1 computed nothing


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_selective_step(family):
    dm = BUILDERS[family]()
    outs, stats = patched_run(family, dm, "FCS", ratio=0.5)
    assert stats.tokens_recomputed > 0  # flux: the double blocks' MLPs; the others: MLP/cross-attention
    assert all(torch.isfinite(o).all() for o in outs)


def test_unpatched_when_no_run_is_active():
    dm = tiny_pixart()
    ref = call("pixart", dm, {})
    fp = FakePatcher(dm)
    A.adapter_for(fp).install(fp, object())
    with fp.patched():
        assert torch.equal(call("pixart", dm, {}), ref)


def test_sd35_self_attn_blocks_close():
    dm = tiny_sd3(x_self_attn=True)
    ref = call("sd3", dm, {})
    outs, _ = patched_run("sd3", dm, "FF")
    assert torch.allclose(outs[0], ref, atol=1e-5, rtol=1e-5)


def test_other_models_get_the_model_level_fallback():
    dm = torch.nn.Linear(2, 2)
    adapter = A.adapter_for(FakePatcher(dm))
    assert adapter.family == "generic" and adapter.num_blocks == 1 and adapter.schedule_only
    assert "Linear" in adapter.describe() and "schedule-only" in adapter.describe()


def test_not_a_diffusion_model_names_the_field():
    with pytest.raises(UnsupportedModelError) as err:
        A.adapter_for(types.SimpleNamespace(model=None))
    msg = str(err.value)
    assert "'model'" in msg and "not a diffusion MODEL" in msg
    for fam in ("PixArt", "Flux", "SD3", "Wan"):
        assert fam in msg


def _modulation_modules(family, dm):
    if family == "flux":
        return [m for b in dm.double_blocks for m in (b.img_mod, b.txt_mod)] + [b.modulation for b in dm.single_blocks]
    return [m for jb in dm.joint_blocks for m in (jb.x_block.adaLN_modulation, jb.context_block.adaLN_modulation)]


@pytest.mark.parametrize("family,build", [("flux", tiny_flux), ("sd3", tiny_sd3),
                                          ("sd3", lambda: tiny_sd3(x_self_attn=True))])
def test_reused_step_evaluates_only_gate_rows(family, build):
    """A cached step needs the gates alone: the host's full adaLN modules are not called on it."""
    dm = build()
    calls = {"n": 0}
    hooks = [m.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
             for m in _modulation_modules(family, dm)]
    try:
        patched_run(family, dm, "FF")
        per_step = calls["n"] // 2
        calls["n"] = 0
        outs, _ = patched_run(family, dm, "FC")
    finally:
        for h in hooks:
            h.remove()
    assert per_step > 0
    assert calls["n"] == per_step  # step 0 only
    assert torch.allclose(outs[1], call(family, dm, {}), atol=1e-5, rtol=1e-4)


def test_gate_rows_only_from_plain_host_linears():
    import comfy.ops
    from procache_pack.nodes.adapters.modulation import row_evaluator

    g = torch.Generator().manual_seed(0)
    lin = comfy.ops.disable_weight_init.Linear(8, 24)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(24, 8, generator=g))
        lin.bias.copy_(torch.randn(24, generator=g))
    x = torch.randn(2, 8, generator=g)
    rows = row_evaluator(lin, lambda: x, x)
    assert rows is not None
    torch.testing.assert_close(rows(8, 16), lin(x)[:, 8:16])
    # anything that makes the host cast or patch weights per call keeps the full linear
    lin.weight_function.append(lambda w: w * 2)  # what low-VRAM LoRA patching installs
    assert row_evaluator(lin, lambda: x, x) is None
    lin.weight_function.clear()
    lin.comfy_cast_weights = True
    assert row_evaluator(lin, lambda: x, x) is None
    lin.comfy_cast_weights = False
    assert row_evaluator(lin, lambda: x.half(), x.half()) is None  # dtype differs from the weights
    manual = comfy.ops.manual_cast.Linear(8, 24)
    assert row_evaluator(manual, lambda: x, x) is None
