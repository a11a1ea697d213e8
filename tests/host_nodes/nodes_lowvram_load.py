"""Test node for the low-VRAM tests: the host's partial ("lowvram") weight loading forced on the CPU.

With ``--cpu`` ComfyUI sets its VRAM state to DISABLED and loads every model completely, whatever
``--lowvram`` / ``--novram`` say (``comfy.model_management.load_models_gpu``: a CPU load device gets
``VRAMState.DISABLED`` and ``lowvram_model_memory = 0``). To run ProCache on weights loaded the way
those flags load them on a GPU, this node gives the MODEL a ModelPatcher whose ``load`` receives a
small weight budget: the host's own ``ModelPatcher.load`` then offloads the layers that do not fit,
sets ``comfy_cast_weights`` on them (weights cast per call) and applies weight patches on the fly
(``LowVramPatch`` in ``weight_function``), exactly its low-VRAM path. Seeded diff patches (the form
model merges and LoRAs take) on every 2-D weight make sure those on-the-fly patches exist.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io


def _budgeted(fraction: float):
    import comfy.model_patcher

    class BudgetedPatcher(comfy.model_patcher.ModelPatcher):
        """``load`` with at most ``fraction`` of the model's weights on the load device (clones keep it)."""

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            budget = max(0.1, fraction * self.model_size())  # 0.1 bytes: --novram's "nothing fits"
            return super().load(device_to, lowvram_model_memory=budget, force_patch_weights=force_patch_weights,
                                full_load=False)

    return BudgetedPatcher


class ProCacheTestLowVram(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestLowVram", display_name="ProCache Test Low-VRAM Load", category="ProCache/testing",
            inputs=[io.Model.Input("model"),
                    io.Float.Input("load_fraction", default=1.0, min=0.0, max=1.0,
                                   tooltip="1: the host loads normally; below 1: partial load with this share of "
                                           "the weights resident (0: every layer offloaded, like --novram)"),
                    io.Int.Input("patch_seed", default=0, min=0, max=2**31 - 1)],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, load_fraction: float, patch_seed: int) -> io.NodeOutput:
        m = model.clone()
        gen = torch.Generator().manual_seed(patch_seed)
        patches = {}
        for k, w in sorted(m.model.state_dict().items()):
            if k.startswith("diffusion_model.") and w.ndim == 2:
                patches[k] = (torch.randn(w.shape, generator=gen) * 0.05 * w.shape[1] ** -0.5,)
        if not m.add_patches(patches, 1.0):
            raise RuntimeError("no weight patched")
        if load_fraction < 1.0:
            m.__class__ = _budgeted(load_fraction)
        return io.NodeOutput(m)


NODES = [ProCacheTestLowVram]
