"""Variants of families ProCache already adapts, through the REAL server: Flux.2 klein (family ``flux2``),
Qwen-Image layered (``qwen_image``) and Chroma Radiance (``chroma``).

Tiny random-weight models of the host's own classes (test node ProCacheTestTinyDiT, builders in
tests/host_nodes/tiny_family_variants.py) with the host's own latent nodes. Per variant: unpatched vs all-FULL
(equal bit for bit), a selective schedule (changes the output finitely, ProCache Stats names the family,
the logged cache estimate equals the cache peak), then batch 2 at another size with the same patched
MODEL, and one more estimate check on an input that exercises what differs in the variant: klein's
distilled 4-step CFG-1 run, layered's layer axis and reference image, Radiance's pixel sizes that are
not a multiple of its 16-pixel patch. The estimates are compared at the log's 0.1 MiB resolution, so
the sizes are chosen for the tokens a wrong layout would miss to show there.

A variant the host lacks is skipped, naming the host: klein needs ComfyUI 0.29 (0.8.1 has no klein text
encoder and fixes Flux.2's head count), layered 0.8 or later.
"""
from __future__ import annotations

import re

import pytest

from test_families_server import check_batch_and_resolution, check_family, latent, prompt, rel_l2, stats_text

ESTIMATE = re.compile(r"ProCache: cache estimate ([\d.]+) MiB full / ([\d.]+) MiB light \((\d+) rows")
SELECTIVE = {"enabled": True, "ratio": 0.5, "depth_fraction": 0.5, "w_staleness": 1.0, "w_input_change": 1.0,
             "w_output_norm": 0.25, "w_spatial": 0.5}
POOLED = 16   # Flux-based model_bases read a pooled_output (no vector_in here: unused)


def need(client, variant: str, label: str, *nodes: str, why: str = "") -> None:
    """Skip unless the host offers the tiny ``variant`` and the host's ``nodes`` (the reason names the host)."""
    info = client.object_info("ProCacheTestTinyDiT")["ProCacheTestTinyDiT"]["input"]["required"]["family"]
    options = info[0] if isinstance(info[0], list) else info[1].get("options", [])
    all_nodes = client.object_info()
    missing = ([] if variant in options else [f"test network {variant}"]) + [n for n in nodes if n not in all_nodes]
    if missing:
        version = client.get("/system_stats").json().get("system", {}).get("comfyui_version", "?")
        pytest.skip(f"ComfyUI {version} has no {label}{f' ({why})' if why else ''}: {', '.join(missing)} missing")


def tiny(variant: str) -> dict:
    return {"class_type": "ProCacheTestTinyDiT", "inputs": {"family": variant, "seed": 4, "context_dim": 48}}


def check_estimate(client, family: str, make, *, rows: int, cached: str = "FCSC", **kw):
    """The unpatched graph, then a selective schedule: finite and changed, ProCache Stats names
    ``family``, and the estimate this run logged before its first step (``rows`` = batch x CFG streams)
    equals the cache peak it reports. Returns (stats text, the unpatched latent)."""
    steps = len(cached)
    plain = latent(client, client.run(make(prefix=f"{family}_estp", steps=steps, **kw), timeout=900))
    before = len(ESTIMATE.findall(client.server.log()))
    entry = client.run(make(prefix=f"{family}_est", steps=steps,
                            procache={"actions": cached, "selective": SELECTIVE}, **kw), timeout=900)
    est = ESTIMATE.findall(client.server.log())
    text = stats_text(entry)
    peak = re.search(r"cache peak ([\d.]+) MiB", text)
    assert len(est) == before + 1 and peak, (est[before:], text)
    assert est[-1][0] == peak.group(1) and int(est[-1][2]) == rows, (family, est[-1], text)
    lat = latent(client, entry)
    assert f"[{family}]" in text and lat.shape == plain.shape and lat.isfinite().all(), text
    assert 0.0 < rel_l2(lat, plain) < 1.0
    return text, plain


# -- Flux.2 klein -------------------------------------------------------------------------------------

def klein(*, width: int = 64, height: int = 64, batch: int = 1, procache: dict | None = None, **kw) -> dict:
    """Text-to-image with klein: no FluxGuidance (no guidance embedding); ``short_run_floor`` 0, so the
    4-step runs follow their schedule."""
    if procache is not None:
        procache = {**procache, "apply": {"short_run_floor": 0}}
    lat = {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}}
    return prompt(tiny("flux2_klein"), lat, cond_dim=48, pooled_dim=POOLED, procache=procache, **kw)


