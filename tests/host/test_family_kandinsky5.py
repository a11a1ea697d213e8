"""Kandinsky 5 video and image (``comfy.ldm.kandinsky5``) through the REAL server, on tiny random-weight
models of the host's class (test node ProCacheTestTinyDiT, builders in tests/host_nodes/tiny_kandinsky5.py).

Per variant: the unpatched graph, an all-FULL schedule (equal bit for bit: the host's ``addcmul``
residuals are fused branches), a selective schedule (changes the output finitely, recomputes tokens,
ProCache Stats reports it, the logged cache estimate equals the cache peak), then batch 2 at another
resolution (video: and frame count) with the same patched MODEL, and the auto preset of the family.
The video latent and conditioning come from the host's own Kandinsky5ImageToVideo node (text-to-video:
no start image), the image latent from EmptySD3LatentImage (Kandinsky 5 Image uses Flux's latent format).
ComfyUI 0.3.75 has no Kandinsky 5: skipped there.
"""
from __future__ import annotations

import re

import pytest

from comfy_client import COMFY_DIR
from test_families_server import check_batch_and_resolution, check_family, latent, prompt, stats_text

POOLED = 16   # tests/host_nodes/tiny_kandinsky5.py POOLED_DIM: the pooled CLIP vector Kandinsky 5 reads as y


def _host_version() -> str:
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", (COMFY_DIR / "comfyui_version.py").read_text()) \
        if (COMFY_DIR / "comfyui_version.py").exists() else None
    return m.group(1) if m else "unknown"


# decided from the host's tree, so a host without the family does not start a server for nothing
pytestmark = pytest.mark.skipif(not (COMFY_DIR / "comfy" / "ldm" / "kandinsky5" / "model.py").exists(),
                                reason=f"ComfyUI {_host_version()} ({COMFY_DIR.name}) has no Kandinsky 5 "
                                       "(comfy.ldm.kandinsky5, ComfyUI 0.8 and later)")


@pytest.fixture()
def client(comfy_server):
    """The server, once it is known to offer the tiny Kandinsky 5 models and the host's Kandinsky 5 node
    (a host with the family that lacks them is a failure, not a skip)."""
    info = comfy_server.object_info("ProCacheTestTinyDiT")["ProCacheTestTinyDiT"]["input"]["required"]["family"]
    options = info[0] if isinstance(info[0], list) else info[1].get("options", [])
    assert {"kandinsky5", "kandinsky5_image"} <= set(options), options
    assert "Kandinsky5ImageToVideo" in comfy_server.object_info("Kandinsky5ImageToVideo")
    return comfy_server


def tiny_kandinsky5(family: str):
    model = {"class_type": "ProCacheTestTinyDiT", "inputs": {"family": family, "seed": 4, "context_dim": 48}}

    # default sizes: 512 video / 576 image tokens, so the cache (~2 MiB) is large enough for the
    # estimate == peak check (both logged to 0.1 MiB) to catch a wrong token count
    size = 384 if family == "kandinsky5_image" else 256

    def make(*, width: int = size, height: int = size, batch: int = 1, length: int = 5, **kw) -> dict:
        if family == "kandinsky5_image":
            lat = {"class_type": "EmptySD3LatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": batch}}
            return prompt(model, lat, cond_dim=48, pooled_dim=POOLED, **kw)
        # text-to-video: the host's node passes the prompts through and makes the empty video latent
        # (16 channels, 8x spatial, 4x temporal); its VAE input is only read with a start image
        i2v = {"class_type": "Kandinsky5ImageToVideo", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["vae", 0], "width": width, "height": height,
            "length": length, "batch_size": batch}}
        extra = {"vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}}
        p = prompt(model, i2v, cond_dim=48, pooled_dim=POOLED, extra=extra, **kw)
        p["sampler"]["inputs"].update({"positive": ["latent", 0], "negative": ["latent", 1],
                                       "latent_image": ["latent", 2]})
        return p

    return make


def check_auto_preset(client, family: str, make, preset: str) -> None:
    """ProCache Apply alone ('auto') picks the family's preset and caches (short runs follow it)."""
    p = make(prefix=f"{family}_auto", steps=12)
    p["apply"] = {"class_type": "ProCacheApply",
                  "inputs": {"model": ["model", 0], "preset": "auto", "short_run_floor": 0}}
    p["sampler"]["inputs"]["model"] = ["apply", 0]
    p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply", 0]}}
    entry = client.run(p, timeout=900)
    text = stats_text(entry)
    m = re.search(r"\((\d+) full / (\d+) selective / (\d+) cached\)", text)
    assert f"[{family}]" in text and m and int(m.group(3)) > 0, text
    log = client.server.log() if client.server else ""
    assert f"preset 'auto' -> '{preset}' for a {family} model" in log, log[-3000:]
    assert latent(client, entry).isfinite().all()


def _verified(client, family: str) -> None:
    """The first FULL step compared the adapter's blocks with the host's own; nothing fell back."""
    log = client.server.log() if client.server else ""
    assert f"ProCache: {family} block adapter verified against ComfyUI" in log, log[-3000:]
    assert f"the {family} block adapter does not match" not in log, log[-3000:]
    assert f"the {family} block adapter cannot be built" not in log, log[-3000:]


def test_kandinsky5_video(client):
    """Kandinsky 5 video: all-FULL bitwise, selective schedule, batch 2 at another size and frame
    count, auto preset (Wan's)."""
    make = tiny_kandinsky5("kandinsky5")
    res = check_family(client, "kandinsky5", make, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 16, 2, 32, 32)
    plain = check_batch_and_resolution(client, "kandinsky5", make, width=96, height=64, batch=2, length=9)
    assert plain.shape == (2, 16, 3, 8, 12)
    check_auto_preset(client, "kandinsky5", make, "wan-30-balanced")
    _verified(client, "kandinsky5")


def test_kandinsky5_image(client):
    """Kandinsky 5 image: all-FULL bitwise, selective schedule, batch 2 at another size (a 3 x 5 token
    grid), auto preset (Flux's)."""
    make = tiny_kandinsky5("kandinsky5_image")
    res = check_family(client, "kandinsky5_image", make, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 16, 48, 48)
    plain = check_batch_and_resolution(client, "kandinsky5_image", make, width=80, height=48, batch=2)
    assert plain.shape == (2, 16, 6, 10)
    check_auto_preset(client, "kandinsky5_image", make, "flux-28-balanced")
    _verified(client, "kandinsky5_image")
