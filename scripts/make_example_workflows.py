"""Writes example_workflows/*.json: one UI-format workflow per supported family, as a user drags it in.

Each example uses only core ComfyUI nodes and ProCache's own, the usual model file names, wires
ProCache Stats after the sampler and carries a note saying which weights go where. The examples are
generated from the short descriptions below so that they stay consistent; the web test
(tests/web/test_example_workflows.py) loads every file into the real front end and runs it.

Usage: python scripts/make_example_workflows.py [--check]   (--check: exit 1 when a file is stale)
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "example_workflows"


class Graph:
    """A LiteGraph workflow (format version 0.4) built node by node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, type_: str, pos: tuple[int, int], widgets: list, inputs: list[tuple[str, str]] = (),
             outputs: list[tuple[str, str]] = (), size: tuple[int, int] = (320, 110), title: str | None = None,
             color: str | None = None) -> int:
        nid = len(self.nodes) + 1
        n = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
             "mode": 0,
             "inputs": [{"name": nm, "type": t, "link": None} for nm, t in inputs],
             "outputs": [{"name": nm, "type": t, "links": [], "slot_index": i} for i, (nm, t) in enumerate(outputs)],
             "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            n["title"] = title
        if color:
            n["color"], n["bgcolor"] = color, color
        self.nodes.append(n)
        return nid

    def link(self, src: int, out_slot: int, dst: int, in_name: str) -> None:
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = [i["name"] for i in d["inputs"]].index(in_name)
        typ = s["outputs"][out_slot]["type"]
        assert d["inputs"][slot]["type"] == typ, (s["type"], d["type"], in_name)
        s["outputs"][out_slot]["links"].append(lid)
        d["inputs"][slot]["link"] = lid
        self.links.append([lid, src, out_slot, dst, slot, typ])

    def note(self, pos: tuple[int, int], text: str, size: tuple[int, int] = (420, 260)) -> int:
        return self.node("Note", pos, [text], size=size, title="Which weights go where", color="#432")

    def to_json(self) -> dict:
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "procache/" + self.name)), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4}


# --- shared pieces -------------------------------------------------------------------------------------
M, C, L, V, I = "MODEL", "CONDITIONING", "LATENT", "VAE", "IMAGE"


def apply_node(g: Graph, pos, preset: str = "auto", schedule: bool = False) -> int:
    return g.node("ProCacheApply", pos, [0.0, 1.0, preset, 10, "auto", "auto", "auto", "blocks"],
                  inputs=[("model", M), ("schedule", "PROCACHE_SCHEDULE"), ("selective", "PROCACHE_SELECTIVE")],
                  outputs=[("MODEL", M)], size=(320, 130), title="ProCache Apply" + ("" if schedule else " (auto preset)"))


def stats_node(g: Graph, pos) -> int:
    return g.node("ProCacheStats", pos, [], inputs=[("samples", L), ("model", M)],
                  outputs=[("stats", "STRING"), ("samples", L)], size=(360, 140))


def ksampler(g: Graph, pos, steps: int, cfg: float, sampler: str, scheduler: str, *, model: int, positive: int,
             negative: int, latent: int) -> int:
    """A KSampler fed from output 0 of the nodes `model`, `positive`, `negative` and `latent`."""
    ks = g.node("KSampler", pos, [0, "fixed", steps, cfg, sampler, scheduler, 1.0],
                inputs=[("model", M), ("positive", C), ("negative", C), ("latent_image", L)],
                outputs=[("LATENT", L)], size=(320, 262))
    for src, name in ((model, "model"), (positive, "positive"), (negative, "negative"), (latent, "latent_image")):
        g.link(src, 0, ks, name)
    return ks


