"""Adapters of the families added after the first four, in process, on tiny host-class models.

For each: all-FULL through the adapter equals the unpatched network bit for bit (where the host fuses a
residual with ``addcmul`` the adapter's branch is ``fused`` and the engine does the same), a cached step computes no block and
reproduces the step it reuses when the inputs are the same, and a selective step recomputes tokens.
The server tests (tests/host/test_families_server.py) run the same models through the real sampler.
"""
from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch

from _families import patched_run as shared_patched_run
from _inprocess import FakePatcher, load_pack

pack = load_pack()
from procache_pack.nodes import adapters as A  # noqa: E402
from procache_pack.nodes import memory_bridge as MB  # noqa: E402
from procache_pack.procache_core.engine import CacheRun  # noqa: E402
from procache_pack.procache_core.memory import CacheMemory  # noqa: E402
from procache_pack.procache_core.schedule import Schedule  # noqa: E402
from procache_pack.procache_core.settings import SelectiveSettings  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "procache_test_nodes_families", Path(__file__).resolve().parents[1] / "host_nodes" / "nodes_tiny_families.py")
NF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(NF)

# family -> builder; all-FULL equals the unpatched network bit for bit on every host
FAMILIES = {"qwen_image": NF.tiny_qwen_image_net, "flux2": NF.tiny_flux2_net, "chroma": NF.tiny_chroma_net,
            "z_image": NF.tiny_lumina_net, "lumina2": NF.tiny_lumina2_net,
            "hunyuan_video": NF.tiny_hunyuan_video_net, "ltxv": NF.tiny_ltxv_net,
            "cosmos_predict2": NF.tiny_cosmos_predict2_net, "hidream": NF.tiny_hidream_net}


BYT5, VISION = 5, 4   # extra text-stream tokens of the HunyuanVideo 1.5 inputs below
LLAMA = 7             # Llama tokens per layer of the HiDream inputs


def call(family: str, dm, to: dict, t0: float = 0.5, dx: float = 0.0):
    """The network on seeded inputs at timestep ``t0``; ``dx`` shifts the latent input only."""
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([t0, t0])
    ctx = torch.randn(2, 6, 48, generator=g)
    with torch.no_grad():
        if family == "qwen_image":
            return dm(dx + torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx, transformer_options=to)
        if family == "qwen_image_edit":  # a 6x10 reference image joins the image stream (15 tokens)
            return dm(dx + torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx, ref_latents=[torch.randn(2, 16, 1, 6, 10, generator=g)],
                      transformer_options=to)
        if family == "hunyuan_video":
            # image-to-video token replacement: per-range adaLN (modulation_dims); the host supports it
            # for batch 1 only (apply_mod indexes the gate rows per range without a token axis)
            return dm(dx + torch.randn(1, 16, 2, 8, 8, generator=g), t[:1], ctx[:1], y=torch.randn(1, 16, generator=g),
                      guiding_frame_index=torch.tensor([0.0]), transformer_options=to)
        if family == "hunyuan_video15":  # ByT5 glyph tokens and vision tokens join the text stream
            return dm(dx + torch.randn(2, 16, 2, 8, 8, generator=g), t, ctx, txt_byt5=torch.randn(2, BYT5, 1472, generator=g),
                      clip_fea=torch.randn(2, VISION, 40, generator=g), transformer_options=to)
        if family == "hunyuan_image21":
            return dm(dx + torch.randn(2, 64, 8, 8, generator=g), t, ctx, transformer_options=to)
        if family == "hidream":  # T5 context, 4 Llama layers of 7 tokens, pooled vector
            return dm(dx + torch.randn(2, 16, 8, 8, generator=g), t, y=torch.randn(2, 32, generator=g), context=ctx,
                      encoder_hidden_states_llama3=torch.randn(2, 4, LLAMA, 40, generator=g), transformer_options=to)
        if family == "cosmos_predict2":
            return dm(dx + torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx, transformer_options=to)
        if family == "ltxv":
            return dm(dx + torch.randn(2, 128, 2, 2, 4, generator=g), t, ctx, None, transformer_options=to)
        if family in ("z_image", "lumina2"):
            return dm(dx + torch.randn(2, 16, 8, 8, generator=g), t, ctx, 6, transformer_options=to)
        if family == "flux2":  # the prompt padded in front to 512 tokens, as the host's model_base.Flux2 does
            ctx = torch.nn.functional.pad(ctx, (0, 0, 512 - ctx.shape[1], 0))
            return dm(dx + torch.randn(2, 128, 8, 8, generator=g), t, ctx, guidance=torch.tensor([3.5, 3.5]),
                      transformer_options=to)
        return dm(dx + torch.randn(2, 16, 8, 8, generator=g), t, ctx, guidance=torch.tensor([0.0, 0.0]),
                  transformer_options=to)


