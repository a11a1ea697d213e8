"""Adapters chain what was installed before them, in process on tiny host models: an earlier ``dit``
replace / ``forward`` object patch is kept (and a second ProCache Apply replaces ProCache's own patch
instead of stacking it); Wan runs the host's ``attn2_patch`` hooks on computed steps."""
from __future__ import annotations

import pytest
import torch

from _families import A, patched_run
from _inprocess import FakePatcher
from test_adapters_pixart_flux_sd3_wan import call, tiny_flux, tiny_pixart, tiny_wan


def _foreign(args, extra):
    return extra["original_block"](args)


def test_dit_replace_keeps_an_earlier_patch_and_replaces_its_own():
    fp = FakePatcher(tiny_flux())
    fp.set_model_patch_replace(_foreign, "dit", "double_block", 0)
    A.adapter_for(fp).install(fp, object())
    A.adapter_for(fp).install(fp, object())  # Apply twice on one clone
    dit = fp.model_options["transformer_options"]["patches_replace"]["dit"]
    assert isinstance(dit[("double_block", 0)], A.DitBlockReplace)
    assert dit[("double_block", 0)].prev is _foreign
    assert dit[("double_block", 1)].prev is None and dit[("single_block", 0)].prev is None


def test_forward_patch_keeps_an_earlier_patch_and_runs_it_outside_a_run():
    dm = tiny_pixart()
    ref = call("pixart", dm, {})
    calls = []
    block0 = dm.blocks[0]

    def foreign(*args, **kwargs):
        calls.append(1)
        return type(block0).forward(block0, *args, **kwargs) + 0.5

    fp = FakePatcher(dm)
    fp.add_object_patch("diffusion_model.blocks.0.forward", foreign)
    A.adapter_for(fp).install(fp, object())
    A.adapter_for(fp).install(fp, object())
    patch = fp.object_patches["diffusion_model.blocks.0.forward"]
    assert isinstance(patch, A.ChainedForward) and patch.prev is foreign
    with fp.patched():
        out = call("pixart", dm, {})
    assert calls == [1] and not torch.equal(out, ref)


def test_wan_runs_attn2_patch_hooks_on_computed_steps():
    dm = tiny_wan()
    calls = []

    def hook(args):
        calls.append(args["x"].shape)
        return args["x"] + 0.25

    # the host's own blocks: newer hosts' WanAttentionBlock runs attn2_patch hooks (once per block),
    # older ones ignore them; ProCache's blocks must do what the host's do
    host_out = call("wan", dm, {"patches": {"attn2_patch": [hook]}})
    host_calls = len(calls)
    assert host_calls in (0, len(dm.blocks))
    calls.clear()
    outs = {name: patched_run("wan", dm, "FC", lambda _f, _dm, _to, p=patches: call("wan", dm, {"patches": p}))[0]
            for name, patches in (("plain", {}), ("hooked", {"attn2_patch": [hook]}))}
    assert len(calls) == host_calls  # as the host on the FULL step, never on the cached one
    if host_calls:  # the hooks are one residual branch, x + (hooks(x) - x): equal to float rounding only
        assert torch.allclose(outs["hooked"][0], host_out, atol=1e-5, rtol=1e-4)
    else:  # no hook runs: all-FULL is the host's arithmetic (its addcmul residuals are fused branches)
        assert torch.equal(outs["hooked"][0], host_out)
    if host_calls:
        assert not torch.allclose(outs["hooked"][0], outs["plain"][0])
        assert torch.allclose(outs["hooked"][1], outs["hooked"][0], atol=1e-5, rtol=1e-4)  # reused with the hook
    else:
        assert torch.equal(outs["hooked"][0], outs["plain"][0])


# --- families added later: a second pack's block patch composes with ProCache, before or after Apply ---

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "procache_test_nodes_families_chain", Path(__file__).resolve().parents[1] / "host_nodes" / "nodes_tiny_families.py")
NF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(NF)
import test_adapters_qwen_flux2_chroma_lumina_hunyuan_ltxv_cosmos_hidream as M  # noqa: E402

