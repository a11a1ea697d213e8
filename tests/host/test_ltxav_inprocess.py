"""LTX-2 audio-video adapter (nodes/adapters/ltxav.py) in process, on the tiny host-class model of
tests/host_nodes/tiny_ltxav.py: what the server test (test_family_ltxav.py) cannot see to the byte.

* all-FULL through the adapter equals the unpatched network bit for bit, with per-sample and with
  per-token video timesteps (image-to-video style: the first frame at timestep 0);
* a selective step recomputes tokens and changes both streams only a little (same inputs every step);
* the cache layout gives exactly the bytes the cache holds (full, light, selective deep blocks);
* the video-only case (no audio latent) where the host itself can run it (0.8.1; 0.29's own forward
  fails on an empty audio stream).
ComfyUI 0.3.75 has no LTX-2: skipped there.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from _families import patched_run

try:
    import comfy.ldm.lightricks.av_model  # noqa: F401  (imported from the host by _families)
except ImportError:
    pytest.skip("this ComfyUI host has no LTX-2 audio-video model (comfy.ldm.lightricks.av_model: ComfyUI 0.8 on)",
                allow_module_level=True)

from procache_pack.procache_core.memory import CacheMemory, estimate_bytes  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "procache_test_nodes_families", Path(__file__).resolve().parents[1] / "host_nodes" / "nodes_tiny_families.py")
NF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(NF)

B = 2
VIDEO, AUDIO = (B, 128, 2, 2, 3), (B, 8, 9, 16)


@pytest.fixture(scope="module")
def net():
    _, build = NF.TINY["ltxav"]
    dm, _cfg = build(seed=4, context_dim=48)
    return dm.eval()


def inputs(per_token: bool = False, audio: bool = True):
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(VIDEO, generator=g)] + ([torch.randn(AUDIO, generator=g)] if audio else [])
    ctx = torch.randn(B, 8, 96, generator=g)
    t = torch.full((B,), 0.7)
    if per_token:  # the host's process_timestep with a noise mask keeping the first frame: 0 there
        n = VIDEO[2] * VIDEO[3] * VIDEO[4]
        v = torch.full((B, n), 0.7)
        v[:, :VIDEO[3] * VIDEO[4]] = 0.0
        t = (v, t)
    return x, t, ctx


def caller(per_token: bool = False, audio: bool = True):
    x, t, ctx = inputs(per_token, audio)
    mask = torch.ones(B, 8, dtype=torch.long)

    def call(family, dm, to):
        with torch.no_grad():
            out = dm([v.clone() for v in x], t, ctx, attention_mask=mask, frame_rate=25, transformer_options=to)
        return out if isinstance(out, (list, tuple)) else [out]
    return call


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("per_token", [False, True])
def test_all_full_bitwise(net, per_token):
    call = caller(per_token)
    plain = call("ltxav", net, {})
    outs, run = patched_run("ltxav", net, "FFF", call)
    assert run.adapter.num_blocks == 4 * len(net.transformer_blocks)
    for o in outs:
        assert _equal(o, plain), [(u - v).abs().max().item() for u, v in zip(o, plain)]
    outs, run = patched_run("ltxav", net, "FCS", call, ratio=0.5)
    assert run.stats.tokens_recomputed > 0  # text cross-attention always; the MLPs with per-sample timesteps
    for o in outs:
        for u, v in zip(o, plain):
            assert torch.isfinite(u).all() and float((u - v).norm() / v.norm()) < 1e-4


@pytest.mark.parametrize("mode", ["full", "selective", "light"])
def test_cache_layout_is_what_the_cache_holds(net, mode):
    sched = "FCFC" if mode == "full" else "FCSC"
    memory = CacheMemory(light=True) if mode == "light" else None
    _, run = patched_run("ltxav", net, sched, caller(), ratio=0.5, depth_fraction=0.5, memory=memory)
    layout = run.adapter.cache_layout((VIDEO, AUDIO), 8, None)
    est = estimate_bytes(layout, rows=B, elem_bytes=4, first_selective_block=run.first_selective_block,
                         light=mode == "light", track_tokens=run._track_tokens, keep_input=run._keep_input)
    assert est == run.stats.peak_cache_bytes > 0, (est, run.stats.peak_cache_bytes)


def test_video_only(net):
    call = caller(audio=False)
    try:
        plain = call("ltxav", net, {})
    except RuntimeError as e:  # ComfyUI 0.29's LTXAVModel cannot build RoPE for an empty audio stream
        pytest.skip(f"this host's LTXAVModel does not run without an audio latent ({e})")
    outs, run = patched_run("ltxav", net, "FFCS", call, ratio=0.5)
    assert _equal(outs[0], plain) and _equal(outs[1], plain)
    layout = run.adapter.cache_layout(VIDEO, 8, None)
    est = estimate_bytes(layout, rows=B, elem_bytes=4, first_selective_block=run.first_selective_block,
                         track_tokens=run._track_tokens, keep_input=run._keep_input)
    assert est == run.stats.peak_cache_bytes > 0