def patched_run(family: str, dm, schedule: str, ratio: float = 0.5):
    outs, run = shared_patched_run(family, dm, schedule, call, ratio=ratio)
    return outs, run.stats


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_full_equals_unpatched(family):
    dm = FAMILIES[family](seed=1)[0].eval()
    ref = call(family, dm, {})
    outs, stats = patched_run(family, dm, "FF")
    for o in outs:
        assert torch.equal(o, ref), f"{family}: max diff {(o - ref).abs().max().item()}"
    assert stats.block_eval_fraction == 1.0


# -- host-specific block inputs: each needs a host whose classes take them (skipped elsewhere) -------------

def _variant_call(variant: str):
    """``call`` for a variant: the base family's inputs plus what the variant adds."""
    def run(family, dm, to):
        g = torch.Generator().manual_seed(11)
        t, ctx = torch.tensor([0.5, 0.5]), torch.randn(2, 6, 48, generator=g)
        with torch.no_grad():
            if variant == "qwen_image_tzi":   # Edit 2511: reference tokens modulated by a zero timestep
                return dm(torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx,
                          ref_latents=[torch.randn(2, 16, 1, 6, 10, generator=g)], transformer_options=to)
            if variant == "qwen_image_mask":  # a padded prompt: the text attention mask
                mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
                return dm(torch.randn(2, 16, 1, 8, 8, generator=g), t, ctx, attention_mask=mask, transformer_options=to)
            if variant == "ltxv_cross_adaln":  # LTX-2 layout: 9-row adaLN table, prompt timestep
                return dm(torch.randn(2, 128, 2, 2, 4, generator=g), t, ctx, None, transformer_options=to)
        raise AssertionError(variant)
    return run


VARIANTS = {"qwen_image_tzi": ("qwen_image", lambda: NF.tiny_qwen_image_net(seed=1, ref_method="index_timestep_zero")),
            "qwen_image_mask": ("qwen_image", lambda: NF.tiny_qwen_image_net(seed=1)),
            "ltxv_cross_adaln": ("ltxv", lambda: NF.tiny_ltxv_net(seed=1, cross_adaln=True))}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_host_block_inputs_all_full_and_cached(variant):
    """Block inputs newer hosts add (Qwen-Image's text mask and ``timestep_zero_index``, LTXV's
    cross-attention adaLN): all-FULL equals the plain host run bit for bit, a reused step reproduces it,
    and a selective step runs."""
    family, build = VARIANTS[variant]
    try:
        dm = build()[0].eval()
    except TypeError as err:
        pytest.skip(f"{variant}: {err}")
    fn = _variant_call(variant)
    ref = fn(family, dm, {})
    other = fn(family, NF.tiny_qwen_image_net(seed=1)[0].eval(), {}) if variant == "qwen_image_tzi" else None
    outs, run = shared_patched_run(family, dm, "FF", fn)
    for o in outs:
        assert torch.equal(o, ref), f"{variant}: max diff {(o - ref).abs().max().item()}"
    if other is not None:  # the zero-timestep rows really changed the model (else the test proves nothing)
        assert (other - ref).abs().max() > 1e-3
    outs, run = shared_patched_run(family, dm, "FC", fn)
    torch.testing.assert_close(outs[1], ref, rtol=1e-4, atol=1e-5)
    assert run.stats.block_evals_done == pytest.approx(run.stats.block_evals_full / 2)
    outs, run = shared_patched_run(family, dm, "FCS", fn)
    assert all(torch.isfinite(o).all() for o in outs) and run.stats.steps_selective == 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_and_selective_steps(family):
    dm = FAMILIES[family](seed=1)[0].eval()
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
    for family, build in FAMILIES.items():
        assert A.detect_family(FakePatcher(build(seed=0)[0])) == family