def text_encoders(g: Graph, clip_node: int, x: int, y: int, positive: str, negative: str = "") -> tuple[int, int]:
    pos = g.node("CLIPTextEncode", (x, y), [positive], inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", C)],
                 size=(400, 160), title="Positive prompt")
    neg = g.node("CLIPTextEncode", (x, y + 200), [negative], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", C)], size=(400, 120), title="Negative prompt")
    g.link(clip_node, 0, pos, "clip")
    g.link(clip_node, 0, neg, "clip")
    return pos, neg


def tail(g: Graph, sampler: int, apply: int, vae: tuple[int, int], x: int, y: int, save: str,
         video: bool = False) -> None:
    """ProCache Stats after the sampler, then decode and save (an animated WEBP for video)."""
    st = stats_node(g, (x, y))
    g.link(sampler, 0, st, "samples")
    g.link(apply, 0, st, "model")
    dec = g.node("VAEDecode", (x, y + 190), [], inputs=[("samples", L), ("vae", V)], outputs=[("IMAGE", I)],
                 size=(220, 50))
    g.link(st, 1, dec, "samples")
    g.link(vae[0], vae[1], dec, "vae")
    if video:
        sv = g.node("SaveAnimatedWEBP", (x + 400, y), [save, 16.0, False, 90, "default"], inputs=[("images", I)],
                    size=(420, 420))
    else:
        sv = g.node("SaveImage", (x + 400, y), [save], inputs=[("images", I)], size=(420, 440))
    g.link(dec, 0, sv, "images")


# --- the examples ----------------------------------------------------------------------------------------
def pixart_alpha() -> Graph:
    g = Graph("pixart_alpha_procache")
    unet = g.node("UNETLoader", (0, 0), ["PixArt-XL-2-1024-MS.pth", "default"], outputs=[("MODEL", M)])
    clip = g.node("CLIPLoader", (0, 160), ["t5xxl_fp16.safetensors", "pixart", "default"], outputs=[("CLIP", "CLIP")],
                  size=(320, 110))
    vae = g.node("VAELoader", (0, 320), ["vae-ft-mse-840000-ema-pruned.safetensors"], outputs=[("VAE", V)],
                 size=(320, 60))
    sched = g.node("ProCacheScheduleLoader", (380, 0), ["pixart-alpha-dpm20-paper", ""],
                   outputs=[("schedule", "PROCACHE_SCHEDULE"), ("summary", "STRING")], size=(440, 230))
    apply = apply_node(g, (380, 290), schedule=True)
    g.link(unet, 0, apply, "model")
    g.link(sched, 0, apply, "schedule")
    pos, neg = text_encoders(g, clip, 380, 470, "a small cactus with a happy face in the Sahara desert, "
                                                "photograph, high detail")
    lat = g.node("EmptyLatentImage", (0, 440), [1024, 1024, 1], outputs=[("LATENT", L)])
    ks = ksampler(g, (860, 0), 20, 4.5, "dpmpp_2m", "normal", model=apply, positive=pos, negative=neg,
                  latent=lat)
    tail(g, ks, apply, (vae, 0), 860, 320, "ProCache_PixArt")
    g.note((0, 620), "PixArt-α 1024 with ProCache (the paper's 20-step DPM-Solver schedule).\n\n"
           "models/diffusion_models/PixArt-XL-2-1024-MS.pth  (PixArt-alpha/PixArt-alpha on Hugging Face)\n"
           "models/text_encoders/t5xxl_fp16.safetensors  (T5-XXL encoder, as for Flux/SD3)\n"
           "models/vae/vae-ft-mse-840000-ema-pruned.safetensors  (the SD 1.x VAE PixArt-α uses)\n\n"
           "The Schedule Loader shows which steps compute fully (blue), recompute selected tokens (amber) "
           "or reuse cached blocks (grey). Without it, ProCache Apply uses its own 'preset' (auto = the "
           "family's preset). ProCache Stats reports what was saved after each run. PixArt-Σ works the same "
           "(PixArt-Sigma-XL-2-1024-MS.pth, a pixart-sigma preset).")
    return g


def flux_dev() -> Graph:
    g = Graph("flux_dev_procache")
    unet = g.node("UNETLoader", (0, 0), ["flux1-dev.safetensors", "default"], outputs=[("MODEL", M)])
    clip = g.node("DualCLIPLoader", (0, 160), ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                  outputs=[("CLIP", "CLIP")], size=(320, 130))
    vae = g.node("VAELoader", (0, 340), ["ae.safetensors"], outputs=[("VAE", V)], size=(320, 60))
    apply = apply_node(g, (380, 0))
    g.link(unet, 0, apply, "model")
    pos, neg = text_encoders(g, clip, 380, 180, "a red fox reading a newspaper in a cozy library, "
                                                "warm light, 35mm photo")
    guid = g.node("FluxGuidance", (380, 520), [3.5], inputs=[("conditioning", C)], outputs=[("CONDITIONING", C)],
                  size=(320, 60))
    g.link(pos, 0, guid, "conditioning")
    lat = g.node("EmptySD3LatentImage", (0, 460), [1024, 1024, 1], outputs=[("LATENT", L)])
    ks = ksampler(g, (860, 0), 28, 1.0, "euler", "simple", model=apply, positive=guid, negative=neg,
                  latent=lat)
    tail(g, ks, apply, (vae, 0), 860, 320, "ProCache_Flux")
    g.note((0, 640), "Flux.1-dev with ProCache (preset auto -> flux-28-balanced, remapped to your steps).\n\n"
           "models/diffusion_models/flux1-dev.safetensors  (black-forest-labs/FLUX.1-dev; fp8 files work too)\n"
           "models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn)\n"
           "models/vae/ae.safetensors  (the Flux VAE)\n\n"
           "Flux.1-schnell: use flux1-schnell.safetensors with 4 steps. For more control put a ProCache "
           "Schedule Loader in front of ProCache Apply's 'schedule' input.")
    return g


def sd35() -> Graph:
    g = Graph("sd35_large_procache")
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), ["sd3.5_large.safetensors"],
                  outputs=[("MODEL", M), ("CLIP", "CLIP"), ("VAE", V)], size=(320, 100))
    clip = g.node("TripleCLIPLoader", (0, 160), ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
                  outputs=[("CLIP", "CLIP")], size=(320, 110))
    shift = g.node("ModelSamplingSD3", (380, 0), [3.0], inputs=[("model", M)], outputs=[("MODEL", M)], size=(320, 60))
    g.link(ckpt, 0, shift, "model")
    apply = apply_node(g, (380, 100))
    g.link(shift, 0, apply, "model")
    pos, neg = text_encoders(g, clip, 380, 280, "a lighthouse on a cliff at sunset, oil painting")
    lat = g.node("EmptySD3LatentImage", (0, 320), [1024, 1024, 1], outputs=[("LATENT", L)])
    ks = ksampler(g, (860, 0), 28, 4.5, "euler", "sgm_uniform", model=apply, positive=pos, negative=neg,
                  latent=lat)
    tail(g, ks, apply, (ckpt, 2), 860, 320, "ProCache_SD35")
    g.note((0, 500), "SD3.5 Large / Medium with ProCache (preset auto -> sd3-28-balanced).\n\n"
           "models/checkpoints/sd3.5_large.safetensors  (stabilityai/stable-diffusion-3.5-large; the "
           "checkpoint's VAE is used; sd3.5_medium.safetensors works the same)\n"
           "models/text_encoders/clip_g.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors\n\n"
           "ModelSamplingSD3 shift 3 is the model's default.")
    return g


