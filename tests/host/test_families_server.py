"""Families beyond PixArt/Flux.1/SD3/Wan through the REAL server, on tiny random-weight models.

One server session for all of them (start-up dominates). Per model: the unpatched graph, the same graph
with an all-FULL schedule (must be equal bit for bit), and a schedule with reused steps (must change
the output, stay finite, and be reported by ProCache Stats), plus CFG, batch 2 and a change of
resolution (video: of frame count) between runs of one patched MODEL.

The model-level fallback (nodes/adapters/generic.py) is exercised with a tiny SDXL-style UNet (test node);
HunyuanVideo 1.0 comes from a tiny checkpoint through the host's UNETLoader (scripts/make_tiny_models.py),
the other families from the test node ProCacheTestTinyDiT (their checkpoints cannot be small).
"""
from __future__ import annotations

import copy
import re

import pytest
import torch

from comfy_client import load_latent
from workflows import sample_and_save, sample_through_procache, text_conditioning

HUNYUAN_VIDEO = "procache-tiny-hunyuan-video.safetensors"
HUNYUAN_IMAGE21 = "procache-tiny-hunyuan-image21.safetensors"


def prompt(model: dict, latent: dict, *, cond_dim: int, pooled_dim: int = 0, cfg: float = 2.0, steps: int = 4,
           sampler: str = "euler", scheduler: str = "simple", prefix: str = "fam",
           procache: dict | None = None, extra: dict | None = None) -> dict:
    """A text-to-image/video graph: `model` and `latent` are the nodes (API format) named "model"/"latent"."""
    p = {
        "model": copy.deepcopy(model),
        **text_conditioning(cond_dim, pooled_dim),
        "latent": copy.deepcopy(latent),
        **sample_and_save("model", prefix=prefix, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler),
    }
    p.update(copy.deepcopy(extra or {}))
    if procache is not None:
        sample_through_procache(p, "model", procache)
    return p


def latent(client, entry) -> torch.Tensor:
    files = client.output_files(entry, "latents")
    assert len(files) == 1, entry.get("outputs")
    return load_latent(files[0])


def stats_text(entry) -> str:
    texts = [t for o in entry["outputs"].values() for t in (o.get("text") or []) if str(t).startswith("ProCache [")]
    assert texts, entry["outputs"]
    return texts[0]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_family(client, family: str, make, *, steps: int = 4, cached: str = "FCFC",
                 selective: bool = False) -> dict[str, torch.Tensor]:
    """Unpatched vs all-FULL (equal) vs `cached` (different); returns the latents by name."""
    plain = latent(client, client.run(make(prefix=f"{family}_plain", steps=steps), timeout=900))
    assert torch.isfinite(plain).all()
    full_entry = client.run(make(prefix=f"{family}_full", steps=steps, procache={"actions": "F" * steps}), timeout=900)
    full = latent(client, full_entry)
    assert torch.equal(full, plain), f"{family}: all-FULL differs, max {(full - plain).abs().max().item()}"
    assert f"[{family}]" in stats_text(full_entry), stats_text(full_entry)
    pc = {"actions": cached}
    if selective:
        pc["selective"] = {"enabled": True, "ratio": 0.5, "depth_fraction": 0.5, "w_staleness": 1.0,
                           "w_input_change": 1.0, "w_output_norm": 0.25, "w_spatial": 0.5}
    entry = client.run(make(prefix=f"{family}_cached", steps=steps, procache=pc), timeout=900)
    lat = latent(client, entry)
    text = stats_text(entry)
    print(text)
    n_reused = cached.count("C") + cached.count("S")
    m = re.search(r"\((\d+) full / (\d+) selective / (\d+) cached\)", text)
    assert m and int(m.group(1)) == cached.count("F") and int(m.group(2)) + int(m.group(3)) == n_reused, text
    # the size logged before the first step (bridge: latent shape, the sampler's conds, the family's
    # layout) is what the cache then held (ProCache Stats; both to 0.1 MiB)
    est = re.findall(r"ProCache: cache estimate ([\d.]+) MiB full / ([\d.]+) MiB light \((\d+) rows",
                     client.server.log() if client.server else "")
    peak = re.search(r"cache peak ([\d.]+) MiB", text)
    assert est and peak and est[-1][0] == peak.group(1) and est[-1][2] == "2", (family, est[-1:], text)
    err = rel_l2(lat, plain)
    print(f"{family}: rel L2 {cached} vs plain {err:.5f}")
    assert torch.isfinite(lat).all() and 0.0 < err < 1.0, err
    if selective:
        tokens = re.search(r"(\d+) tokens recomputed", text)
        assert tokens and int(tokens.group(1)) > 0, text
    return {"plain": plain, "full": full, "cached": lat, "text": text}


