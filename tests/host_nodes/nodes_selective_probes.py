"""Test-only nodes for selective compute, stale caches and composition (never shipped).

* ProCacheTestTinySD3 / ProCacheTestTinyWan: seeded tiny MODELs of the host's MMDiT / WanModel
  (``tiny_models``, shared with the example-workflow nodes at other sizes), loaded like UNETLoader.
* ProCacheTestRowCounter + ProCacheTestRowCounts: wrap named submodules (object patches) so every call
  records how many token rows it received; the counts node reports them after the sampler ran.
* ProCacheTestBlockOffset: another pack's block patch on block 0 (``dit`` replace for Flux/SD3, a
  ``forward`` object patch otherwise) that counts its calls and adds a known offset to the image
  stream. It chains like a well-behaved pack: it calls what was installed before it.
* ProCacheTestSplitBatches: makes the host's own memory check in ``calc_cond_batch`` fail for batches
  of more than one condition on chosen sampler calls, so the host runs cond and uncond as separate
  calls on those steps and batches them again on the others (what low free memory does).
"""
from __future__ import annotations

import json
import threading

import torch
from comfy_api.latest import io

from .tiny_models import tiny_sd3, tiny_wan

_COUNTS: dict[str, list] = {}
_LOCK = threading.Lock()


class ProCacheTestTinySD3(io.ComfyNode):
    """Seeded tiny SD3 (MMDiT, depth 2 -> hidden 128; context 4096, pooled 2048 like SD3's encoders)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestTinySD3", display_name="ProCache Test Tiny SD3 (random weights)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_sd3(seed, context_dim=4096, pos_embed_max_size=32))


class ProCacheTestTinyWan(io.ComfyNode):
    """Seeded tiny Wan 2.1 text-to-video model (dim 128, 1 head, 4 blocks; text context 4096)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestTinyWan", display_name="ProCache Test Tiny Wan (random weights)",
                         category="ProCache/testing", inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_wan(seed, dim=128, ffn_dim=256, num_heads=1, num_layers=4))


class _RowCounter(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, label: str, path: str) -> None:
        super().__init__()
        self.inner, self.label, self.path = inner, label, path

    def forward(self, x, *args, **kwargs):
        with _LOCK:
            _COUNTS.setdefault(self.label, []).append([self.path, int(x.shape[0]), int(x.shape[1])])
        return self.inner(x, *args, **kwargs)


class ProCacheTestRowCounter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestRowCounter", display_name="ProCache Test Row Counter", category="ProCache/testing",
            inputs=[io.Model.Input("model"), io.String.Input("label", default="rows"),
                    io.String.Input("paths", default="", tooltip="comma-separated module paths, e.g. "
                                                                 "diffusion_model.blocks.3.mlp")],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, label: str, paths: str) -> io.NodeOutput:
        m = model.clone()
        for path in [p.strip() for p in paths.split(",") if p.strip()]:
            m.add_object_patch(path, _RowCounter(model.get_model_object(path), label, path))
        with _LOCK:
            _COUNTS.pop(label, None)
        return io.NodeOutput(m)


class ProCacheTestRowCounts(io.ComfyNode):
    """Reports (and clears) what a row counter / block offset recorded: JSON list of calls."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestRowCounts", display_name="ProCache Test Row Counts",
                         category="ProCache/testing",
                         inputs=[io.Latent.Input("samples"), io.String.Input("label", default="rows")],
                         outputs=[io.String.Output()], is_output_node=True)

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")

    @classmethod
    def execute(cls, samples, label: str) -> io.NodeOutput:
        with _LOCK:
            text = "ROWS " + json.dumps(_COUNTS.pop(label, []))
        return io.NodeOutput(text, ui={"text": [text]})


class _OffsetReplace:
    def __init__(self, prev, offset: float, label: str) -> None:
        self.prev, self.offset, self.label = prev, offset, label

    def __call__(self, args: dict, extra: dict) -> dict:
        with _LOCK:
            _COUNTS.setdefault(self.label, []).append(["call"])
        out = self.prev(args, extra) if self.prev is not None else extra["original_block"](args)
        out = dict(out)
        out["img"] = out["img"] + self.offset
        return out


class _OffsetForward:
    def __init__(self, prev, offset: float, label: str) -> None:
        self.prev, self.offset, self.label = prev, offset, label

    def __call__(self, *args, **kwargs):
        with _LOCK:
            _COUNTS.setdefault(self.label, []).append(["call"])
        return self.prev(*args, **kwargs) + self.offset


class ProCacheTestBlockOffset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestBlockOffset", display_name="ProCache Test Block Offset", category="ProCache/testing",
            inputs=[io.Model.Input("model"), io.Float.Input("offset", default=0.01, min=-10.0, max=10.0, step=0.001),
                    io.String.Input("label", default="offset")],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, offset: float, label: str) -> io.NodeOutput:
        m = model.clone()
        dm = m.model.diffusion_model
        if hasattr(dm, "double_blocks") or hasattr(dm, "joint_blocks"):
            to = m.model_options.get("transformer_options", {})
            prev = to.get("patches_replace", {}).get("dit", {}).get(("double_block", 0))
            m.set_model_patch_replace(_OffsetReplace(prev, offset, label), "dit", "double_block", 0)
        else:
            key = "diffusion_model.blocks.0.forward"
            m.add_object_patch(key, _OffsetForward(m.get_model_object(key), offset, label))
        with _LOCK:
            _COUNTS.pop(label, None)
        return io.NodeOutput(m)


class ProCacheTestSplitBatches(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestSplitBatches", display_name="ProCache Test Split Batches (low memory)",
            category="ProCache/testing",
            inputs=[io.Model.Input("model"),
                    io.String.Input("split_calls", default="2", tooltip="comma-separated calc_cond_batch call "
                                                                        "indices (0 = first step of a sampling)")],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, split_calls: str) -> io.NodeOutput:
        import comfy.patcher_extension as pe

        split = {int(s) for s in split_calls.split(",") if s.strip()}
        state = {"n": 0, "split": False}
        m = model.clone()
        estimate = model.get_model_object("memory_required")

        def outer(executor, *args, **kwargs):
            state["n"] = 0
            return executor(*args, **kwargs)

        def calc(executor, *args, **kwargs):
            state["split"] = state["n"] in split
            state["n"] += 1
            return executor(*args, **kwargs)

        def memory_required(input_shape, *args, **kwargs):
            if state["split"] and input_shape[0] > 1:
                return float("inf")  # "does not fit": the host runs the conditions one by one
            return estimate(input_shape, *args, **kwargs)

        m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, "procache_test_split", outer)
        m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "procache_test_split", calc)
        m.add_object_patch("memory_required", memory_required)
        return io.NodeOutput(m)


NODES = [ProCacheTestTinySD3, ProCacheTestTinyWan, ProCacheTestRowCounter, ProCacheTestRowCounts,
         ProCacheTestBlockOffset, ProCacheTestSplitBatches]
