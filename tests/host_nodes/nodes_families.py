"""Seeded tiny MODELs of families whose checkpoints the host's detection only accepts at full size.

Each node builds the host's own network class at a tiny width from a config object of the host's
``comfy.supported_models`` and wraps it exactly as the checkpoint loader would (model_base + ModelPatcher),
so everything after the loader (sampling, wrappers, the pack) is the real path.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io


def seeded_(net: torch.nn.Module, seed: int, bias_scale: float = 0.02) -> None:
    """Deterministic random weights; every float buffer too (some are allocated with torch.empty)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, prm in sorted(net.named_parameters()):
            if prm.ndim >= 2:
                prm.copy_(torch.randn(prm.shape, generator=gen) / prm[0].numel() ** 0.5)
            else:
                prm.copy_(torch.randn(prm.shape, generator=gen) * bias_scale)


def patcher_from_config(config, net_state: dict, prefix: str = "model.diffusion_model."):
    """model_base + ModelPatcher for a supported_models config and a state dict of its network."""
    import comfy.model_management as mm
    import comfy.model_patcher

    sd = {prefix + k: v for k, v in net_state.items()}
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model(sd, prefix)
    model.load_model_weights(sd, prefix)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class ProCacheTestTinySDXL(io.ComfyNode):
    """A seeded tiny SDXL-style UNet (host UNetModel + model_base.SDXL, EPS prediction).

    SDXL detection fixes model_channels 320 and transformer depths up to 10; this builds the host's
    ``supported_models.SDXL`` config with channels 32 and one transformer block per level instead.
    Conditioning: context of ``context_dim`` and a 1280-d pooled_output (SDXL's ADM vector).
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestTinySDXL",
            display_name="ProCache Test Tiny SDXL UNet (random weights)",
            category="ProCache/testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                    io.Int.Input("context_dim", default=64, min=8, max=2048)],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, seed: int, context_dim: int) -> io.NodeOutput:
        import comfy.ops
        import comfy.supported_models
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        unet_config = {
            "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
            "model_channels": 32, "num_res_blocks": [1, 1], "transformer_depth": [0, 1], "channel_mult": [1, 2],
            "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": context_dim,
            "num_head_channels": 16, "transformer_depth_output": [0, 0, 1, 1], "use_temporal_attention": False,
            "use_temporal_resblock": False,
        }
        net = UNetModel(operations=comfy.ops.disable_weight_init, **unet_config)
        seeded_(net, seed)
        config = comfy.supported_models.SDXL(dict(unet_config))
        return io.NodeOutput(patcher_from_config(config, net.state_dict()))


NODES = [ProCacheTestTinySDXL]
