"""Adapters chain what was installed before them, in process on tiny host models: an earlier ``dit``
replace / ``forward`` object patch is kept (and a second ProCache Apply replaces ProCache's own patch
instead of stacking it); Wan runs the host's ``attn2_patch`` hooks on computed steps."""
from __future__ import annotations

import types

import torch

from _inprocess import FakePatcher
from test_adapter_families import A, RB, CacheRun, Schedule, SelectiveSettings, call, tiny_flux, tiny_pixart, tiny_wan


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

    fp = FakePatcher(dm)
    adapter = A.adapter_for(fp)
    owner = types.SimpleNamespace()
    adapter.install(fp, owner)
    outs = {}
    for name, patches in (("plain", {}), ("hooked", {"attn2_patch": [hook]})):
        run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(), num_blocks=adapter.num_blocks)
        state = types.SimpleNamespace(config=owner, run=run, closed=False)
        outs[name] = []
        with fp.patched():
            for step in range(2):
                run.begin_step(step)
                run.set_stream((0, 1), chunks=2)
                RB._ACTIVE.stack = [state]
                try:
                    outs[name].append(call("wan", dm, {"patches": patches}))
                finally:
                    RB._ACTIVE.stack = []
        run.close()
    assert len(calls) == len(dm.blocks)  # once per block on the FULL step, never on the cached one
    assert not torch.allclose(outs["hooked"][0], outs["plain"][0])
    assert torch.allclose(outs["hooked"][1], outs["hooked"][0], atol=1e-5, rtol=1e-4)  # reused with the hook
