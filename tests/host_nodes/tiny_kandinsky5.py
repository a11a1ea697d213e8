"""Tiny Kandinsky 5 video and image networks (host class ``comfy.ldm.kandinsky5.model.Kandinsky5``).

Loaded by ``nodes_tiny_families._load_tiny_builders`` (``seeded_`` and ``latent_channels`` are set as globals).
Width 64 (2 heads of 32: head_dim is ``sum(axes_dims)``), 1 text encoder block, 2 visual decoder blocks.
The host's loader fixes the text widths (Qwen2.5-VL 3584, CLIP pooled 768), so a checkpoint cannot be
small; here the prompt is ``context_dim`` wide and the pooled vector ``POOLED_DIM``.
"""
from __future__ import annotations

POOLED_DIM = 16   # the pooled CLIP vector (``pooled_output``, the host's ``y``) of the test conditioning


def _tiny_kandinsky5(seed: int, context_dim: int, image: bool):
    import comfy.ops
    from comfy.ldm.kandinsky5.model import Kandinsky5

    # the video model's input is noise + a zero image condition + a mask channel (model_base.Kandinsky5's
    # concat_cond), the image model's the noise alone; patches of 1 x 2 x 2
    c = latent_channels("Flux" if image else "HunyuanVideo")  # noqa: F821 (set by the loader)
    c_in = c if image else 2 * c + 1
    cfg = {"image_model": "kandinsky5", "in_visual_dim": c, "out_visual_dim": c, "in_text_dim": context_dim,
           "in_text_dim2": POOLED_DIM, "time_dim": 32, "model_dim": 64, "ff_dim": 128,
           "visual_embed_dim": c_in * 4, "patch_size": (1, 2, 2), "num_text_blocks": 1, "num_visual_blocks": 2,
           "axes_dims": (8, 12, 12), "rope_scale_factor": (1.0, 1.0, 1.0) if image else (1.0, 2.0, 2.0)}
    net = Kandinsky5(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)  # noqa: F821 (set by the loader)
    return net, cfg


def tiny_kandinsky5_net(seed: int = 0, context_dim: int = 48):
    return _tiny_kandinsky5(seed, context_dim, image=False)


def tiny_kandinsky5_image_net(seed: int = 0, context_dim: int = 48):
    return _tiny_kandinsky5(seed, context_dim, image=True)


try:  # a host without Kandinsky 5 (0.3.75) offers neither
    import comfy.ldm.kandinsky5.model  # noqa: F401

    TINY = {"kandinsky5": ("Kandinsky5", tiny_kandinsky5_net),
            "kandinsky5_image": ("Kandinsky5Image", tiny_kandinsky5_image_net)}
except ImportError:
    TINY = {}
