"""Seeded stand-ins for a text encoder, so PixArt/Flux-style models can be sampled in tests."""
from __future__ import annotations

import torch
from comfy_api.latest import ComfyExtension, io


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


class ProCacheTestExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ProCacheTestConditioning]
