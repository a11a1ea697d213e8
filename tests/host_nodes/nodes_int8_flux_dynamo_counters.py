"""Probes for what users combine ProCache with: a tiny Flux whose block linears are int8-style quantized
layers (dequantized in forward, as GGUF / int8 packs install them), and torch._dynamo's counters of the
server process (what torch.compile compiled and recompiled)."""
from __future__ import annotations

import torch
from comfy_api.latest import io


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
        from .nodes_conditioning_tiny_flux import ProCacheTestTinyFlux

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


NODES = [ProCacheTestTinyFluxInt8, ProCacheTestCompileCounters]
