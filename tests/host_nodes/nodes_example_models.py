"""Tiny SD3 and Wan 2.1 MODELs loaded through the host's real detection (comfy.sd), for the example tests.

Built by ``tiny_models`` (shared with the selective-compute nodes, other sizes): the host's own network
classes at a small width, loaded the way UNETLoader loads a file.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from .tiny_models import tiny_sd3, tiny_wan


class ProCacheTestTinySD3(io.ComfyNode):
    """SD3 MMDiT, depth 2 (hidden 128, 2 heads), T5-sized context 64 and pooled 2048."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestExampleSD3", display_name="ProCache Test Tiny SD3 (random weights)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_sd3(10 + seed, context_dim=64, pos_embed_max_size=16))


class ProCacheTestTinyWan(io.ComfyNode):
    """Wan 2.1 text-to-video, dim 256 (2 heads), 2 blocks, text dim 4096 (the host's fixed value)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestExampleWan", display_name="ProCache Test Tiny Wan 2.1 (random weights)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_wan(20 + seed, dim=256, ffn_dim=512, num_heads=2, num_layers=2))


class Int8Linear(torch.nn.Module):
    """A quantized-style layer as GGUF / int8 packs install it: not a torch Linear, int8 weights with a
    per-row scale, dequantized in forward."""

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        w = lin.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
        self.register_buffer("qweight", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if lin.bias is None else torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.qweight.to(x.dtype) * self.scale.to(x.dtype))
        return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def quantize_linears(module: torch.nn.Module) -> int:
    """Replaces every Linear under ``module`` by an Int8Linear in place; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Int8Linear(child))
            n += 1
        else:
            n += quantize_linears(child)
    return n


class ProCacheTestTinyFluxInt8(io.ComfyNode):
    """The tiny Flux of ProCacheTestTinyFlux with every Linear of its blocks replaced by Int8Linear."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestTinyFluxInt8", display_name="ProCache Test Tiny Flux int8 (random)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        from .test_nodes import ProCacheTestTinyFlux

        model = ProCacheTestTinyFlux.execute(seed=seed, depth=2, depth_single_blocks=2, context_in_dim=64).result[0]
        dm = model.model.diffusion_model
        n = sum(quantize_linears(b) for b in [*dm.double_blocks, *dm.single_blocks])
        if n == 0:
            raise RuntimeError("no Linear found to quantize")
        return io.NodeOutput(model)


class ProCacheTestCompileCounters(io.ComfyNode):
    """torch._dynamo's counters of this server process as JSON (``reset`` clears them first)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestCompileCounters", display_name="ProCache Test Dynamo Counters",
                         category="ProCache/testing", is_output_node=True,
                         inputs=[io.Boolean.Input("reset", default=False),
                                 io.Latent.Input("samples", optional=True, tooltip="makes it run after a sampler")],
                         outputs=[io.String.Output()])

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, reset: bool, samples=None) -> io.NodeOutput:
        import json

        from torch._dynamo.utils import counters

        if reset:
            counters.clear()
        text = json.dumps({k: dict(v) for k, v in counters.items()}, default=str)
        return io.NodeOutput(text, ui={"text": [text]})


NODES = [ProCacheTestTinySD3, ProCacheTestTinyWan, ProCacheTestTinyFluxInt8, ProCacheTestCompileCounters]