def check_batch_and_resolution(client, family: str, make, cached: str = "FCSC", **kw) -> torch.Tensor:
    """Batch 2 at another resolution (video: frame count) with the same patched MODEL graph."""
    steps = len(cached)
    plain = latent(client, client.run(make(prefix=f"{family}_b2p", steps=steps, **kw), timeout=900))
    entry = client.run(make(prefix=f"{family}_b2c", steps=steps, procache={"actions": cached}, **kw), timeout=900)
    lat = latent(client, entry)
    assert lat.shape == plain.shape and torch.isfinite(lat).all()
    err = rel_l2(lat, plain)
    print(f"{family}: batch/resolution change, rel L2 {cached} vs plain {err:.5f}; {stats_text(entry)}")
    assert 0.0 < err < 1.0, err
    assert f"[{family}]" in stats_text(entry)
    return plain


# -- model-level fallback ----------------------------------------------------------------------------

SDXL = {"class_type": "ProCacheTestTinySDXL", "inputs": {"seed": 3, "context_dim": 64}}


def sdxl(*, width: int = 64, height: int = 64, batch: int = 1, **kw) -> dict:
    lat = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}}
    return prompt(SDXL, lat, cond_dim=64, pooled_dim=1280, **kw)


def hunyuan_video(*, length: int = 5, width: int = 64, height: int = 64, batch: int = 1, **kw) -> dict:
    model = {"class_type": "UNETLoader", "inputs": {"unet_name": HUNYUAN_VIDEO, "weight_dtype": "default"}}
    lat = {"class_type": "EmptyHunyuanLatentVideo",
           "inputs": {"width": width, "height": height, "length": length, "batch_size": batch}}
    return prompt(model, lat, cond_dim=64, pooled_dim=768, **kw)


def test_generic_sdxl_unet_schedule_only(comfy_server):
    """A UNet (no block adapter): all-FULL equals unpatched, reused steps change the output (CFG 2), a
    selective step acts as cached, the Apply log says schedule-only; then batch 2 at another
    resolution with the same patched MODEL."""
    res = check_family(comfy_server, "generic", sdxl, cached="FCSC")
    assert "(1 full / 0 selective / 3 cached)" in res["text"], res["text"]  # S runs as C: nothing token-local
    log = comfy_server.server.log() if comfy_server.server else ""
    assert "UNetModel (SDXL), which has no ProCache block adapter: schedule-only caching" in log, log[-3000:]
    assert "no selective compute" in log
    plain = check_batch_and_resolution(comfy_server, "generic", sdxl, cached="FCFC", width=96, height=64, batch=2)
    assert plain.shape == (2, 4, 8, 12)


def test_generic_ancestral_sampler_is_deterministic(comfy_server):
    """Reused steps return the cached clean estimate, so with deterministic Euler a cached step is the
    same as reusing the model output: an ancestral sampler (fresh noise each step) still ends finite and
    close, and two runs of the same prompt are identical (determinism)."""
    a = latent(comfy_server, comfy_server.run(
        sdxl(prefix="generic_anc1", sampler="euler_ancestral", procache={"actions": "FCFC"}), timeout=900))
    plain = latent(comfy_server, comfy_server.run(sdxl(prefix="generic_anc0", sampler="euler_ancestral"),
                                                  timeout=900))
    # the same prompt again, after another one (so the host's output cache no longer holds it and the
    # sampler runs again): same output, nothing leaks between runs
    b = latent(comfy_server, comfy_server.run(
        sdxl(prefix="generic_anc2", sampler="euler_ancestral", procache={"actions": "FCFC"}), timeout=900))
    assert torch.equal(a, b)
    assert torch.isfinite(a).all() and 0.0 < rel_l2(a, plain) < 1.0


def test_hunyuan_video_checkpoint_and_frame_change(comfy_server):
    """HunyuanVideo 1.0 from a checkpoint through UNETLoader (the real detection and loader): all-FULL
    equal, a selective schedule recomputes tokens, then batch 2 at another frame count and width."""
    unets = comfy_server.object_info("UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"]
    names = unets[0] if isinstance(unets[0], list) else unets[1].get("options", [])
    assert HUNYUAN_VIDEO in names, "scripts/make_tiny_models.py did not build the tiny HunyuanVideo"
    res = check_family(comfy_server, "hunyuan_video", hunyuan_video, cached="FCSC", selective=True)
    assert res["plain"].shape == (1, 16, 2, 8, 8)
    plain = check_batch_and_resolution(comfy_server, "hunyuan_video", hunyuan_video, length=9, width=96, batch=2)
    assert plain.shape == (2, 16, 3, 8, 12)
    assert comfy_server.get("/system_stats").ok


def hunyuan_image21(*, width: int = 64, height: int = 64, batch: int = 1, **kw) -> dict:
    model = {"class_type": "UNETLoader", "inputs": {"unet_name": HUNYUAN_IMAGE21, "weight_dtype": "default"}}
    lat = {"class_type": "EmptyHunyuanImageLatent", "inputs": {"width": width, "height": height, "batch_size": batch}}
    return prompt(model, lat, cond_dim=64, **kw)


