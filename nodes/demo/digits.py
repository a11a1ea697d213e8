"""The digits demo models: architecture configs, the fixed linear "VAE" and the digit embeddings.

Plain torch at import time (the host's `comfy` is imported only inside `build_model`), so the training
script (benchmarks/train_host_digits.py) and the demo nodes share exactly one definition.

Images are 32x32 grey-scale digits in [-1, 1] (scikit-learn's 8x8 scans, bilinear x4). The stand-in VAE
is a fixed, exactly invertible linear map between such an image and the model's latent:

- flux  (16 channels, 8x8 latent, 4x4 = 16 tokens): space-to-depth by 4 (each 4x4 pixel block becomes the
  16 channels of one latent pixel), then a fixed orthogonal 16x16 channel mix.
- pixart (4 channels, 64x4 latent, patch 4 -> 16x1 = 16 tokens): space-to-depth by 2 (4 channels, 16x16),
  the 16x16 grid cut into four 16x4 column bands stacked top to bottom (64x4; every 4x4 latent patch, one
  token, is still one 8x8 image block), then a fixed orthogonal 4x4 channel mix. A strip because the host's PixArt position
  embedding needs (H + W) / 2 >= 33 latent pixels.

The model trains and samples in the host's *model* space; a LATENT as ComfyUI passes it between nodes is
in *VAE* space, related by the host's latent format (Flux: (z - 0.1159) * 0.3611, SD1.5-style for
PixArt-α: z * 0.18215). `encode`/`decode` below include that step so the nodes behave like a VAE.

Digit conditioning: a fixed seeded table of 4 tokens x 64 channels per digit (index 10 = no digit, the
unconditional / negative prompt) plus a 64-d pooled vector for Flux's `y` input. It plays the role of a
frozen text encoder: the model learned to read it through its own text-embedding input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
NULL_DIGIT = 10
TOKENS = 4
EMBED_DIM = 64
_SEED = 20261123

FAMILIES = ("flux", "pixart")

# Host model configs (the keys comfy.model_detection would produce, at demo width).
# Flux: head dim = sum(axes_dim) = 32, 3 heads -> hidden 96; guidance_embed False -> the host's
# FluxSchnell config (flow matching, shift 1), sampled with real CFG against the "no digit" prompt.
FLUX_CONFIG = {"image_model": "flux", "guidance_embed": False, "axes_dim": [8, 12, 12], "num_heads": 3,
               "mlp_ratio": 4.0, "theta": 10000, "out_channels": 16, "qkv_bias": True, "in_channels": 16,
               "hidden_size": 96, "context_in_dim": EMBED_DIM, "patch_size": 2, "vec_in_dim": EMBED_DIM,
               "depth": 2, "depth_single_blocks": 4}
# PixArt-α (micro-conditioning, eps prediction, the host's PixArtAlpha config); hidden must divide by 3.
# Patch 4 (the released models use 2) keeps the 64x4 strip at 16 tokens, cheap enough to train on a CPU.
PIXART_CONFIG = {"image_model": "pixart_alpha", "num_heads": 4, "patch_size": 4, "hidden_size": 96,
                 "in_channels": 4, "depth": 6, "model_max_length": TOKENS, "caption_channels": EMBED_DIM,
                 "micro_condition": True, "pred_sigma": True}
CONFIGS = {"flux": FLUX_CONFIG, "pixart": PIXART_CONFIG}
# What the network's output means, as the host's `comfy.model_base.ModelType`. Flux: its config's own (flow
# matching). PixArt: v-prediction on PixArt-α's DDPM noise levels (sigma up to 157) instead of the released
# models' eps: an eps network must reproduce its input to ~1/157 at the top noise level before its x0 means
# anything, which a 1 M-parameter model trained for minutes on a CPU never did (it sampled noise); v keeps
# every target at unit scale. Caching sees the same blocks either way; the host samples v models natively.
MODEL_TYPES = {"flux": "FLUX", "pixart": "V_PREDICTION"}
LATENT_CHANNELS = {"flux": 16, "pixart": 4}
LATENT_HW = {"flux": (8, 8), "pixart": (64, 4)}


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


_MIX = {"flux": _orthogonal(16, _SEED + 16), "pixart": _orthogonal(4, _SEED + 4)}


def family_of_latent(z: torch.Tensor) -> str:
    """Which demo layout a latent is in, from its channels and size (the decode node needs no model)."""
    for fam in FAMILIES:
        if z.ndim == 4 and z.shape[1] == LATENT_CHANNELS[fam] and tuple(z.shape[-2:]) == LATENT_HW[fam]:
            return fam
    raise ValueError(f"latent of shape {tuple(z.shape)} is not a digits-demo latent "
                     f"(flux: (B,16,8,8), pixart: (B,4,64,4))")


def image_to_model(img: torch.Tensor, family: str) -> torch.Tensor:
    """(B,1,32,32) image in [-1,1] -> model-space latent."""
    if family == "flux":
        u = F.pixel_unshuffle(img, 4)                                  # (B,16,8,8)
    else:
        u = F.pixel_unshuffle(img, 2)                                  # (B,4,16,16)
        u = torch.cat([u[..., 4 * k:4 * k + 4] for k in range(4)], dim=-2)  # (B,4,64,4)
    return torch.einsum("oc,bchw->bohw", _MIX[family].to(u), u)


def model_to_image(x: torch.Tensor, family: str) -> torch.Tensor:
    """Exact inverse of image_to_model (no clamping)."""
    u = torch.einsum("oc,bohw->bchw", _MIX[family].to(x), x)
    if family == "flux":
        return F.pixel_shuffle(u, 4)
    u = torch.cat(list(u.split(16, dim=-2)), dim=-1)                  # (B,4,16,16)
    return F.pixel_shuffle(u, 2)


def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """(11, TOKENS, EMBED_DIM) token table and (11, EMBED_DIM) pooled table; row 10 = no digit."""
    g = torch.Generator().manual_seed(_SEED)
    return torch.randn(11, TOKENS, EMBED_DIM, generator=g), torch.randn(11, EMBED_DIM, generator=g)


def latent_format(family: str):
    """The host latent format of the family's model config (VAE space <-> model space)."""
    import comfy.latent_formats

    return comfy.latent_formats.Flux() if family == "flux" else comfy.latent_formats.SD15()


