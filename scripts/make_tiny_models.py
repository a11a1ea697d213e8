"""Writes small, deterministic random-weight models where ComfyUI's loaders find them.

No weights can be downloaded here, so tests, the demo and the benchmarks build their models: the
host's own model classes are instantiated at a small depth, seeded, and saved with the host's key
layout, so ComfyUI's real detection and loading code path is exercised.

Usage: python scripts/make_tiny_models.py --comfy .host/ComfyUI [--force]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch

# name -> (subfolder, builder). Each builder returns a state dict (host key layout).
MAKERS: dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]]]] = {}
VERSION = "1"  # bump to regenerate every model when a builder changes


def maker(name: str, folder: str):
    def register(fn):
        MAKERS[name] = (folder, fn)
        return fn
    return register


def _init_(module: torch.nn.Module, seed: int) -> None:
    """Deterministic init; adaLN tables and projections get a modest scale so outputs stay finite."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        with torch.no_grad():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _tiny_pixart(micro_condition: bool, model_max_length: int, seed: int) -> dict[str, torch.Tensor]:
    """PixArt-α and -Σ differ in micro-conditioning and caption length only (the docstrings of the makers
    below feed their files' stamps: editing one regenerates that file)."""
    from comfy.ldm.pixart.pixartms import PixArtMS

    model = PixArtMS(depth=4, hidden_size=1152, num_heads=16, patch_size=2, in_channels=4,
                     pred_sigma=True, micro_condition=micro_condition, model_max_length=model_max_length,
                     caption_channels=4096, operations=torch.nn)
    _init_(model, seed=seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@maker("procache-tiny-pixart-alpha.safetensors", "diffusion_models")
def tiny_pixart_alpha() -> dict[str, torch.Tensor]:
    """PixArt-α layout (micro-conditioning embedders present). The host forces hidden 1152 / 16 heads;
    depth is read from the keys, so 4 blocks keep CPU runs short."""
    return _tiny_pixart(micro_condition=True, model_max_length=120, seed=1234)


@maker("procache-tiny-pixart-sigma.safetensors", "diffusion_models")
def tiny_pixart_sigma() -> dict[str, torch.Tensor]:
    """PixArt-Σ layout (no micro-conditioning), 4 blocks."""
    return _tiny_pixart(micro_condition=False, model_max_length=300, seed=4321)


@maker("procache-tiny-hunyuan-video.safetensors", "diffusion_models")
def tiny_hunyuan_video() -> dict[str, torch.Tensor]:
    """Hunyuan Video 1.0 through the host's real detection and loader (ProCache's hunyuan_video
    adapter; tests/host/test_families_server.py). The host's detection reads hidden size (heads = hidden / 128), patch size, channels and
    text dim from the weights and counts the blocks, so hidden 256 (vector_in 768) with one double
    and one single block loads as a real HunyuanVideo model of 6 M params. (Lumina 2 cannot be made
    small: a dim other
    than the two released ones leaves the host's default head layout, which only fits dim 4096.)"""
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    # exactly the config comfy/model_detection.py derives from these weights (vector_in present, so
    # vec_in_dim 768: without it the host detects Hunyuan Image 2.1 instead)
    cfg = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=64, hidden_size=256,
               mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
               theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=False, byt5=False,
               meanflow=False, use_cond_type_embedding=False, vision_in_dim=None)
    model = HunyuanVideo(operations=torch.nn, **_host_params(HunyuanVideoParams, cfg))
    _init_(model, seed=777)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@maker("procache-tiny-hunyuan-image21.safetensors", "diffusion_models")
def tiny_hunyuan_image21() -> dict[str, torch.Tensor]:
    """HunyuanImage 2.1 layout (no vector_in, 2-D 1x1 patches on 64 latent channels, axes 64+64), which
    the host's detection reads as HunyuanImage21; hidden 256 (2 heads of 128), 1 double + 1 single."""
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    cfg = dict(in_channels=64, out_channels=64, vec_in_dim=None, context_in_dim=64, hidden_size=256,
               mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[64, 64],
               theta=256, patch_size=[1, 1], qkv_bias=True, guidance_embed=False, byt5=False,
               meanflow=False, use_cond_type_embedding=False, vision_in_dim=None)
    model = HunyuanVideo(operations=torch.nn, **_host_params(HunyuanVideoParams, cfg))
    _init_(model, seed=778)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _host_params(params_cls: type, cfg: dict) -> dict:
    """``cfg`` with the fields this host's params dataclass requires on top (tests/host_nodes/tiny_models.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "procache_test_tiny_models", Path(__file__).resolve().parents[1] / "tests" / "host_nodes" / "tiny_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.host_params(params_cls, cfg)


def _taesd(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from comfy.taesd.taesd import Decoder, Encoder

    enc, dec = Encoder(latent_channels=4), Decoder(latent_channels=4)
    _init_(enc, seed)
    _init_(dec, seed + 1)
    return enc.state_dict(), dec.state_dict()


@maker("taesd_encoder.safetensors", "vae_approx")
def taesd_encoder() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in _taesd(99)[0].items()}


@maker("taesd_decoder.safetensors", "vae_approx")
def taesd_decoder() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in _taesd(99)[1].items()}


def build(comfy_dir: Path, force: bool = False, only: list[str] | None = None) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from host_inprocess import use_host

    use_host(comfy_dir)
    from safetensors.torch import save_file

    written = []
    for name, (folder, fn) in MAKERS.items():
        if only and name not in only:
            continue
        out = comfy_dir / "models" / folder / name
        stamp = out.with_suffix(out.suffix + ".stamp")
        src_hash = hashlib.sha256((VERSION + fn.__name__ + (fn.__doc__ or "")).encode()).hexdigest()[:16]
        if out.exists() and stamp.exists() and stamp.read_text() == src_hash and not force:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        sd = fn()
        save_file(sd, str(out), metadata={"procache": json.dumps({"maker": name, "version": VERSION})})
        stamp.write_text(src_hash)
        written.append(out)
        print(f"[procache-models] wrote {out} ({sum(v.numel() for v in sd.values()) / 1e6:.1f} M params)")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy", type=Path, required=True, help="ComfyUI folder (.host/ComfyUI)")
    ap.add_argument("--force", action="store_true", help="rewrite even when up to date")
    ap.add_argument("--only", nargs="*", help="model file names to build")
    args = ap.parse_args()
    build(args.comfy, args.force, args.only)


if __name__ == "__main__":
    main()