# -- cache size estimate ------------------------------------------------------------------------------

ESTIMATED = {**FAMILIES, "hunyuan_video15": NF.tiny_hunyuan_video15_net,
             "hunyuan_image21": NF.tiny_hunyuan_image21_net, "qwen_image_edit": NF.tiny_qwen_image_net}
# without the host's model config, 1.5 and Image 2.1 are detected by their network class alone
DETECTED = {"hunyuan_video15": "hunyuan_video", "hunyuan_image21": "hunyuan_video", "qwen_image_edit": "qwen_image"}


def _cond(family: str, batch: int) -> dict:
    """The first positive conditioning entry as the sampler holds it (what the estimate reads)."""
    cond = {"cross_attn": torch.zeros(batch, 6, 48), "model_conds": {}}
    if family == "hunyuan_video15":
        cond["conditioning_byt5small"] = torch.zeros(batch, BYT5, 1472)
        cond["clip_vision_output"] = types.SimpleNamespace(last_hidden_state=torch.zeros(batch, VISION, 40))
    if family == "hidream":
        cond["conditioning_llama3"] = torch.zeros(batch, 4, LLAMA, 40)
    if family == "qwen_image_edit":
        cond["reference_latents"] = [torch.zeros(1, 16, 1, 6, 10)]
    return cond


def _estimate(adapter, run, x_shape: tuple, family: str, streams: int = 1):
    """memory_bridge.estimate for a run of `adapter` on input `x_shape` (float32, CFG when streams 2)."""
    state = types.SimpleNamespace(config=types.SimpleNamespace(adapter=adapter, memory_request=MB.MemoryRequest()),
                                  run=run, memory_estimate=None, model_patcher=None)
    conds = {"positive": [_cond(family, x_shape[0])]}
    if streams == 2:
        conds["negative"] = [_cond(family, x_shape[0])]
    model = types.SimpleNamespace(manual_cast_dtype=None, get_dtype=lambda: torch.float32)
    guider = types.SimpleNamespace(conds=conds, cfg=2.0, model_patcher=types.SimpleNamespace(model=model))
    return MB.estimate(state, guider, x_shape), state


@pytest.mark.parametrize("family", sorted(ESTIMATED))
def test_cache_estimate_equals_bytes_held(family, monkeypatch):
    """The size logged before the first step (from shapes and the family's block layout) is the peak the
    cache then holds on the tiny model, for the full and the light cache (half the blocks deep, a
    selective step: kept inputs, refresh steps and Flux single blocks' attention halves included);
    ``auto`` placement moves a cache the test's free-memory figure cannot hold to CPU memory."""
    dm = ESTIMATED[family](seed=1)[0].eval()
    held = {}
    for light in (False, True):
        outs, run = shared_patched_run(family, dm, "FCSC", call, depth_fraction=0.5, memory=CacheMemory(light=light),
                                       expect=DETECTED.get(family, family))
        assert run.stats.steps_selective == 1
        est, _ = _estimate(run.adapter, run, tuple(outs[0].shape), family)
        assert est is not None, f"{family}: no estimate"
        held[light] = run.stats.peak_cache_bytes
        assert (est.light_bytes if light else est.full_bytes) == held[light] > 0, (family, light, est, held)
        assert run.stats.peak_cache_bytes_by_device == {"cpu": held[light]}  # what ProCache Stats reports
    assert held[True] < held[False]

    # auto placement against a free-memory figure set by the test (CFG: two rows per sample)
    adapter = run.adapter
    fresh = CacheRun(Schedule.from_string("FCSC"), SelectiveSettings(ratio=0.5, depth_fraction=0.5),
                     num_blocks=adapter.num_blocks, lanes=adapter.lanes())
    est, state = _estimate(adapter, fresh, tuple(outs[0].shape), family, streams=2)
    assert est.rows == 2 * outs[0].shape[0] and est.full_bytes == 2 * held[False]
    x = torch.empty(est.rows, *outs[0].shape[1:], device="meta")
    monkeypatch.setattr(MB, "_free", lambda dev: 2 * est.full_bytes if dev.type != "cpu" else 10 ** 12)
    MB.decide(state, x)
    assert fresh.memory.placement == "device" and not fresh.memory.light
    est.decided = False
    monkeypatch.setattr(MB, "_free", lambda dev: est.full_bytes if dev.type != "cpu" else 10 ** 12)
    MB.decide(state, x)   # 90 % of the free memory is the limit: the full cache does not fit
    assert fresh.memory.placement == "cpu" and not fresh.memory.light
    est.decided = False
    monkeypatch.setattr(MB, "_free", lambda dev: est.full_bytes)
    MB.decide(state, x)   # nor in CPU memory: the light cache
    assert fresh.memory.placement == "cpu" and fresh.memory.light


