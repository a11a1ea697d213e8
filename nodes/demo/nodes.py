"""Demo nodes: a digits model trained in the host's own Flux / PixArt-α architecture and its stand-ins
for a text encoder and a VAE, so a workflow with ProCache shows real images with nothing downloaded.

- ProCache Demo Digits Model   MODEL: the bundled weights (nodes/demo/weights) in the host's model class,
                               built from the host's model config and wrapped in the host's ModelPatcher.
- ProCache Demo Digit Prompt   CONDITIONING: which digit(s) to draw ('-' = no digit, the negative prompt).
- ProCache Demo Empty Latent   LATENT of the model's layout (zeros, like Empty Latent Image).
- ProCache Demo Digits Decode  LATENT -> IMAGE through the fixed linear map (the VAE stand-in).
- ProCache Demo Digits Encode  IMAGE -> LATENT (for img2img with denoise < 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from comfy_api.latest import io

from ...procache_core.errors import ProCacheError
from . import digits

WEIGHTS = Path(__file__).resolve().parent / "weights"
MODEL_CHOICES = {"flux (double + single blocks)": "flux", "pixart-alpha (cross-attention)": "pixart"}
CATEGORY = "ProCache/demo"
_MODEL_CACHE: dict[str, tuple[float, dict, dict]] = {}


def weights_file(family: str) -> Path:
    return WEIGHTS / f"digits_{family}.safetensors"


def load_weights(family: str) -> tuple[dict, dict]:
    """State dict (float32) and training metadata of the bundled model; cached per file version."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = weights_file(family)
    if not path.exists():
        raise ProCacheError("model", f"has no bundled weights at {path}.",
                            f"restore the file from the repository or run `python -m benchmarks.train_host_digits "
                            f"--family {family}`.")
    mtime = path.stat().st_mtime
    hit = _MODEL_CACHE.get(family)
    if hit is None or hit[0] != mtime:
        sd = {k: v.float() for k, v in load_file(str(path)).items()}
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {}).get("procache_demo", "{}"))
        trained_as = info.get("model_type", "FLUX" if family == "flux" else "EPS")  # older files lack the key
        if info.get("unet_config") != digits.CONFIGS[family] or trained_as != digits.MODEL_TYPES[family]:
            raise ProCacheError("model", f"weights in {path.name} were trained for another configuration.",
                                f"retrain them with `python -m benchmarks.train_host_digits --family {family}`.")
        _MODEL_CACHE[family] = (mtime, sd, info)
    return _MODEL_CACHE[family][1], _MODEL_CACHE[family][2]


def load_model(family: str):
    """A ModelPatcher of the bundled digits model, as UNETLoader returns one for a checkpoint file."""
    import comfy.model_management as mm
    import comfy.model_patcher

    sd, _ = load_weights(family)
    model = digits.build_model(family, sd)
    got = model.diffusion_model.state_dict()
    # the keys as the host's loader renamed them (0.29's Flux: RMSNorm `.scale` -> `.weight`); the file is unchanged
    loaded = model.model_config.process_unet_state_dict(dict(sd))
    missing = sorted(set(got) - set(loaded))
    if missing:
        raise ProCacheError("model", f"bundled weights lack {len(missing)} tensors (e.g. {missing[0]}).",
                            "retrain them with benchmarks/train_host_digits.py.")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class ProCacheDemoDigitsModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheDemoDigitsModel",
            display_name="ProCache Demo Digits Model",
            category=CATEGORY,
            description="A small diffusion transformer in the host's own Flux or PixArt-α architecture, trained "
                        "on handwritten digits (bundled, a few MB): lets you see what ProCache does to real "
                        "samples without downloading a model. Pair it with the other ProCache demo nodes.",
            inputs=[io.Combo.Input("model", options=list(MODEL_CHOICES), default=list(MODEL_CHOICES)[0])],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model: str) -> io.NodeOutput:
        if model not in MODEL_CHOICES:
            raise ProCacheError("model", f"is {model!r}, not one of {list(MODEL_CHOICES)}.", "pick one from the list.")
        return io.NodeOutput(load_model(MODEL_CHOICES[model]))


def parse_digits(text: str) -> list[int]:
    out = []
    for ch in (text or "").replace(" ", "").replace(",", ""):
        if ch.isdigit():
            out.append(int(ch))
        elif ch == "-":
            out.append(digits.NULL_DIGIT)
        else:
            raise ProCacheError("digits", f"contains {ch!r}.",
                                "use the characters 0-9 (one per image) and '-' for 'no digit' (negative prompt).")
    if not out:
        raise ProCacheError("digits", "is empty.", "write e.g. 7, 0123456789, or - for the negative prompt.")
    return out


class ProCacheDemoDigitPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheDemoDigitPrompt",
            display_name="ProCache Demo Digit Prompt",
            category=CATEGORY,
            description="The 'text encoder' of the digits demo model: a fixed embedding per digit. One character "
                        "per image of the batch (cycled to fill it): '0123456789' draws every digit, '-' is the "
                        "empty prompt (use it as the negative).",
            inputs=[io.String.Input("digits", default="0123456789"),
                    io.Int.Input("repeat", default=1, min=1, max=256,
                                 tooltip="the sequence is repeated this many times (batch = len(digits) x repeat)")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, digits: str, repeat: int = 1) -> io.NodeOutput:
        labels = torch.tensor(parse_digits(digits) * max(1, int(repeat)))
        tok, pooled = _tables()
        return io.NodeOutput([[tok[labels].clone(), {"pooled_output": pooled[labels].clone()}]])


def _tables():
    return digits.embeddings()


class ProCacheDemoEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheDemoEmptyLatent",
            display_name="ProCache Demo Empty Latent",
            category=CATEGORY,
            description="An empty LATENT in the digits demo model's layout (Flux: 16x8x8, PixArt-α: 4x64x4).",
            inputs=[io.Combo.Input("model", options=list(MODEL_CHOICES), default=list(MODEL_CHOICES)[0]),
                    io.Int.Input("batch_size", default=10, min=1, max=4096)],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model: str, batch_size: int) -> io.NodeOutput:
        fam = MODEL_CHOICES.get(model)
        if fam is None:
            raise ProCacheError("model", f"is {model!r}, not one of {list(MODEL_CHOICES)}.", "pick one from the list.")
        h, w = digits.LATENT_HW[fam]
        return io.NodeOutput({"samples": torch.zeros(batch_size, digits.LATENT_CHANNELS[fam], h, w)})


class ProCacheDemoDigitsDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheDemoDigitsDecode",
            display_name="ProCache Demo Digits Decode",
            category=CATEGORY,
            description="Turns a digits-demo LATENT into images (the inverse of the fixed linear map that stands in "
                        "for a VAE); white digits on black, 32 px scaled up by `scale`.",
            inputs=[io.Latent.Input("samples"),
                    io.Int.Input("scale", default=4, min=1, max=16, tooltip="nearest-neighbour upscaling")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples: dict, scale: int = 4) -> io.NodeOutput:
        z = samples["samples"]
        try:
            img = digits.decode(z)
        except ValueError as e:
            raise ProCacheError("samples", str(e) + ".", "decode only latents sampled from ProCache Demo Digits Model.")
        img = img.clamp(-1, 1).add(1).mul(0.5)
        if scale > 1:
            img = torch.nn.functional.interpolate(img, scale_factor=scale, mode="nearest")
        return io.NodeOutput(img.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().cpu())


class ProCacheDemoDigitsEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheDemoDigitsEncode",
            display_name="ProCache Demo Digits Encode",
            category=CATEGORY,
            description="Turns images (white digit on black, any size; resized to 32 px, grey) into a LATENT of the "
                        "demo model's layout, for img2img (KSampler denoise < 1).",
            inputs=[io.Image.Input("images"),
                    io.Combo.Input("model", options=list(MODEL_CHOICES), default=list(MODEL_CHOICES)[0])],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, model: str) -> io.NodeOutput:
        fam = MODEL_CHOICES.get(model)
        if fam is None:
            raise ProCacheError("model", f"is {model!r}, not one of {list(MODEL_CHOICES)}.", "pick one from the list.")
        x = images.float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)  # (B,1,H,W) in [0,1]
        if tuple(x.shape[-2:]) != (digits.IMAGE_SIZE, digits.IMAGE_SIZE):
            x = torch.nn.functional.interpolate(x, size=(digits.IMAGE_SIZE,) * 2, mode="area")
        return io.NodeOutput({"samples": digits.encode(x.mul(2).sub(1), fam)})


NODES = [ProCacheDemoDigitsModel, ProCacheDemoDigitPrompt, ProCacheDemoEmptyLatent, ProCacheDemoDigitsDecode,
         ProCacheDemoDigitsEncode]