def wan21_t2v() -> Graph:
    g = Graph("wan21_t2v_procache")
    unet = g.node("UNETLoader", (0, 0), ["wan2.1_t2v_1.3B_fp16.safetensors", "default"], outputs=[("MODEL", M)])
    clip = g.node("CLIPLoader", (0, 160), ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"],
                  outputs=[("CLIP", "CLIP")])
    vae = g.node("VAELoader", (0, 320), ["wan_2.1_vae.safetensors"], outputs=[("VAE", V)], size=(320, 60))
    shift = g.node("ModelSamplingSD3", (380, 0), [8.0], inputs=[("model", M)], outputs=[("MODEL", M)], size=(320, 60))
    g.link(unet, 0, shift, "model")
    apply = apply_node(g, (380, 100))
    g.link(shift, 0, apply, "model")
    pos, neg = text_encoders(g, clip, 380, 280, "a paper boat drifting down a rainy street, cinematic",
                             "blurry, low quality, static, watermark")
    lat = g.node("EmptyHunyuanLatentVideo", (0, 440), [832, 480, 33, 1], outputs=[("LATENT", L)], size=(320, 130))
    ks = ksampler(g, (860, 0), 30, 6.0, "uni_pc", "simple", model=apply, positive=pos, negative=neg,
                  latent=lat)
    tail(g, ks, apply, (vae, 0), 860, 320, "ProCache_Wan", video=True)
    g.note((0, 620), "Wan 2.1 text-to-video with ProCache (preset auto -> wan-30-balanced).\n\n"
           "models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors  (or wan2.1_t2v_14B_fp16 / fp8)\n"
           "models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors\n"
           "models/vae/wan_2.1_vae.safetensors\n\n"
           "Wan 2.2 14B text-to-video: the same graph with wan2.2_t2v_high_noise_14B / low_noise_14B in two "
           "KSamplerAdvanced nodes, a ProCache Apply on each model.")
    return g


EXAMPLES = {"pixart_alpha_procache.json": pixart_alpha, "flux_dev_procache.json": flux_dev,
            "sd35_large_procache.json": sd35, "wan21_t2v_procache.json": wan21_t2v}


def render(fn) -> str:
    return json.dumps(fn().to_json(), indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a file differs from what would be written")
    args = ap.parse_args()
    stale = []
    OUT_DIR.mkdir(exist_ok=True)
    for name, fn in EXAMPLES.items():
        path, text = OUT_DIR / name, render(fn)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale: " + ", ".join(stale) + " (run python scripts/make_example_workflows.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