# -- memory-light cache on double-stream families -------------------------------------------------------

def _stepping(steps: list[tuple[float, float]]):
    """A ``call`` taking (t0, dx) of the next step from ``steps``."""
    it = iter(steps)
    return lambda family, dm, to: call(family, dm, to, *next(it))


@pytest.mark.parametrize("family", ["qwen_image", "hunyuan_video", "hidream"])
def test_light_cache_differs_only_by_the_gates(family):
    """Light mode on an image/text double-stream family (lanes from ``adapter.lanes()``): the shallow
    blocks of each stream are reused as one residual, the deep half as usual. Its documented difference
    from the full cache is that the residual carries the gates of the step that computed it. So with the
    same timestep (same gates) and a new latent on the reused steps, light and full agree to float
    rounding on cached and selective steps, although both differ from computing the step; with another
    timestep on the reused step they differ. The light cache holds less."""
    dm = FAMILIES[family](seed=1)[0].eval()

    def run(light: bool, steps):
        return shared_patched_run(family, dm, "FCS", _stepping(steps), depth_fraction=0.5,
                                  memory=CacheMemory(light=light))

    same_gates = [(0.5, 0.0), (0.5, 0.3), (0.5, 0.6)]
    full, full_run = run(False, same_gates)
    light, light_run = run(True, same_gates)
    assert torch.equal(light[0], full[0])                       # a computed step is the host's arithmetic
    for step in (1, 2):
        torch.testing.assert_close(light[step], full[step], rtol=1e-5, atol=1e-6)
        fresh = call(family, dm, {}, *same_gates[step])
        assert (full[step] - fresh).abs().max() > 1e-3          # the reused step really reused something
    assert light_run.stats.tokens_recomputed == full_run.stats.tokens_recomputed
    if family != "hunyuan_video":  # (HunyuanVideo here runs I2V token replacement: MLPs reused, see its adapter)
        assert full_run.stats.tokens_recomputed > 0
    assert 0 < light_run.stats.peak_cache_bytes < full_run.stats.peak_cache_bytes

    new_gates = [(0.5, 0.0), (0.3, 0.3), (0.3, 0.6)]
    full, _ = run(False, new_gates)
    light, _ = run(True, new_gates)
    assert torch.equal(light[0], full[0])
    rel = float((light[1] - full[1]).norm() / full[1].norm())
    print(f"{family}: light vs full with new gates, rel L2 {rel:.2e}")
    assert rel > 1e-4, rel                                        # step-0 gates in the shallow residual


def test_hidream_reused_step_evaluates_only_gate_rows():
    """A cached HiDream step needs the gates alone: the blocks' full adaLN modules run on the computed
    step only, and the cached step still reproduces it (same inputs)."""
    dm = FAMILIES["hidream"](seed=1)[0].eval()
    mods = [b.block.adaLN_modulation for b in (*dm.double_stream_blocks, *dm.single_stream_blocks)]
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in mods]
    try:
        outs, _ = patched_run("hidream", dm, "FC")
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == len(mods)  # step 0 only
    assert A.adapter_for(FakePatcher(dm)).unsplit_report() is None  # plain host linears: sliced
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
