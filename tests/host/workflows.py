"""Builders of API-format prompts for the tiny test models, so tests state only what they vary."""
from __future__ import annotations

import copy
from typing import Any

PIXART_ALPHA = "procache-tiny-pixart-alpha.safetensors"
PIXART_SIGMA = "procache-tiny-pixart-sigma.safetensors"


def pixart_prompt(*, steps: int = 6, width: int = 512, height: int = 512, seed: int = 0, cfg: float = 2.0,
                  batch: int = 1, sampler: str = "euler", scheduler: str = "normal",
                  unet: str = PIXART_ALPHA, prefix: str = "t", procache: dict[str, Any] | None = None,
                  decode: bool = False) -> dict:
    """PixArt text-to-image prompt with a seeded stand-in text embedding, ending in SaveLatent.

    `procache`, when given, inserts the pack's nodes: keys `preset` or `actions` (Schedule Loader),
    optional `selective` (dict of Selective Compute Settings inputs) and `apply` (extra Apply inputs).
    """
    p: dict[str, dict] = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        **text_conditioning(4096),
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        **sample_and_save("unet", prefix=prefix, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                          scheduler=scheduler),
    }
    if decode:
        p["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}
        p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}}
        p["image"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    if procache is not None:
        add_procache(p, "unet", procache)
        p["sampler"]["inputs"]["model"] = ["apply", 0]
    return p


def text_conditioning(dim: int, pooled_dim: int = 0) -> dict[str, dict]:
    """Nodes "pos" (seed 1) and "neg" (seed 2): seeded stand-in text embeddings of 8 tokens of `dim`
    (plus a pooled vector when `pooled_dim` > 0), one pair shared by every test graph."""
    return {name: {"class_type": "ProCacheTestConditioning",
                   "inputs": {"seed": seed, "tokens": 8, "dim": dim, "pooled_dim": pooled_dim, "scale": 1.0}}
            for name, seed in (("pos", 1), ("neg", 2))}


def flux_conditioning(dim: int) -> dict[str, dict]:
    """`text_conditioning` for Flux.1: a 768-d pooled vector (CLIP-L) and FluxGuidance 3.5 on the
    positive (node "guid")."""
    pair = text_conditioning(dim, 768)
    return {"pos": pair["pos"],
            "guid": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 3.5}},
            "neg": pair["neg"]}


def sample_and_save(model: str, *, prefix: str, positive: str = "pos", negative: str = "neg", seed: int = 0,
                    steps: int = 4, cfg: float = 2.0, sampler: str = "euler", scheduler: str = "simple") -> dict[str, dict]:
    """Nodes "sampler" (KSampler, denoise 1, on the node "latent") and "save" (SaveLatent)."""
    return {
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": [model, 0], "positive": [positive, 0], "negative": [negative, 0],
            "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }


def sample_through_procache(p: dict, model_node: str, procache: dict[str, Any]) -> dict:
    """`add_procache` after `model_node`, the sampler fed from ProCache Apply, and ProCache Stats after it."""
    add_procache(p, model_node, procache)
    p["sampler"]["inputs"]["model"] = ["apply", 0]
    p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply", 0]}}
    return p


def add_procache(p: dict, model_node: str, procache: dict[str, Any]) -> dict:
    """Inserts Schedule Loader (+ Selective Compute Settings) + ProCache Apply after `model_node`."""
    procache = copy.deepcopy(procache)
    p["schedule"] = {"class_type": "ProCacheScheduleLoader", "inputs": {
        "preset": procache.get("preset", "pixart-alpha-dpm20-paper"),
        "schedule_text": procache.get("actions", "")}}
    apply_inputs = {"model": [model_node, 0], "schedule": ["schedule", 0]}
    if "selective" in procache:
        p["selective"] = {"class_type": "ProCacheSelectiveSettings", "inputs": procache["selective"]}
        apply_inputs["selective"] = ["selective", 0]
    apply_inputs.update(procache.get("apply", {}))
    p["apply"] = {"class_type": "ProCacheApply", "inputs": apply_inputs}
    return p


def saved_latent(client, entry: dict):
    """The one latent a finished prompt saved (SaveLatent), as a tensor."""
    from comfy_client import load_latent

    files = client.output_files(entry, "latents")
    assert len(files) == 1, entry.get("outputs")
    return load_latent(files[0])


def stats_line(entry: dict) -> str:
    """The "ProCache [family] run: ..." line ProCache Stats showed for a finished prompt."""
    texts = [t for o in entry["outputs"].values() for t in (o.get("text") or []) if str(t).startswith("ProCache [")]
    assert texts, entry["outputs"]
    return texts[0]
