"""Adapters of the families added after the first four, in process, on tiny host-class models.

For each: all-FULL through the adapter equals the unpatched network (bit for bit, or to float rounding
where the host fuses a residual with ``addcmul``, see the adapter), a cached step computes no block and
reproduces the step it reuses when the inputs are the same, and a selective step recomputes tokens.
The server tests (tests/host/test_families_server.py) run the same models through the real sampler.
"""
from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch

from _inprocess import FakePatcher, load_pack

pack = load_pack()
from procache_pack.nodes import adapters as A  # noqa: E402
from procache_pack.nodes import runtime_bridge as RB  # noqa: E402
from procache_pack.procache_core.engine import CacheRun  # noqa: E402
from procache_pack.procache_core.schedule import Schedule  # noqa: E402
from procache_pack.procache_core.settings import SelectiveSettings  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "procache_test_nodes_families", Path(__file__).resolve().parents[1] / "host_nodes" / "nodes_families.py")
NF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(NF)

# family -> (builder, exact all-FULL equality)
FAMILIES = {"qwen_image": (NF.tiny_qwen_image_net, False), "flux2": (NF.tiny_flux2_net, True),
            "chroma": (NF.tiny_chroma_net, True), "z_image": (NF.tiny_lumina_net, True),
            "lumina2": (NF.tiny_lumina2_net, True), "hunyuan_video": (NF.tiny_hunyuan_video_net, True),
            "ltxv": (NF.tiny_ltxv_net, False), "cosmos_predict2": (NF.tiny_cosmos_predict2_net, True)}


def call(family: str, dm, to: dict):
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([0.5, 0.5])
    ctx = torch.randn(2, 6, 48, generator=g)
    with torch.no_grad():
        if family == "qwen_image":
            return dm(torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx, transformer_options=to)
        if family == "hunyuan_video":
            # image-to-video token replacement: per-range adaLN (modulation_dims); the host supports it
            # for batch 1 only (apply_mod indexes the gate rows per range without a token axis)
            return dm(torch.randn(1, 16, 2, 8, 8, generator=g), t[:1], ctx[:1], y=torch.randn(1, 16, generator=g),
                      guiding_frame_index=torch.tensor([0.0]), transformer_options=to)
        if family == "cosmos_predict2":
            return dm(torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx, transformer_options=to)
        if family == "ltxv":
            return dm(torch.randn(2, 128, 2, 2, 4, generator=g), t, ctx, None, transformer_options=to)
        if family in ("z_image", "lumina2"):
            return dm(torch.randn(2, 16, 8, 8, generator=g), t, ctx, 6, transformer_options=to)
        if family == "flux2":
            return dm(torch.randn(2, 128, 8, 8, generator=g), t, ctx, guidance=torch.tensor([3.5, 3.5]),
                      transformer_options=to)
        return dm(torch.randn(2, 16, 8, 8, generator=g), t, ctx, guidance=torch.tensor([0.0, 0.0]),
                  transformer_options=to)


def patched_run(family: str, dm, schedule: str, ratio: float = 0.5):
    fp = FakePatcher(dm)
    adapter = A.adapter_for(fp)
    assert adapter.family == family
    owner = types.SimpleNamespace()
    adapter.install(fp, owner)
    run = CacheRun(Schedule.from_string(schedule), SelectiveSettings(ratio=ratio, depth_fraction=1.0),
                   num_blocks=adapter.num_blocks)
    state = types.SimpleNamespace(config=owner, run=run, closed=False)
    outs = []
    with fp.patched():
        for step in range(len(schedule)):
            run.begin_step(step)
            run.set_stream((0, 1), chunks=2)
            RB._ACTIVE.stack = [state]
            try:
                outs.append(call(family, dm, dict(fp.model_options["transformer_options"])))
            finally:
                RB._ACTIVE.stack = []
    run.close()
    return outs, run.stats


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_full_equals_unpatched(family):
    build, exact = FAMILIES[family]
    dm = build(seed=1)[0].eval()
    ref = call(family, dm, {})
    outs, stats = patched_run(family, dm, "FF")
    for o in outs:
        if exact:
            assert torch.equal(o, ref), f"{family}: max diff {(o - ref).abs().max().item()}"
        else:
            torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5)
    assert stats.block_eval_fraction == 1.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_and_selective_steps(family):
    dm = FAMILIES[family][0](seed=1)[0].eval()
    ref = call(family, dm, {})
    outs, stats = patched_run(family, dm, "FC")
    torch.testing.assert_close(outs[1], ref, rtol=1e-4, atol=1e-5)  # same inputs, fresh gates: same output
    assert stats.block_evals_done == pytest.approx(stats.block_evals_full / 2)
    outs, stats = patched_run(family, dm, "FCS")
    assert all(torch.isfinite(o).all() for o in outs)
    if family == "hunyuan_video":  # per-range adaLN (I2V): MLPs are reused, not recomputed per token
        assert stats.tokens_recomputed == 0 and stats.steps_selective == 1
    else:
        assert stats.tokens_recomputed > 0


def test_detection_names():
    for family, (build, _) in FAMILIES.items():
        assert A.detect_family(FakePatcher(build(seed=0)[0])) == family