def encode(img: torch.Tensor, family: str) -> torch.Tensor:
    """Image -> LATENT in VAE space (what a VAE encode would hand to KSampler)."""
    return latent_format(family).process_out(image_to_model(img, family))


def decode(z: torch.Tensor) -> torch.Tensor:
    """LATENT (VAE space) -> image in [-1, 1] (unclamped); the family is read from the latent's shape."""
    fam = family_of_latent(z)
    return model_to_image(latent_format(fam).process_in(z.float()), fam)


# Values for parameters newer hosts' model classes require but the demo configs (written for ComfyUI 0.3.75)
# do not name: what the host's own detection sets for a plain model of the family (0.8+ FluxParams needs
# txt_ids_dims; detection gives [] to Flux.1, whose text tokens carry no position ids).
_PLAIN_DEFAULTS = {"flux": {"txt_ids_dims": []}}


def _required_params(family: str) -> set[str]:
    """Fields the host's parameter dataclass for `family` requires (no default); empty where it has none."""
    import dataclasses

    if family != "flux":
        return set()
    import comfy.ldm.flux.model as flux_model

    params = getattr(flux_model, "FluxParams", None)
    if params is None or not dataclasses.is_dataclass(params):
        return set()
    return {f.name for f in dataclasses.fields(params)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def host_unet_config(family: str) -> dict:
    """CONFIGS[family] plus what this host's model class requires beyond it (the trained weights and the
    architecture are the same on every host; only the constructor's parameter list grew)."""
    cfg = dict(CONFIGS[family])
    for name in sorted(_required_params(family) - set(cfg)):
        if name not in _PLAIN_DEFAULTS.get(family, {}):
            raise RuntimeError(f"the host's {family} model requires {name!r}, which the digits demo does not know")
        cfg[name] = list(_PLAIN_DEFAULTS[family][name])
    return cfg


def build_model(family: str, state_dict: dict | None = None):
    """The host's own model object for `family` (comfy.model_base.Flux / PixArt via the host's model
    config, as comfy.sd.load_diffusion_model_state_dict builds it after detection), weights loaded."""
    import comfy.model_detection

    if family not in CONFIGS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    unet_config = host_unet_config(family)
    config = comfy.model_detection.model_config_from_unet_config(unet_config, state_dict)
    if config is None:
        raise RuntimeError(f"the host has no model config for {unet_config}")
    config.set_inference_dtype(torch.float32, None)
    sd = {"model.diffusion_model." + k: v for k, v in (state_dict or {}).items()}
    if family == "pixart":
        import comfy.model_base

        # what PixArtAlpha.get_model builds, with the model type passed instead of its default EPS
        model = comfy.model_base.PixArt(config, model_type=comfy.model_base.ModelType[MODEL_TYPES[family]]).eval()
    else:
        model = config.get_model(sd, "model.diffusion_model.")
    if state_dict is not None:
        model.load_model_weights(sd, "model.diffusion_model.")
    return model