# family -> (builder, block patched with +offset: dit key or forward object-patch key, exact all-FULL
# with the offset installed after Apply: the adapters mark the host's fused (addcmul) residuals, so every
# family is bitwise on every host)
LATER = {"qwen_image": (NF.tiny_qwen_image_net, ("double_block", 0), True),
         "z_image": (NF.tiny_lumina_net, "diffusion_model.layers.0.forward", True),
         "cosmos_predict2": (NF.tiny_cosmos_predict2_net, "diffusion_model.blocks.0.forward", True),
         "hidream": (NF.tiny_hidream_net, "diffusion_model.double_stream_blocks.0.forward", True)}


def _install_offset(fp, dm, key, calls: list) -> None:
    """Another pack's counting +0.05 patch on block 0 that itself chains what it finds (as a good pack does)."""
    if isinstance(key, tuple):
        prev = fp.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {}).get(key)

        def dit(args, extra):
            calls.append(1)
            out = prev(args, extra) if prev is not None else extra["original_block"](args)
            return {**out, "img": out["img"] + 0.05}
        fp.set_model_patch_replace(dit, "dit", key[0], key[1])
        return
    import comfy.utils

    prev = fp.object_patches.get(key)
    block = comfy.utils.get_attr(dm, key[len("diffusion_model."):-len(".forward")])

    def fwd(*args, **kwargs):
        calls.append(1)
        out = prev(*args, **kwargs) if prev is not None else type(block).forward(block, *args, **kwargs)
        if isinstance(out, tuple):  # a double-stream block (HiDream): (image, text)
            return (out[0] + 0.05, *out[1:])
        return out + 0.05
    fp.add_object_patch(key, fwd)


def _run(family, dm, schedule, offset_order):
    """Outputs of ``schedule`` through ProCache with the offset patch installed ``"before"`` / ``"after"``
    Apply (or ``None``: no offset), plus how often the offset patch ran."""
    calls: list = []
    key = LATER[family][1]

    def install(fp, do_install):
        if offset_order == "before":
            _install_offset(fp, dm, key, calls)
        do_install()
        if offset_order == "after":
            _install_offset(fp, dm, key, calls)

    outs, _ = patched_run(family, dm, schedule, M.call, install=install)
    return outs, calls


def _offset_only(family, dm):
    fp, calls = FakePatcher(dm), []
    _install_offset(fp, dm, LATER[family][1], calls)
    with fp.patched():
        out = M.call(family, dm, dict(fp.model_options.get("transformer_options", {})))
    assert calls == [1]
    return out


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("family", sorted(LATER))
def test_later_families_compose_with_another_packs_block_patch(family, order):
    build, _, exact = LATER[family]
    dm = build(seed=1)[0].eval()
    ref = _offset_only(family, dm)
    full, calls = _run(family, dm, "FF", order)
    assert len(calls) == 2  # the offset ran on both computed steps
    # all-FULL: ProCache is transparent, the offset patch alone shapes the result (installed before, the patched
    # block is kept as one residual x + (f(x) - x): equal to float rounding, not bit for bit)
    for o in full:
        if exact and order == "after":
            assert torch.equal(o, ref), f"{family}/{order}: max diff {(o - ref).abs().max().item()}"
        else:
            torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5)
    fc, calls = _run(family, dm, "FC", order)
    proc_only, _ = _run(family, dm, "FC", None)
    # a forward patch installed before runs inside ProCache (only on the computed step); a dit patch installed
    # before wraps ProCache's block (DitBlockReplace passes it as original_block), and one installed after
    # wraps ProCache's patch, so those run each step
    inside = order == "before" and not isinstance(LATER[family][1], tuple)
    assert len(calls) == (1 if inside else 2)
    assert not torch.allclose(fc[0], proc_only[0])  # the offset took effect under ProCache
    assert not torch.allclose(fc[1], proc_only[1])  # and in the reused step (cached with it, or on top)
