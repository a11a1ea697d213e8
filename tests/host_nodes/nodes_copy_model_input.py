"""Test node for the in-host quality bench: the host's EasyCache measured for its method, not for an
aliasing slip of ComfyUI 0.3.75 that only shows when the model runs in the latent's own dtype.

EasyCache's skip path (comfy_extras/nodes_easycache.py, ``apply_cache_diff``) adds its cached
output-minus-input difference into the diffusion model's *input* tensor in place and returns that tensor
as the output. ``BaseModel._apply_model`` then computes ``denoised`` from the same input tensor, for
flow-matching models (Flux: ``calculate_input`` returns the input itself) whenever ``xc.to(dtype)`` is a
no-op, i.e. when the model runs in fp32 like the latent (the CPU case, ``--force-fp32``). In fp16 / bf16 (a
GPU's usual case) ``.to`` copies and EasyCache works as designed. This node hands the model a copy of its
input (a DIFFUSION_MODEL wrapper placed before EasyCache's, so it runs outside it), which is what the
half-precision path does; the outputs are otherwise unchanged.
"""
from __future__ import annotations

from comfy_api.latest import io


def _copy_input_wrapper(executor, *args, **kwargs):
    return executor(args[0].clone(), *args[1:], **kwargs)


class ProCacheTestCopyModelInput(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestCopyModelInput", display_name="ProCache Test Copy Model Input",
            category="ProCache/testing", inputs=[io.Model.Input("model")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        import comfy.patcher_extension

        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "procache_test_copy_input",
                               _copy_input_wrapper)
        return io.NodeOutput(m)


NODES = [ProCacheTestCopyModelInput]
