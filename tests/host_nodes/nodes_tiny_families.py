"""Seeded tiny MODELs of families whose checkpoints the host's detection only accepts at full size.

Each node builds the host's own network class at a tiny width from a config object of the host's
``comfy.supported_models`` and wraps it exactly as the checkpoint loader would (model_base + ModelPatcher),
so everything after the loader (sampling, wrappers, the pack) is the real path.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

try:
    from .tiny_models import host_params, seeded_, set_host_option
except ImportError:  # loaded by file path (tests/host/test_adapters_qwen_flux2_chroma_lumina_hunyuan_ltxv_cosmos_hidream.py): no package
    import importlib.util as _ilu
    from pathlib import Path as _Path

    _spec = _ilu.spec_from_file_location("procache_test_tiny_models", _Path(__file__).with_name("tiny_models.py"))
    _tm = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_tm)
    host_params, seeded_, set_host_option = _tm.host_params, _tm.seeded_, _tm.set_host_option


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


# -- tiny networks (host classes), shared by the nodes below and the in-process adapter tests ----------

def tiny_qwen_image_net(seed: int = 0, layers: int = 2, context_dim: int = 48, ref_method: str | None = None):
    """QwenImageTransformer2DModel, width 64 (2 heads of 32); the loader fixes 24 heads of 128.
    ``ref_method``: the host's ``default_ref_method`` (``"index_timestep_zero"``: Qwen-Image-Edit 2511);
    TypeError on a host whose class does not take it."""
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    cfg = {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": layers,
           "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": context_dim,
           "axes_dims_rope": (8, 12, 12)}
    if ref_method is not None:
        set_host_option(cfg, QwenImageTransformer2DModel, "default_ref_method", ref_method)
    net = QwenImageTransformer2DModel(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


def tiny_flux2_net(seed: int = 0, depth: int = 2, single: int = 2, context_dim: int = 48,
                   guidance_embed: bool = True):
    """Flux.2 layout (global modulation, SiLU-gated MLP, no biases, patch 1, 128 latent channels), width 64;
    klein (tiny_family_variants.py) is this layout without the guidance embedding."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    cfg = {"image_model": "flux2", "axes_dim": [8, 8, 8, 8], "num_heads": 2, "mlp_ratio": 3.0, "theta": 2000,
           "out_channels": 128, "global_modulation": True, "vec_in_dim": None, "mlp_silu_act": True,
           "qkv_bias": False, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
           "in_channels": 128, "hidden_size": 64, "context_in_dim": context_dim, "patch_size": 1, "depth": depth,
           "depth_single_blocks": single, "guidance_embed": guidance_embed}
    from comfy.ldm.flux.model import FluxParams

    cfg = host_params(FluxParams, cfg, {"txt_ids_dims": [3]})  # what the host's detection gives Flux.2
    net = Flux(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


def tiny_chroma_net(seed: int = 0, depth: int = 2, single: int = 2, context_dim: int = 48):
    """Chroma (Flux blocks, approximator modulation), width 64; the loader fixes 24 heads and width 3072."""
    import comfy.ops
    from comfy.ldm.chroma.model import Chroma

    cfg = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": context_dim,
           "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": depth, "depth_single_blocks": single,
           "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64,
           "out_dim": 64, "hidden_dim": 96, "n_layers": 2}
    from comfy.ldm.chroma.model import ChromaParams

    cfg = host_params(ChromaParams, cfg)
    net = Chroma(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


def tiny_lumina_net(seed: int = 0, context_dim: int = 48, z_image: bool = True):
    """NextDiT in the Z-Image layout (adaLN without SiLU, 32-token padding) or Lumina 2's, width 256
    (Z-Image's adaLN input is 256 wide, so narrower is impossible); 2 main + 1 refiner blocks."""
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT

    cfg = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": context_dim,
           "n_layers": 2, "n_refiner_layers": 1, "qk_norm": True, "n_heads": 8, "n_kv_heads": 8,
           "axes_dims": [8, 12, 12], "axes_lens": [64, 64, 64], "multiple_of": 32}
    if z_image:
        cfg.update({"rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
                    "time_scale": 1000.0, "pad_tokens_multiple": 32})
    else:
        cfg.update({"rope_theta": 10000.0, "ffn_dim_multiplier": 1.0})
    net = NextDiT(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)  # the pad tokens are parameters: seeded too
    return net, cfg


def tiny_lumina2_net(seed: int = 0, context_dim: int = 48):
    return tiny_lumina_net(seed, context_dim, z_image=False)


# The HunyuanVideo network's tiny config (width 64, 2 heads, 2 double + 2 single blocks); each layout
# below changes only what it names.
_HUNYUAN_CFG = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": None,
                "context_in_dim": 48, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2,
                "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2],
                "qkv_bias": True, "guidance_embed": False, "byt5": False, "meanflow": False,
                "use_cond_type_embedding": False, "vision_in_dim": None}


