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


NODES = [ProCacheTestTinySD3, ProCacheTestTinyWan]
