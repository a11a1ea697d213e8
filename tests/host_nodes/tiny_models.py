"""Seeded tiny SD3 and Wan 2.1 MODELs in the host's own classes, sizes as parameters (test nodes only).

The network is built at a small width, its weights seeded, and its state dict handed to
``comfy.sd.load_diffusion_model_state_dict`` as UNETLoader does with a file: detection, model config,
ModelPatcher and sampling are the user's path; only the size differs.
"""
from __future__ import annotations

import torch


def seeded_(net: torch.nn.Module, seed: int, bias_scale: float = 0.02) -> None:
    """Deterministic random weights in place (matrices scaled by 1/sqrt(fan-in), vectors by ``bias_scale``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, prm in sorted(net.named_parameters()):
            if prm.ndim >= 2:
                prm.copy_(torch.randn(prm.shape, generator=gen) / prm[0].numel() ** 0.5)
            else:
                prm.copy_(torch.randn(prm.shape, generator=gen) * bias_scale)


def seeded(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``net``'s state dict with seeded weights (matrices scaled by 1/sqrt(fan-in), vectors 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(net.named_parameters()):
            scale = p[0].numel() ** -0.5 if p.ndim >= 2 else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for _, b in sorted(net.named_buffers()):
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def load_like_unet_loader(sd: dict[str, torch.Tensor]):
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
    if model is None:
        raise RuntimeError("the host did not detect the tiny model")
    return model


def tiny_sd3(seed: int, *, context_dim: int, pos_embed_max_size: int, depth: int = 2):
    """SD3 MMDiT (hidden 64 * depth, depth heads), pooled 2048; ``context_dim`` 4096 is SD3's T5 width."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    net = OpenAISignatureMMDITWrapper(
        input_size=None, patch_size=2, in_channels=16, depth=depth, adm_in_channels=2048, out_channels=16,
        pos_embed_max_size=pos_embed_max_size, num_patches=pos_embed_max_size ** 2,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": context_dim, "out_features": 64 * depth}},
        operations=comfy.ops.disable_weight_init)
    return load_like_unet_loader(seeded(net, seed))


def tiny_wan(seed: int, *, dim: int, ffn_dim: int, num_heads: int, num_layers: int):
    """Wan 2.1 text-to-video; text dim 4096 (the host's fixed value)."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    net = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=dim, ffn_dim=ffn_dim,
                   freq_dim=256, text_dim=4096, out_dim=16, num_heads=num_heads, num_layers=num_layers,
                   operations=comfy.ops.disable_weight_init)
    return load_like_unet_loader(seeded(net, seed))


# Fields a host's params dataclass requires that older hosts did not have, with the value the host's own
# detection (comfy/model_detection.py) gives a checkpoint of that layout. Keyed by the field name; a
# layout that needs another value passes it in ``cfg`` itself.
HOST_PARAM_DEFAULTS: dict[str, object] = {
    "txt_ids_dims": [],      # FluxParams / ChromaParams (0.8+): Flux.1 and Chroma use none; Flux.2 passes [3]
    "vec_in_dim": None,      # ChromaParams (0.8+): Chroma has no pooled-vector input
    "meanflow_sum": False,   # HunyuanVideoParams (0.8+): only the meanflow 1.5 distills sum
}


def host_params(params_cls: type, cfg: dict, defaults: dict | None = None) -> dict:
    """``cfg`` plus every field ``params_cls`` (the host's FluxParams, ChromaParams, HunyuanVideoParams, ...)
    requires and ``cfg`` lacks, so one builder constructs the network on every host: fields are taken
    from ``defaults`` (then :data:`HOST_PARAM_DEFAULTS`); keys the host does not know are never added."""
    import dataclasses

    out = dict(cfg)
    table = {**HOST_PARAM_DEFAULTS, **(defaults or {})}
    for f in dataclasses.fields(params_cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in out:
            if f.name not in table:
                raise KeyError(f"{params_cls.__name__} requires {f.name!r}: give the builder a value for it")
            out[f.name] = table[f.name]
    return out


def set_host_option(cfg: dict, net_cls: type, name: str, value: object) -> None:
    """``cfg[name] = value`` for a constructor argument newer hosts added to ``net_cls``; on a host whose
    class lacks it a TypeError names the class and the argument (tests skip that variant on it)."""
    import inspect

    if name not in inspect.signature(net_cls.__init__).parameters:
        raise TypeError(f"this host's {net_cls.__name__} has no {name}")
    cfg[name] = value
