"""Seeded stand-ins for a text encoder (random conditioning) and a tiny Flux.1 MODEL, so PixArt/Flux-style
models can be sampled in tests."""
from __future__ import annotations

import torch
from comfy_api.latest import io


class ProCacheTestConditioning(io.ComfyNode):
    """A CONDITIONING of seeded random token embeddings, as a T5 encoder would output."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestConditioning",
            display_name="ProCache Test Conditioning (random text embedding)",
            category="ProCache/testing",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Int.Input("tokens", default=8, min=1, max=512),
                io.Int.Input("dim", default=4096, min=8, max=8192),
                io.Int.Input("pooled_dim", default=0, min=0, max=8192,
                             tooltip="when > 0, also attach a pooled_output of this size (Flux/SD3 style)"),
                io.Float.Input("scale", default=1.0, min=0.0, max=100.0),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed: int, tokens: int, dim: int, pooled_dim: int, scale: float) -> io.NodeOutput:
        gen = torch.Generator().manual_seed(seed)
        emb = torch.randn((1, tokens, dim), generator=gen) * scale
        extra = {}
        if pooled_dim > 0:
            extra["pooled_output"] = torch.randn((1, pooled_dim), generator=gen) * scale
        return io.NodeOutput([[emb, extra]])


class ProCacheTestTinyFlux(io.ComfyNode):
    """A seeded tiny Flux.1 MODEL (host classes, hidden 256).

    A checkpoint file cannot be tiny: the host's Flux detection fixes 24 heads of 128 channels, i.e.
    hidden 3072 (~0.3 B parameters per double block). This node builds the same config object the
    detection would (comfy.supported_models.Flux via model_config_from_unet_config) with 2 heads of 128,
    so everything after the loader (ModelPatcher, model_base.Flux, samplers, the pack) is the real path.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestTinyFlux",
            display_name="ProCache Test Tiny Flux (random weights)",
            category="ProCache/testing",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Int.Input("depth", default=2, min=1, max=8, tooltip="double-stream blocks"),
                io.Int.Input("depth_single_blocks", default=2, min=0, max=8),
                io.Int.Input("context_in_dim", default=64, min=8, max=4096),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, seed: int, depth: int, depth_single_blocks: int, context_in_dim: int) -> io.NodeOutput:
        import comfy.model_detection
        import comfy.model_management as mm
        import comfy.model_patcher
        from comfy.ldm.flux.model import Flux

        unet_config = {"image_model": "flux", "guidance_embed": True, "axes_dim": [16, 56, 56], "num_heads": 2,
                       "mlp_ratio": 4.0, "theta": 10000, "out_channels": 16, "qkv_bias": True, "in_channels": 16,
                       "hidden_size": 256, "context_in_dim": context_in_dim, "patch_size": 2, "vec_in_dim": 768,
                       "depth": depth, "depth_single_blocks": depth_single_blocks}
        from comfy.ldm.flux.model import FluxParams

        from .tiny_models import host_params, seeded_

        unet_config = host_params(FluxParams, unet_config)  # e.g. txt_ids_dims, required from ComfyUI 0.8 on
        net = Flux(operations=torch.nn, **unet_config)
        seeded_(net, seed)
        sd = {"model.diffusion_model." + k: v for k, v in net.state_dict().items()}
        config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
        config.set_inference_dtype(torch.float32, None)
        model = config.get_model(sd, "model.diffusion_model.")
        model.load_model_weights(sd, "model.diffusion_model.")
        return io.NodeOutput(comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                              offload_device=mm.unet_offload_device()))


NODES = [ProCacheTestConditioning, ProCacheTestTinyFlux]
