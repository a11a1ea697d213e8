"""Bench-only ComfyUI nodes for `make bench-peers` (never shipped, never in the host's custom_nodes).

The bench server links this file into a custom-nodes folder of its own (an extra custom-nodes path), as a
single-file custom node; the test-node extension of this folder never serves it. The nodes count how often
the diffusion model and each of its transformer blocks run, whichever pack (ProCache, TeaCache, FBCache,
MagCache) wraps the model, so every peer's block-evaluation ratio is measured the same way: forward
pre-hooks on the host's block modules, counted between a Start node upstream of the cache and a Report
node downstream of the sampler. A third node overrides MagCache's magnitude ratios with ratios measured
on the model at hand (MagCache's node only offers the ratios fitted to the released weights).
"""
from __future__ import annotations

WEB_DIRECTORY = None

BLOCK_LISTS = ("double_blocks", "single_blocks", "blocks", "transformer_blocks", "joint_blocks")


class _Counter:
    """Counts of one diffusion model's forward calls and block calls since the last reset."""

    def __init__(self) -> None:
        self.model_calls = 0
        self.block_calls = 0

    def reset(self) -> None:
        self.model_calls = 0
        self.block_calls = 0


def _counter(diffusion_model) -> tuple[_Counter, int]:
    """The counter attached to this module (hooks installed once per module); returns it and the block count."""
    counter = getattr(diffusion_model, "_procache_bench_counter", None)
    blocks = [b for name in BLOCK_LISTS for b in (getattr(diffusion_model, name, None) or [])]
    if counter is None:
        counter = _Counter()

        def on_model(_mod, _args):
            counter.model_calls += 1

        def on_block(_mod, _args):
            counter.block_calls += 1

        diffusion_model.register_forward_pre_hook(on_model)
        for b in blocks:
            b.register_forward_pre_hook(on_block)
        diffusion_model._procache_bench_counter = counter
    return counter, len(blocks)


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension, io

    class ProCacheBenchCountStart(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id="ProCacheBenchCountStart", display_name="ProCache Bench Count Start",
                             category="ProCache/bench",
                             inputs=[io.Model.Input("model"), io.String.Input("token", default="")],
                             outputs=[io.Model.Output()])

        @classmethod
        def execute(cls, model, token: str) -> io.NodeOutput:
            counter, _ = _counter(model.get_model_object("diffusion_model"))
            counter.reset()
            return io.NodeOutput(model)

    class ProCacheBenchCountReport(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id="ProCacheBenchCountReport", display_name="ProCache Bench Count Report",
                             category="ProCache/bench", is_output_node=True,
                             inputs=[io.Latent.Input("samples"), io.Model.Input("model")],
                             outputs=[io.String.Output()])

        @classmethod
        def execute(cls, samples, model) -> io.NodeOutput:
            counter, n_blocks = _counter(model.get_model_object("diffusion_model"))
            text = (f"ProCacheBench counts: model_calls={counter.model_calls} block_calls={counter.block_calls} "
                    f"blocks_per_call={n_blocks}")
            return io.NodeOutput(text, ui={"text": [text]})

    class ProCacheBenchMagRatios(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id="ProCacheBenchMagRatios", display_name="ProCache Bench MagCache Ratios",
                             category="ProCache/bench",
                             inputs=[io.Model.Input("model"), io.String.Input("ratios", default="",
                                                                              tooltip="comma-separated")],
                             outputs=[io.Model.Output()])

        @classmethod
        def execute(cls, model, ratios: str) -> io.NodeOutput:
            import torch

            values = [float(v) for v in ratios.replace("[", "").replace("]", "").split(",") if v.strip()]
            m = model.clone()
            m.model_options.setdefault("transformer_options", {})["mag_ratios"] = torch.tensor(values)
            return io.NodeOutput(m)

    class Ext(ComfyExtension):
        async def get_node_list(self):
            return [ProCacheBenchCountStart, ProCacheBenchCountReport, ProCacheBenchMagRatios]

    return Ext()
