"""Fault injection for the reliability tests and benchmarks/faults.py (test-only, never shipped).

ProCacheTestInterruptAt returns a clone of the MODEL that raises the host's own interrupt at a chosen
point of a sampling run: during model evaluation ``at_eval`` (0-based, counted from the start of each
run), when block ``block`` (index into the transformer's blocks; Flux: double then single blocks) first
runs one of its modules, or before the model call when ``block`` is -1 or that block does no work in that
evaluation (a cached step). It sets the same flag POST /interrupt sets, so the next host op raises
``InterruptProcessingException`` exactly as a user's cancel would, only at a known place.
"""
from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

KEY = "procache_test_fault"


def _blocks(diffusion_model: Any) -> list[torch.nn.Module]:
    for names in (("double_blocks", "single_blocks"), ("joint_blocks",), ("transformer_blocks",), ("blocks",)):
        found = [b for n in names for b in (getattr(diffusion_model, n, None) or [])]
        if found:
            return found
    return []


class ProCacheTestInterruptAt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestInterruptAt",
            display_name="ProCache Test Interrupt At (fault injection)",
            category="ProCache/testing",
            inputs=[
                io.Model.Input("model"),
                io.Int.Input("at_eval", default=0, min=0, max=10_000),
                io.Int.Input("block", default=-1, min=-1, max=1000),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, at_eval: int, block: int) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.patcher_extension as pe

        state = {"evals": 0}

        def outer(executor, *args, **kwargs):
            state["evals"] = 0
            return executor(*args, **kwargs)

        def apply_model(executor, *args, **kwargs):
            i = state["evals"]
            state["evals"] += 1
            if i != at_eval:
                return executor(*args, **kwargs)
            blocks = _blocks(executor.class_obj.diffusion_model)
            if block < 0 or block >= len(blocks):
                mm.interrupt_current_processing(True)
                return executor(*args, **kwargs)

            def fire(*_a):
                mm.interrupt_current_processing(True)

            handles = [m.register_forward_pre_hook(fire) for m in blocks[block].modules()]
            try:
                out = executor(*args, **kwargs)
            finally:
                for h in handles:
                    h.remove()
            mm.interrupt_current_processing(True)  # the block did no work in this evaluation: next op
            return out

        patched = model.clone()
        for wtype, fn in ((pe.WrappersMP.OUTER_SAMPLE, outer), (pe.WrappersMP.APPLY_MODEL, apply_model)):
            patched.remove_wrappers_with_key(wtype, KEY)
            patched.add_wrapper_with_key(wtype, KEY, fn)
        return io.NodeOutput(patched)


NODES = [ProCacheTestInterruptAt]
