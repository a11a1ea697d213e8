"""Tiny variants of families whose adapters already exist: Flux.2 klein, Qwen-Image layered, Chroma Radiance.

Loaded by ``nodes_tiny_families._load_tiny_builders`` (``seeded_``, ``host_params`` and ``tiny_flux2_net`` are set as globals). Each is
the host's own network class with the variant's config at width 64 (2 heads of 32), built into the
variant's ``supported_models`` config like the loader does. A variant the host lacks is not offered
(``TINY`` has no key for it), so a test can tell the host has it from ProCacheTestTinyDiT's options.

* ``flux2_klein``: ``comfy.ldm.flux.model.Flux`` in the Flux.2 layout (global modulation, SiLU-gated MLP,
  patch 1, 128 latent channels) with klein's differences from Flux.2 [dev]: no guidance embedding and
  fewer, narrower blocks (here 1 double + 3 single). Its prompt is three Qwen3 layers side by side
  (3 x 2560 / 3 x 4096 wide), here ``context_dim``. Offered where the host can load klein: ComfyUI
  0.29 has its text encoder (``klein_te``) and reads the head count from the width; 0.8.1 fixes Flux.2's
  48 heads, so a klein checkpoint does not build there.
* ``qwen_image_layered``: ``QwenImageTransformer2DModel`` with the additional timestep embedding and the
  negative reference index (what the host's detection sets for a ``time_text_embed.addition_t_embedding``
  key); its latent is 5-D (batch, 16, layers + 1, h, w).
* ``chroma_radiance``: ``ChromaRadiance`` (Chroma's blocks on 16 x 16 pixel patches of a 3-channel image,
  NeRF head): nerf width 16, 2 NeRF blocks.
"""
from __future__ import annotations

import inspect


def tiny_flux2_klein_net(seed: int = 0, context_dim: int = 48, depth: int = 1, single: int = 3):
    return tiny_flux2_net(seed, depth, single, context_dim, guidance_embed=False)  # noqa: F821 (set by the loader)


def tiny_qwen_image_layered_net(seed: int = 0, context_dim: int = 48, layers: int = 2):
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    cfg = {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": layers,
           "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": context_dim,
           "axes_dims_rope": (8, 12, 12), "use_additional_t_cond": True, "default_ref_method": "negative_index"}
    net = QwenImageTransformer2DModel(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)  # noqa: F821 (set by the loader)
    return net, cfg


def tiny_chroma_radiance_net(seed: int = 0, context_dim: int = 48, depth: int = 2, single: int = 2):
    import torch

    import comfy.ops
    from comfy.ldm.chroma_radiance.model import ChromaRadiance, ChromaRadianceParams

    cfg = {"image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3, "context_in_dim": context_dim,
           "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": depth, "depth_single_blocks": single,
           "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 16, "qkv_bias": True, "in_dim": 64,
           "out_dim": 64, "hidden_dim": 96, "n_layers": 2, "nerf_hidden_size": 16, "nerf_mlp_ratio": 2,
           "nerf_depth": 2, "nerf_max_freqs": 8, "nerf_tile_size": 512, "nerf_final_head_type": "linear",
           "nerf_embedder_dtype": torch.float32}
    # use_x0 (0.8) / use_sequential_txt_ids (0.29): what the detection sets for a checkpoint without markers
    cfg = host_params(ChromaRadianceParams, cfg, {"use_x0": False, "use_sequential_txt_ids": False})  # noqa: F821
    net = ChromaRadiance(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)  # noqa: F821 (set by the loader)
    return net, cfg


def _variants() -> dict:
    out = {}
    try:
        import comfy.text_encoders.flux as te

        if hasattr(te, "klein_te"):
            out["flux2_klein"] = ("Flux2", tiny_flux2_klein_net)
    except ImportError:
        pass
    try:
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

        if "use_additional_t_cond" in inspect.signature(QwenImageTransformer2DModel.__init__).parameters:
            out["qwen_image_layered"] = ("QwenImage", tiny_qwen_image_layered_net)
    except ImportError:
        pass
    try:
        import comfy.ldm.chroma_radiance.model  # noqa: F401

        out["chroma_radiance"] = ("ChromaRadiance", tiny_chroma_radiance_net)
    except ImportError:
        pass
    return out


TINY = _variants()
