"""A stand-in for a future ComfyUI that changed a block (tests/host/test_host_drift_fallback.py).

ProCacheTestDriftModel reloads the input MODEL's network through the host's own loader
(``comfy.sd.load_diffusion_model_state_dict``, as UNETLoader does), so the input MODEL is left untouched,
then turns every transformer block of the copy into a subclass of the host's block class that differs the
way a host update could:

* ``scale``: the block's residual update is scaled by 1.25 (its arithmetic differs from the adapter's);
* ``rename``: an attribute the adapter reads is renamed (PixArt: ``scale_shift_table`` -> ``ada_table``;
  SD3: ``x_block`` -> ``image_block``) and the block's forward uses the new name.

Supported networks: PixArt (``blocks``) and SD3 MMDiT (``joint_blocks``).
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

_CLASSES: dict[tuple[type, str], type] = {}   # one subclass per (host class, mode): stable across runs


def _pixart_class(base: type, mode: str) -> type:
    from comfy.ldm.pixart.blocks import t2i_modulate

    if mode == "scale":
        def forward(self, x, y, t, mask=None, HW=None, **kwargs):
            out = base.forward(self, x, y, t, mask, HW, **kwargs)
            return x + 1.25 * (out - x)
    else:
        def forward(self, x, y, t, mask=None, HW=None, **kwargs):
            b = x.shape[0]
            mods = (self.ada_table[None].to(dtype=x.dtype, device=x.device) + t.reshape(b, 6, -1)).chunk(6, dim=1)
            x = x + mods[2] * self.attn(t2i_modulate(self.norm1(x), mods[0], mods[1]), HW=HW)
            x = x + self.cross_attn(x, y, mask)
            return x + mods[5] * self.mlp(t2i_modulate(self.norm2(x), mods[3], mods[4]))
    return type(f"Drift{mode.title()}{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


def _sd3_class(base: type, mode: str) -> type:
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    if mode == "scale":
        def forward(self, context, x, *args, **kwargs):
            ctx, out = base.forward(self, context, x, *args, **kwargs)
            return ctx, x + 1.25 * (out - x)
    else:
        def forward(self, *args, **kwargs):
            return mmdit.block_mixing(*args, context_block=self.context_block, x_block=self.image_block, **kwargs)
    return type(f"Drift{mode.title()}{base.__name__}", (base,), {"forward": forward, "__module__": __name__})


def _drift_block(block: torch.nn.Module, family: str, mode: str) -> None:
    base = type(block)
    cls = _CLASSES.get((base, mode))
    if cls is None:
        cls = _CLASSES[(base, mode)] = (_pixart_class if family == "pixart" else _sd3_class)(base, mode)
    if mode == "rename":
        if family == "pixart":
            table = block.scale_shift_table
            del block.scale_shift_table
            block.ada_table = table
        else:
            inner = block.x_block
            del block.x_block
            block.image_block = inner
    block.__class__ = cls


class ProCacheTestDriftModel(io.ComfyNode):
    """A copy of a PixArt / SD3 MODEL whose blocks differ from what ProCache's adapter computes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProCacheTestDriftModel", display_name="ProCache Test Drifted Host Blocks",
                         category="ProCache/testing",
                         inputs=[io.Model.Input("model"), io.Combo.Input("mode", options=["scale", "rename"])],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, mode: str) -> io.NodeOutput:
        import comfy.sd
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
        from comfy.ldm.pixart.pixartms import PixArtMS

        sd = {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
        copy = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
        if copy is None:
            raise RuntimeError("the host did not detect the copied network")
        dm = copy.model.diffusion_model
        if isinstance(dm, PixArtMS):
            family, blocks = "pixart", dm.blocks
        elif isinstance(dm, MMDiT):
            family, blocks = "sd3", dm.joint_blocks
        else:
            raise RuntimeError(f"{type(dm).__name__}: only PixArt and SD3 networks are drifted")
        for block in blocks:
            _drift_block(block, family, mode)
        return io.NodeOutput(copy)


NODES = [ProCacheTestDriftModel]
