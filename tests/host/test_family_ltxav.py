"""LTX-2 audio-video (``comfy.ldm.lightricks.av_model.LTXAVModel``) through the REAL server, on a tiny
random-weight model of the host's class (test node ProCacheTestTinyDiT, builder in
tests/host_nodes/tiny_ltxav.py).

The audio-video latent is put together as the host's LTX-2 templates do: EmptyLTXVLatentVideo + an empty
audio latent + the host's LTXVConcatAVLatent (a NestedTensor the sampler packs), the prompts go through
LTXVConditioning. The host's empty audio latent node needs the audio VAE checkpoint, so the audio latent
comes from a test node (tests/host_nodes/nodes_ltxav_latents.py: the same zeros from that VAE's layout); the
sampled NestedTensor is packed with the host's comfy.utils.pack_latents for SaveLatent (one file holds
both streams, compared bit for bit).

Checks: all-FULL equals the unpatched graph bit for bit, a selective schedule changes the output finitely,
recomputes tokens and is reported by ProCache Stats, the logged cache estimate (video + audio tokens)
equals the cache peak, then batch 2 at another resolution and frame count with the same patched MODEL,
and ProCache Apply alone picks the family's auto preset. ComfyUI 0.3.75 has no LTX-2: skipped there.
"""
from __future__ import annotations

import pytest

from test_families_server import check_batch_and_resolution, check_family, latent, prompt, stats_text

CONTEXT = 48   # caption_channels of the tiny model; the prompt is the video and audio halves: 2 x 48 wide


def _has_ltxav(client) -> bool:
    info = client.object_info("ProCacheTestTinyDiT")["ProCacheTestTinyDiT"]["input"]["required"]["family"]
    options = info[0] if isinstance(info[0], list) else info[1].get("options", [])
    return "ltxav" in options and "LTXVConcatAVLatent" in client.object_info("LTXVConcatAVLatent")


@pytest.fixture()
def client(comfy_server):
    if not _has_ltxav(comfy_server):
        pytest.skip("this ComfyUI host has no LTX-2 audio-video model (comfy.ldm.lightricks.av_model: ComfyUI 0.8 on)")
    return comfy_server


def make(*, width: int = 64, height: int = 64, length: int = 9, batch: int = 1, **kw) -> dict:
    """Text to audio-video: video latent (128 channels, 32x spatial, 8x temporal) + audio latent of the
    same duration at 25 fps, concatenated by the host's node."""
    model = {"class_type": "ProCacheTestTinyDiT", "inputs": {"family": "ltxav", "seed": 4, "context_dim": CONTEXT}}
    lat = {"class_type": "LTXVConcatAVLatent", "inputs": {"video_latent": ["vlat", 0], "audio_latent": ["alat", 0]}}
    extra = {
        "vlat": {"class_type": "EmptyLTXVLatentVideo",
                 "inputs": {"width": width, "height": height, "length": length, "batch_size": batch}},
        "alat": {"class_type": "ProCacheTestLTXAVEmptyAudio",
                 "inputs": {"frames_number": length, "frame_rate": 25, "batch_size": batch}},
        # the text mask a Gemma / T5 encoder attaches, then the host's frame-rate conditioning
        "posm": {"class_type": "ProCacheTestAttentionMask", "inputs": {"conditioning": ["pos", 0]}},
        "negm": {"class_type": "ProCacheTestAttentionMask", "inputs": {"conditioning": ["neg", 0]}},
        "ltxc": {"class_type": "LTXVConditioning",
                 "inputs": {"positive": ["posm", 0], "negative": ["negm", 0], "frame_rate": 25.0}},
        "flat": {"class_type": "ProCacheTestPackLatent", "inputs": {"samples": ["sampler", 0]}},
    }
    p = prompt(model, lat, cond_dim=2 * CONTEXT, extra=extra, **kw)
    p["sampler"]["inputs"].update({"positive": ["ltxc", 0], "negative": ["ltxc", 1]})
    p["save"]["inputs"]["samples"] = ["flat", 0]
    if "stats" in p:  # the packed latent is the sampler's own output: Stats matches it to its run
        p["stats"]["inputs"]["samples"] = ["flat", 0]
    return p


def _packed_size(width: int, height: int, length: int) -> int:
    video = 128 * ((length - 1) // 8 + 1) * (height // 32) * (width // 32)
    audio = 8 * length * 16   # 25 audio latents per second at 25 fps: one per frame
    return video + audio


def test_ltxav_audio_video(client):
    res = check_family(client, "ltxav", make, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 1, _packed_size(64, 64, 9)), res["plain"].shape
    assert "(latest run of this MODEL" not in res["text"], res["text"]   # Stats matched its own run
    plain = check_batch_and_resolution(client, "ltxav", make, width=96, height=64, length=17, batch=2)
    assert plain.shape == (2, 1, _packed_size(96, 64, 17)), plain.shape
    log = client.server.log() if client.server else ""
    assert "the ltxav block adapter does not match" not in log, log[-3000:]
    assert "the ltxav block adapter cannot be built" not in log, log[-3000:]
    assert "ltxav block adapter verified" in log, log[-3000:]


def test_ltxav_auto_preset(client):
    """ProCache Apply alone ('auto') picks the video preset and caches."""
    p = make(prefix="ltxav_auto", steps=12)
    p["apply"] = {"class_type": "ProCacheApply", "inputs": {"model": ["model", 0], "preset": "auto", "short_run_floor": 0}}
    p["sampler"]["inputs"]["model"] = ["apply", 0]
    p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["flat", 0], "model": ["apply", 0]}}
    entry = client.run(p, timeout=900)
    text = stats_text(entry)
    assert "[ltxav]" in text and " cached" in text, text
    log = client.server.log() if client.server else ""
    assert "preset 'auto' -> 'wan-30-balanced' for a ltxav model" in log, log[-3000:]
    assert latent(client, entry).isfinite().all()
