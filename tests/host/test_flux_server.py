"""A tiny Flux.1 graph through the REAL server, with and without ProCache.

The model comes from the test-only node ProCacheTestTinyFlux (host Flux classes, hidden 256, 2 double +
2 single blocks): a Flux checkpoint the host's detection accepts cannot be small (it fixes hidden 3072).
Conditioning: seeded T5-like tokens of context_in_dim plus a 768-d pooled_output (CLIP-L pooled, the
`y` input of Flux's vector_in); FluxGuidance sets the distilled guidance. 256x256, 4 euler steps.
"""
from __future__ import annotations

import re

import torch

from workflows import flux_conditioning, sample_and_save, sample_through_procache, saved_latent, stats_line

CTX = 64


def flux_prompt(prefix: str, procache: dict | None = None) -> dict:
    p = {
        "flux": {"class_type": "ProCacheTestTinyFlux",
                 "inputs": {"seed": 5, "depth": 2, "depth_single_blocks": 2, "context_in_dim": CTX}},
        **flux_conditioning(CTX),
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        **sample_and_save("flux", positive="guid", prefix=prefix, steps=4, cfg=1.0),
    }
    if procache is not None:
        sample_through_procache(p, "flux", procache)
    return p



def test_flux_graph_all_full_bitwise_and_schedule_saves_blocks(comfy_server):
    plain = saved_latent(comfy_server, comfy_server.run(flux_prompt("flux_plain"), timeout=600))
    assert plain.shape == (1, 16, 32, 32) and torch.isfinite(plain).all()

    full = comfy_server.run(flux_prompt("flux_ffff", {"actions": "FFFF"}), timeout=600)
    assert torch.equal(saved_latent(comfy_server, full), plain)
    assert "[flux]" in stats_line(full) and "(4 full / 0 selective / 0 cached)" in stats_line(full)

    cached = comfy_server.run(flux_prompt("flux_fcfc", {"actions": "FCFC"}), timeout=600)
    lat = saved_latent(comfy_server, cached)
    text = stats_line(cached)
    print(text)
    assert "(2 full / 0 selective / 2 cached)" in text, text
    m = re.search(r"blocks computed ([\d.]+)% of full \(([\d.]+) of (\d+) block evals saved\)", text)
    assert m and float(m.group(1)) < 100.0 and float(m.group(2)) > 0, text
    # block evals count engine blocks: each double block is two (image and text stream), so
    # (2 double x 2 + 2 single) x 4 evaluations (cfg 1: one per step) = 24; the 2 cached steps save 12
    assert (m.group(1), m.group(2), m.group(3)) == ("50.0", "12.0", "24"), text
    assert "4 model evals" in text, text
    err = float((lat.double() - plain.double()).norm() / plain.double().norm())
    print(f"rel L2 FCFC vs plain: {err:.5f}")
    assert torch.isfinite(lat).all() and 0.0 < err < 0.5, err
    assert comfy_server.get("/system_stats").ok