def test_flux2_klein(comfy_server):
    """Flux.2 klein (Flux network, global modulation, no guidance embedding, 1 double + 3 single blocks):
    detected as flux2; 4 steps with CFG 2 (klein base) all-FULL bitwise and selective; batch 2 at
    another size; then the distilled use, 4 steps at CFG 1 (one row per sample): the estimate counts
    the prompt padded to 512 tokens as the host's model_base.Flux2 does (8 tokens in, 512 held)."""
    need(comfy_server, "flux2_klein", "Flux.2 klein", "EmptyFlux2LatentImage",
         why="klein needs the klein text encoder and a head count read from the width: ComfyUI 0.29")
    res = check_family(comfy_server, "flux2", klein, steps=4, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 128, 4, 4)
    plain = check_batch_and_resolution(comfy_server, "flux2", klein, cached="FCSC", width=96, height=64, batch=2)
    assert plain.shape == (2, 128, 4, 6)
    text, plain = check_estimate(comfy_server, "flux2", klein, rows=1, cached="FCSC", cfg=1.0, width=128)
    assert plain.shape == (1, 128, 4, 8)
    assert "(1 full / 1 selective / 2 cached)" in text, text


# -- Qwen-Image layered -------------------------------------------------------------------------------

def qwen_layered(*, width: int = 128, height: int = 128, layers: int = 3, batch: int = 1,
                 ref: tuple[int, int] = (80, 48), **kw) -> dict:
    """The host's layered empty latent (batch, 16, layers + 1, h/8, w/8) and, as in the layered workflow,
    the input image as a reference latent of both prompts (here a zero latent of size ``ref`` in pixels:
    (1, 16, 1, h/8, w/8), its own tokens in the image stream)."""
    lat = {"class_type": "EmptyQwenImageLayeredLatentImage",
           "inputs": {"width": width, "height": height, "layers": layers, "batch_size": batch}}
    extra = {
        "ref": {"class_type": "EmptyQwenImageLayeredLatentImage",
                "inputs": {"width": ref[0], "height": ref[1], "layers": 0, "batch_size": 1}},
        "pos_ref": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["pos", 0], "latent": ["ref", 0]}},
        "neg_ref": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["neg", 0], "latent": ["ref", 0]}},
    }
    p = prompt(tiny("qwen_image_layered"), lat, cond_dim=48, extra=extra, **kw)
    p["sampler"]["inputs"].update({"positive": ["pos_ref", 0], "negative": ["neg_ref", 0]})
    return p


def test_qwen_image_layered(comfy_server):
    """Qwen-Image layered (additional timestep embedding, negative reference index, 5-D latents):
    detected as qwen_image; all-FULL bitwise and selective on 4 layers of 16 x 16 tokens plus a
    15-token reference (the estimate counts every layer); batch 2 at another size and layer count; one
    more estimate check with a larger reference image."""
    need(comfy_server, "qwen_image_layered", "Qwen-Image layered", "EmptyQwenImageLayeredLatentImage", "ReferenceLatent")
    res = check_family(comfy_server, "qwen_image", qwen_layered, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 16, 4, 16, 16)
    plain = check_batch_and_resolution(comfy_server, "qwen_image", qwen_layered, width=96, height=64, layers=1,
                                       batch=2)
    assert plain.shape == (2, 16, 2, 8, 12)
    _, plain = check_estimate(comfy_server, "qwen_image", qwen_layered, rows=4, width=96, height=64, layers=2,
                              batch=2, ref=(160, 96))
    assert plain.shape == (2, 16, 3, 8, 12)


# -- Chroma Radiance ----------------------------------------------------------------------------------

def radiance(*, width: int = 64, height: int = 64, batch: int = 1, scale: float | None = None, **kw) -> dict:
    """The host's pixel-space empty latent (batch, 3, height, width); ``scale``: resized by LatentUpscaleBy
    (sizes the empty-latent node's 16-pixel step does not offer, as a loaded image has)."""
    lat = {"class_type": "EmptyChromaRadianceLatentImage",
           "inputs": {"width": width, "height": height, "batch_size": batch}}
    extra = {}
    if scale is not None:
        extra["latent"] = {"class_type": "LatentUpscaleBy", "inputs": {
            "samples": ["empty", 0], "upscale_method": "nearest-exact", "scale_by": scale}}
        extra["empty"] = lat
    return prompt(tiny("chroma_radiance"), lat, cond_dim=48, pooled_dim=POOLED, extra=extra, **kw)


def test_chroma_radiance(comfy_server):
    """Chroma Radiance (Chroma's blocks on 16 x 16 pixel patches, NeRF head): detected as chroma;
    all-FULL bitwise and selective at 64 x 64 pixels (16 tokens); batch 2 at 96 x 64; then batch 2 at
    154 x 38 pixels: the host pads to 48 x 160, so 3 x 10 tokens (rounding to the nearest patch would
    count 2 x 10), and the estimate equals the cache peak."""
    need(comfy_server, "chroma_radiance", "Chroma Radiance", "EmptyChromaRadianceLatentImage", "LatentUpscaleBy")
    res = check_family(comfy_server, "chroma", radiance, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 3, 64, 64)
    plain = check_batch_and_resolution(comfy_server, "chroma", radiance, width=96, height=64, batch=2)
    assert plain.shape == (2, 3, 64, 96)
    _, plain = check_estimate(comfy_server, "chroma", radiance, rows=4, width=256, height=64, batch=2, scale=0.6)
    assert plain.shape == (2, 3, 38, 154)
    log = comfy_server.server.log()
    assert "the chroma block adapter does not match" not in log and "cannot be built" not in log
