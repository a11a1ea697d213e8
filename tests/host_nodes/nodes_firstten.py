"""Tiny SD3 and Wan 2.1 MODELs loaded through the host's real detection (comfy.sd), for the example tests.

They build the host's own network classes at a small width, seed the weights, and hand the state dict
to ``comfy.sd.load_diffusion_model_state_dict`` exactly as UNETLoader does with a file, so detection,
model config, ModelPatcher and sampling are the user's path; only the size differs.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io


def _seeded(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(net.named_parameters()):
            scale = p[0].numel() ** -0.5 if p.ndim >= 2 else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for _, b in sorted(net.named_buffers()):
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def _load(sd: dict[str, torch.Tensor]):
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
    if model is None:
        raise RuntimeError("the host did not detect the tiny model")
    return model


class ProCacheTestTinySD3(io.ComfyNode):
    """SD3 MMDiT, depth 2 (hidden 128, 2 heads), T5-sized context 64 and pooled 2048."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestExampleSD3", display_name="ProCache Test Tiny SD3 (random weights)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        import comfy.ops
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        net = OpenAISignatureMMDITWrapper(
            input_size=None, patch_size=2, in_channels=16, depth=2, adm_in_channels=2048, out_channels=16,
            pos_embed_max_size=16, num_patches=256,
            context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
            operations=comfy.ops.disable_weight_init)
        return io.NodeOutput(_load(_seeded(net, 10 + seed)))


class ProCacheTestTinyWan(io.ComfyNode):
    """Wan 2.1 text-to-video, dim 256 (2 heads), 2 blocks, text dim 4096 (the host's fixed value)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestExampleWan", display_name="ProCache Test Tiny Wan 2.1 (random weights)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        import comfy.ops
        from comfy.ldm.wan.model import WanModel

        net = WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=256, ffn_dim=512, freq_dim=256,
                       text_dim=4096, out_dim=16, num_heads=2, num_layers=2, operations=comfy.ops.disable_weight_init)
        return io.NodeOutput(_load(_seeded(net, 20 + seed)))


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
