"""Model-family adapters: detect the family of a MODEL and patch its blocks for ProCache.

An adapter splits each transformer block of its family into residual *branches* with the same
arithmetic as the host's block (see ``procache_core.engine.Branch``) and installs patches on a
ModelPatcher clone through the host's composable, keyed mechanisms:

=========  ======================================================  ===================================
family     classes (``model.model.diffusion_model``)               patches
=========  ======================================================  ===================================
pixart     ``comfy.ldm.pixart.pixartms.PixArtMS`` (α and Σ)        object patch ``diffusion_model.blocks.N.forward``
flux       ``comfy.ldm.flux.model.Flux`` (Flux.1 dev/schnell)      ``dit`` replace ``double_block``/``single_block``
sd3        ``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT``      ``dit`` replace ``double_block`` (joint blocks)
wan        ``comfy.ldm.wan.model.WanModel`` and subclasses          object patch ``diffusion_model.blocks.N.forward``
=========  ======================================================  ===================================

A patched block that finds no ProCache run of its own in progress (see
``runtime_bridge.active_run``) calls the host's unpatched ``forward``, so a stale object patch left on
the shared model by the host's clone handling is harmless.
"""
from __future__ import annotations

from typing import Any

from ...procache_core.errors import UnsupportedModelError
from ..runtime_bridge import active_run

SUPPORTED_FAMILIES = {
    "pixart": "PixArt-α / PixArt-Σ",
    "flux": "Flux.1 (dev, schnell)",
    "sd3": "SD3 / SD3.5 (MMDiT)",
    "wan": "Wan 2.x",
}


class FamilyAdapter:
    """Base class. ``num_blocks`` counts engine blocks (a joint block may count as two streams)."""

    family: str = ""
    selective_support: str = "none"   # "full", "partial" or "none": which blocks can recompute tokens

    def __init__(self, diffusion_model: Any) -> None:
        self.dm = diffusion_model
        self.num_blocks = 0

    def install(self, model_patcher: Any, owner: Any) -> None:
        raise NotImplementedError

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        """2-D token grid of the image stream for model input shape ``x_shape`` (spatial token bonus)."""
        return None

    def describe(self) -> str:
        return f"{self.family}: {self.num_blocks} cached blocks, selective compute {self.selective_support}"

    def modulation_layers(self) -> dict[str, Any]:
        """name -> the adaLN linear whose gate rows reused steps slice (families that slice them)."""
        return {}

    def unsplit_report(self) -> str | None:
        """One line naming the adaLN layers reused steps evaluate whole (quantized / GGUF / patched
        layers), or None when every one is sliced."""
        from .modulation import why_unsliced

        layers = self.modulation_layers()
        reasons: dict[str, list[str]] = {}
        for name, layer in layers.items():
            why = why_unsliced(layer)
            if why is not None:
                reasons.setdefault(why, []).append(name)
        if not reasons:
            return None
        n = sum(len(v) for v in reasons.values())
        parts = "; ".join(f"{why}: {v[0]}{f' and {len(v) - 1} more' if len(v) > 1 else ''}"
                          for why, v in reasons.items())
        return (f"ProCache: {n} of {len(layers)} adaLN layers are not split into gate rows ({parts}); "
                "reused steps evaluate them whole: results are exact, those layers just save no time.")


class DitBlockReplace:
    """A ``dit`` replace patch: the adapter's branch split while a ProCache run of ``owner`` is active,
    the host's own block otherwise (a patch left on a shared model is then harmless)."""

    def __init__(self, adapter: "FamilyAdapter", index: int, owner: Any) -> None:
        self.adapter, self.index, self.owner = adapter, index, owner

    def __call__(self, args: dict, extra: dict) -> dict:
        run = active_run(self.owner)
        if run is None:
            return extra["original_block"](args)
        return self.run_block(run, args)

    def run_block(self, run: Any, args: dict) -> dict:
        raise NotImplementedError


def supported_text() -> str:
    return ", ".join(SUPPORTED_FAMILIES.values())


def detect_family(model_patcher: Any) -> str:
    """Family name of a ComfyUI MODEL (raises UnsupportedModelError with the supported list)."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if dm is None:
        raise UnsupportedModelError("model", "is not a diffusion MODEL ComfyUI can sample.",
                                    f"connect the MODEL output of a loader. Supported families: {supported_text()}.")
    from comfy.ldm.pixart.pixartms import PixArtMS
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.ldm.wan.model import WanModel, WanAttentionBlock

    if isinstance(dm, PixArtMS):
        return "pixart"
    if isinstance(dm, Flux) and all(type(b) is DoubleStreamBlock for b in dm.double_blocks) and \
            all(type(b) is SingleStreamBlock for b in dm.single_blocks):
        return "flux"
    if isinstance(dm, MMDiT):
        return "sd3"
    if isinstance(dm, WanModel) and all(isinstance(b, WanAttentionBlock) for b in dm.blocks):
        return "wan"
    config = getattr(getattr(model_patcher, "model", None), "model_config", None)
    what = type(dm).__name__ + (f" ({type(config).__name__})" if config is not None else "")
    raise UnsupportedModelError("model", f"is a {what}, which ProCache has no adapter for.",
                                f"use a model of a supported family: {supported_text()}.")


def adapter_for(model_patcher: Any) -> FamilyAdapter:
    family = detect_family(model_patcher)
    dm = model_patcher.model.diffusion_model
    if family == "pixart":
        from .pixart import PixArtAdapter as cls
    elif family == "flux":
        from .flux import FluxAdapter as cls
    elif family == "sd3":
        from .sd3 import SD3Adapter as cls
    else:
        from .wan import WanAdapter as cls
    return cls(dm)
