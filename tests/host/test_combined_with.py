"""ProCache together with what users combine it with, through the real server.

* A model whose linears are a quantized-style op (int8 weights dequantized in forward, not a torch
  Linear, as GGUF / int8 packs install them): ProCache runs, gives finite output equal to the same
  model without ProCache on an all-FULL schedule, and logs which adaLN layers it could not split.
"""
from __future__ import annotations

import pytest
import torch

from comfy_client import load_latent

pytestmark = pytest.mark.host


def flux_prompt(model: dict, prefix: str, procache: dict | None = None, steps: int = 3) -> dict:
    p = {
        "model": model,
        "pos": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 1, "tokens": 8, "dim": 64, "pooled_dim": 768, "scale": 1.0}},
        "neg": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 2, "tokens": 8, "dim": 64, "pooled_dim": 768, "scale": 1.0}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 0, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }
    if procache is not None:
        p["apply"] = {"class_type": "ProCacheApply", "inputs": {"model": ["model", 0], **procache}}
        p["sampler"]["inputs"]["model"] = ["apply", 0]
    return p


def latent(client, prompt) -> torch.Tensor:
    entry = client.run(prompt, timeout=600)
    return load_latent(client.output_files(entry, "latents")[0])


INT8 = {"class_type": "ProCacheTestTinyFluxInt8", "inputs": {"seed": 0}}


def test_quantized_style_linears_run_and_are_named_in_the_log(comfy_server):
    srv = comfy_server.server
    before = len(srv.log())
    cached = latent(comfy_server, flux_prompt(INT8, "q8_auto", {"preset": "auto"}))
    log = srv.log()[before:]
    assert torch.isfinite(cached).all()
    line = next((ln for ln in log.splitlines() if "adaLN layers are not split" in ln), None)
    assert line is not None, log[-3000:]
    # 2 double blocks x (img, txt) + 2 single blocks, every one an Int8Linear
    assert "6 of 6 adaLN layers" in line and "Int8Linear is not a torch Linear" in line, line
    # an all-FULL schedule through the same patched blocks reproduces the model without ProCache
    plain = latent(comfy_server, flux_prompt(INT8, "q8_plain"))
    sched = {"class_type": "ProCacheScheduleLoader", "inputs": {"preset": "flux-28-balanced", "schedule_text": "FFF"}}
    full = flux_prompt(INT8, "q8_full", {"schedule": ["sched", 0]})
    full["sched"] = sched
    got = latent(comfy_server, full)
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)
    assert (cached - plain).abs().max() > 0  # the auto preset did reuse something