def _tiny_hunyuan_net(seed: int, **layout):
    """The host's HunyuanVideo network in :data:`_HUNYUAN_CFG` changed by ``layout``, seeded."""
    import copy

    import comfy.ops
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    cfg = host_params(HunyuanVideoParams, {**copy.deepcopy(_HUNYUAN_CFG), **layout})
    net = HunyuanVideo(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


def tiny_hunyuan_video_net(seed: int = 0, context_dim: int = 48):
    """HunyuanVideo 1.0 layout (Flux blocks, 3-D patches, token refiner), width 64, 2 double + 2 single."""
    return _tiny_hunyuan_net(seed, vec_in_dim=16, context_in_dim=context_dim)


def tiny_hunyuan_video15_net(seed: int = 0, context_dim: int = 48, latent_channels: int | None = None):
    """HunyuanVideo 1.5 layout: ByT5 glyph-text mapper (the host fixes its 1472 -> 2048 widths), vision
    tokens (``vision_in``), condition-type embeddings, no pooled vector; width 64, 2 double + 2 single.

    ``latent_channels``: the sampler's layout for a latent of that many channels (the host's
    ``model_base.HunyuanVideo15`` concatenates an image condition of the same width and a mask channel
    to the noise, sized from ``img_in``'s input width: in ``2 * latent_channels + 1``, out
    ``latent_channels``); None keeps 16 in / 16 out for calling the network directly."""
    c_in, c_out = (16, 16) if latent_channels is None else (2 * latent_channels + 1, latent_channels)
    return _tiny_hunyuan_net(seed, in_channels=c_in, out_channels=c_out, context_in_dim=context_dim, byt5=True,
                             use_cond_type_embedding=True, vision_in_dim=40)


def tiny_hunyuan_image21_net(seed: int = 0, context_dim: int = 48):
    """HunyuanImage 2.1 layout (2-D 1x1 patches on 64 latent channels, no pooled vector), width 64."""
    return _tiny_hunyuan_net(seed, in_channels=64, out_channels=64, context_in_dim=context_dim, axes_dim=[16, 16],
                             patch_size=[1, 1])


def tiny_ltxv_net(seed: int = 0, context_dim: int = 48, cross_adaln: bool = False):
    """LTXVModel (128 latent channels, patch 1), width 64 (2 heads of 32), 2 blocks. ``cross_adaln``: the
    9-row adaLN table with cross-attention modulation (LTX-2 layout); TypeError on a host without it."""
    import comfy.ops
    from comfy.ldm.lightricks.model import LTXVModel

    cfg = {"image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64, "attention_head_dim": 32,
           "num_attention_heads": 2, "caption_channels": context_dim, "num_layers": 2}
    if cross_adaln:
        set_host_option(cfg, LTXVModel, "cross_attention_adaln", True)
    net = LTXVModel(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


def tiny_cosmos_predict2_net(seed: int = 0, context_dim: int = 48):
    """MiniTrainDIT in the Predict2 text-to-image layout (adaLN-LoRA, rope3d), width 64, 2 blocks."""
    import comfy.ops
    from comfy.ldm.cosmos.predict2 import MiniTrainDIT

    cfg = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
           "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
           "concat_padding_mask": True, "model_channels": 64, "num_blocks": 2, "num_heads": 2,
           "crossattn_emb_channels": context_dim, "pos_emb_cls": "rope3d", "pos_emb_learnable": True,
           "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30, "use_adaln_lora": True,
           "adaln_lora_dim": 16, "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
           "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0}
    net = MiniTrainDIT(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


def tiny_hidream_net(seed: int = 0, context_dim: int = 48, llama_dim: int = 40, pooled_dim: int = 32):
    """HiDream-I1 layout (mixture-of-experts SwiGLU with 4 routed experts, 2 active, one Llama layer per
    block), width 64 (2 heads of 32), 2 double + 2 single blocks. The host's detection fixes 20 heads of
    128; the text inputs are a T5 context (``context_dim``), Llama hidden states of 4 layers
    (``conditioning_llama3``: batch, layer, token, ``llama_dim``) and a pooled vector (``pooled_dim``)."""
    import comfy.ops
    from comfy.ldm.hidream.model import HiDreamImageTransformer2DModel

    cfg = {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
           "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
           "caption_channels": [context_dim, llama_dim], "text_emb_dim": pooled_dim, "num_routed_experts": 4,
           "num_activated_experts": 2, "axes_dims_rope": [16, 8, 8], "max_resolution": [128, 128],
           "llama_layers": [0, 1, 2, 3]}
    net = HiDreamImageTransformer2DModel(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)
    return net, cfg


TINY = {"hidream": ("HiDream", tiny_hidream_net), "ltxv": ("LTXV", tiny_ltxv_net), "cosmos_predict2": ("CosmosT2IPredict2", tiny_cosmos_predict2_net), "z_image": ("ZImage", tiny_lumina_net), "lumina2": ("Lumina2", tiny_lumina2_net),
        "qwen_image": ("QwenImage", tiny_qwen_image_net), "flux2": ("Flux2", tiny_flux2_net),
        "chroma": ("Chroma", tiny_chroma_net),
        "hunyuan_video15": ("HunyuanVideo15", lambda seed=0, context_dim=48: tiny_hunyuan_video15_net(
            seed, context_dim, latent_channels=_latent_channels("HunyuanVideo15")))}


def _load_tiny_builders() -> None:
    """The families not built above keep their tiny builders in ``tiny_<what>.py`` beside this file: each defines
    ``TINY = {family: (supported_models config name, builder(seed, context_dim) -> (net, cfg))}``.
    Loaded by path with ``seeded_``, ``host_params``, ``latent_channels`` and ``tiny_flux2_net`` set as globals, so they work
    both as package modules and when this file is loaded by path (tests/host/test_adapters_qwen_flux2_chroma_lumina_hunyuan_ltxv_cosmos_hidream.py)."""
    import importlib.util
    from pathlib import Path

    for path in sorted(Path(__file__).parent.glob("tiny_*.py")):
        if path.name == "tiny_models.py":
            continue
        spec = importlib.util.spec_from_file_location(f"procache_test_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        mod.seeded_, mod.host_params, mod.latent_channels = seeded_, host_params, _latent_channels
        mod.tiny_flux2_net = tiny_flux2_net
        spec.loader.exec_module(mod)
        TINY.update(getattr(mod, "TINY", {}))


def _latent_channels(format_name: str) -> int:
    """Channel count of the host's latent format (what the family's Empty...Latent node makes)."""
    import comfy.latent_formats

    return int(getattr(comfy.latent_formats, format_name).latent_channels)


_load_tiny_builders()


class ProCacheTestTinyDiT(io.ComfyNode):
    """A seeded tiny MODEL of a diffusion-transformer family (host classes, width 64, 2+2 blocks).

    The host's detection fixes these families' head layout (e.g. Qwen-Image 24 x 128, Flux.2 48 x 128),
    so a checkpoint cannot be small; the node builds the family's ``supported_models`` config with a
    tiny network config instead.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestTinyDiT",
            display_name="ProCache Test Tiny DiT (random weights)",
            category="ProCache/testing",
            inputs=[io.Combo.Input("family", options=sorted(TINY)),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                    io.Int.Input("context_dim", default=48, min=8, max=4096)],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, family: str, seed: int, context_dim: int) -> io.NodeOutput:
        import comfy.supported_models

        config_name, build = TINY[family]
        net, cfg = build(seed=seed, context_dim=context_dim)
        config = getattr(comfy.supported_models, config_name)(dict(cfg))
        return io.NodeOutput(patcher_from_config(config, net.state_dict()))


class ProCacheTestAttentionMask(io.ComfyNode):
    """Adds the all-ones text ``attention_mask`` a T5 encoder attaches (LTX-Video's forward requires one)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestAttentionMask",
            display_name="ProCache Test Attention Mask",
            category="ProCache/testing",
            inputs=[io.Conditioning.Input("conditioning")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning) -> io.NodeOutput:
        out = []
        for emb, extra in conditioning:
            extra = dict(extra)
            extra["attention_mask"] = torch.ones(emb.shape[:2], dtype=torch.long)
            out.append([emb, extra])
        return io.NodeOutput(out)


class ProCacheTestLlamaLayers(io.ComfyNode):
    """Adds seeded ``conditioning_llama3`` (batch, layers, tokens, dim): the per-layer Llama hidden states
    HiDream's text encoder attaches and its blocks read one layer each."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestLlamaLayers",
            display_name="ProCache Test Llama Layers",
            category="ProCache/testing",
            inputs=[io.Conditioning.Input("conditioning"),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                    io.Int.Input("layers", default=4, min=1, max=64),
                    io.Int.Input("tokens", default=7, min=1, max=512),
                    io.Int.Input("dim", default=40, min=8, max=4096)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, seed: int, layers: int, tokens: int, dim: int) -> io.NodeOutput:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for emb, extra in conditioning:
            extra = dict(extra)
            extra["conditioning_llama3"] = torch.randn((emb.shape[0], layers, tokens, dim), generator=gen)
            out.append([emb, extra])
        return io.NodeOutput(out)


NODES = [ProCacheTestTinySDXL, ProCacheTestTinyDiT, ProCacheTestAttentionMask, ProCacheTestLlamaLayers]