def test_hunyuan_image21_checkpoint(comfy_server):
    """HunyuanImage 2.1 from a checkpoint (detected by the host as HunyuanImage21: family
    hunyuan_image21, 2-D patches): all-FULL equal, selective schedule, batch 2 at another size."""
    check_family(comfy_server, "hunyuan_image21", hunyuan_image21, cached="FCSC", selective=True)
    plain = check_batch_and_resolution(comfy_server, "hunyuan_image21", hunyuan_image21, width=96, batch=2)
    assert plain.shape == (2, 64, 2, 3)


# -- diffusion-transformer families ----------------------------------------------------------------

def tiny_dit(family: str):
    model = {"class_type": "ProCacheTestTinyDiT", "inputs": {"family": family, "seed": 4, "context_dim": 48}}

    def make(*, width: int = 64, height: int = 64, batch: int = 1, length: int = 9, **kw) -> dict:
        empty = "EmptyFlux2LatentImage" if family == "flux2" else "EmptySD3LatentImage"
        lat = {"class_type": empty, "inputs": {"width": width, "height": height, "batch_size": batch}}
        if family == "ltxv":  # video: 128 channels, 32x spatial, 8x temporal compression
            lat = {"class_type": "EmptyLTXVLatentVideo",
                   "inputs": {"width": width * 2, "height": height, "length": length, "batch_size": batch}}
        if family == "hunyuan_video15":  # video: 32 channels, 16x spatial, 4x temporal compression
            lat = {"class_type": "EmptyHunyuanVideo15Latent",
                   "inputs": {"width": width * 2, "height": height * 2, "length": length, "batch_size": batch}}
        extra = {}
        if family == "flux2":  # distilled guidance, as Flux.2 [dev] workflows set it
            extra["guid"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 4.0}}
        if family == "ltxv":  # the T5 text mask LTX-Video's forward requires
            extra["guid"] = {"class_type": "ProCacheTestAttentionMask", "inputs": {"conditioning": ["pos", 0]}}
            extra["negm"] = {"class_type": "ProCacheTestAttentionMask", "inputs": {"conditioning": ["neg", 0]}}
        if family == "hidream":  # the per-layer Llama states HiDream's blocks read (one layer per block)
            extra["guid"] = {"class_type": "ProCacheTestLlamaLayers", "inputs": {"conditioning": ["pos", 0], "seed": 5, "layers": 4, "tokens": 7, "dim": 40}}
            extra["negm"] = {"class_type": "ProCacheTestLlamaLayers", "inputs": {"conditioning": ["neg", 0], "seed": 6, "layers": 4, "tokens": 7, "dim": 40}}
        # Flux-based models (HunyuanVideo's model_base too) read a pooled_output (unused: no vector_in);
        # HiDream's is its pooled CLIP vector
        pooled = {"flux2": 16, "chroma": 16, "hidream": 32, "hunyuan_video15": 16}.get(family, 0)
        p = prompt(model, lat, cond_dim=48, pooled_dim=pooled, extra=extra, **kw)
        if extra:
            p["sampler"]["inputs"]["positive"] = ["guid", 0]
        if "negm" in extra:
            p["sampler"]["inputs"]["negative"] = ["negm", 0]
        return p
    return make


@pytest.mark.parametrize("family", ["qwen_image", "flux2", "chroma", "z_image", "lumina2", "ltxv",
                                    "cosmos_predict2", "hidream", "hunyuan_video15"])
def test_dit_family(comfy_server, family):
    """Per family: all-FULL equals unpatched bit for bit (Qwen-Image, LTX-Video, Cosmos: the host's
    addcmul residuals are fused branches, see their adapters), a selective schedule recomputes tokens and
    changes the output (CFG 2), then batch 2 at another resolution (video: and frame count)."""
    make = tiny_dit(family)
    res = check_family(comfy_server, family, make, cached="FCSC", selective=True)
    if family == "ltxv":  # video: another frame count too
        plain = check_batch_and_resolution(comfy_server, family, make, width=96, height=64, batch=2, length=17)
        assert plain.shape == (2, 128, 3, 2, 6)
    elif family == "hunyuan_video15":  # 32-channel latent (the host concatenates image condition + mask)
        assert res["plain"].shape == (1, 32, 3, 8, 8)
        plain = check_batch_and_resolution(comfy_server, family, make, width=96, height=64, batch=2, length=5)
        assert plain.shape == (2, 32, 2, 8, 12)
    else:
        plain = check_batch_and_resolution(comfy_server, family, make, width=96, height=64, batch=2)
    assert plain.shape[0] == 2
    log = comfy_server.server.log() if comfy_server.server else ""
    assert "ProCache: cache estimate" in log and "no cache size estimate" not in log  # every family has a layout
