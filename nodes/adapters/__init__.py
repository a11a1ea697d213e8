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
generic    any other model the host samples (UNets included)       ``APPLY_MODEL`` wrapper: the whole model call
=========  ======================================================  ===================================

Later families (flux2, chroma, qwen_image, z_image/lumina2, hunyuan_*, ltxv, cosmos_predict2) are
detected in ``_detect_more``; ``docs/families.md`` has the full table.

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
    "flux2": "Flux.2",
    "chroma": "Chroma / Chroma Radiance",
    "qwen_image": "Qwen-Image (and Edit)",
    "z_image": "Z-Image",
    "lumina2": "Lumina 2",
    "hunyuan_video": "HunyuanVideo 1.0",
    "hunyuan_video15": "HunyuanVideo 1.5",
    "hunyuan_image21": "HunyuanImage 2.1",
    "ltxv": "LTX-Video",
    "cosmos_predict2": "Cosmos Predict2",
}
GENERIC = "generic"   # every other model: schedule-only caching of the whole model call (generic.py)


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
    """Family name of a ComfyUI MODEL: a block adapter's, else ``"generic"`` (the model-level fallback).

    Only an input that is not a diffusion MODEL raises UnsupportedModelError."""
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
        return "flux2" if getattr(getattr(dm, "params", None), "global_modulation", False) else "flux"
    if isinstance(dm, MMDiT):
        return "sd3"
    if isinstance(dm, WanModel) and all(isinstance(b, WanAttentionBlock) for b in dm.blocks):
        return "wan"
    return _detect_more(dm, getattr(model_patcher.model, "model_config", None))


def _detect_more(dm: Any, model_config: Any = None) -> str:
    """Families added after the first four (one check each; the fallback when none matches)."""
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock

    try:
        from comfy.ldm.chroma.model import Chroma
        if isinstance(dm, Chroma) and all(type(b) is DoubleStreamBlock for b in dm.double_blocks) and \
                all(type(b) is SingleStreamBlock for b in dm.single_blocks):
            return "chroma"
    except ImportError:
        pass
    try:
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel, QwenImageTransformerBlock
        if isinstance(dm, QwenImageTransformer2DModel) and \
                all(type(b) is QwenImageTransformerBlock for b in dm.transformer_blocks):
            return "qwen_image"
    except ImportError:
        pass
    try:
        from comfy.ldm.lumina.model import JointTransformerBlock, NextDiT
        if isinstance(dm, NextDiT) and len(dm.layers) and \
                all(type(b) is JointTransformerBlock and b.modulation for b in dm.layers):
            from .lumina import lumina_variant

            return lumina_variant(dm)
    except ImportError:
        pass
    try:
        from comfy.ldm.hunyuan_video.model import HunyuanVideo
        if isinstance(dm, HunyuanVideo) and all(type(b) is DoubleStreamBlock and b.modulation for b in dm.double_blocks) \
                and all(type(b) is SingleStreamBlock and b.modulation is not None for b in dm.single_blocks):
            from .hunyuan_video import hunyuan_variant

            return hunyuan_variant(model_config)
    except ImportError:
        pass
    try:
        from comfy.ldm.lightricks.model import BasicTransformerBlock, LTXVModel
        if type(dm) is LTXVModel and all(type(b) is BasicTransformerBlock for b in dm.transformer_blocks):
            return "ltxv"
    except ImportError:
        pass
    try:
        from comfy.ldm.cosmos.predict2 import Block as CosmosBlock, MiniTrainDIT
        if isinstance(dm, MiniTrainDIT) and all(type(b) is CosmosBlock for b in dm.blocks):
            return "cosmos_predict2"
    except ImportError:
        pass
    return GENERIC


def model_name(model_patcher: Any) -> str:
    """``Network (ModelConfig)`` of a MODEL, for log lines."""
    dm = model_patcher.model.diffusion_model
    config = getattr(model_patcher.model, "model_config", None)
    return type(dm).__name__ + (f" ({type(config).__name__})" if config is not None else "")


def adapter_for(model_patcher: Any) -> FamilyAdapter:
    family = detect_family(model_patcher)
    dm = model_patcher.model.diffusion_model
    if family == "pixart":
        from .pixart import PixArtAdapter as cls
    elif family == "flux":
        from .flux import FluxAdapter as cls
    elif family == "sd3":
        from .sd3 import SD3Adapter as cls
    elif family == "wan":
        from .wan import WanAdapter as cls
    elif family == "flux2":
        from .flux2 import Flux2Adapter as cls
    elif family == "chroma":
        from .chroma import ChromaAdapter as cls
    elif family == "qwen_image":
        from .qwen_image import QwenImageAdapter as cls
    elif family in ("z_image", "lumina2"):
        from .lumina import LuminaAdapter as cls
    elif family == "ltxv":
        from .ltxv import LTXVAdapter as cls
    elif family == "cosmos_predict2":
        from .cosmos import CosmosPredict2Adapter as cls
    elif family.startswith("hunyuan_"):
        from .hunyuan_video import HunyuanVideoAdapter

        return HunyuanVideoAdapter(dm, family)
    else:
        from .generic import GenericAdapter

        return GenericAdapter(dm, model_name(model_patcher))
    return cls(dm)
