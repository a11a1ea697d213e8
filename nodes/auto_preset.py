"""Which preset ProCache Apply uses when no schedule is connected and its preset is "auto".

A registered family names its preset where it registers (``adapters/registry.py``, the family's own
file); the table below holds the families detected in ``adapters/__init__.py`` and the generic fallback
adapter (key ``"generic"``, also used for a family without a preset).
"""
from __future__ import annotations

from ..procache_core.errors import ProCacheError

AUTO = "auto"
FALLBACK_KEY = "generic"  # the model-level fallback adapter; also used for a family without an entry

# family -> preset name (schedules/<name>.yaml). Presets are remapped to the sampler's step count.
FAMILY_PRESETS: dict[str, str] = {
    "flux": "flux-28-balanced",
    # families without presets of their own: the rule preset of the nearest layout (image DiTs with
    # joint/double-stream blocks -> Flux's, video DiTs -> Wan's); ProCache Schedule Search tunes one
    "flux2": "flux-28-balanced",
    "chroma": "flux-28-balanced",
    "qwen_image": "flux-28-balanced",
    "ltxv": "wan-30-balanced",
    FALLBACK_KEY: "flux-28-balanced",  # any other model (schedule-only caching of the whole model call)
}



def preset_name_for(family: str) -> str:
    """The preset "auto" stands for on a model of ``family`` (ProCacheError when there is none)."""
    from .adapters import registry

    name = FAMILY_PRESETS.get(family) or registry.preset_of(family) or FAMILY_PRESETS.get(FALLBACK_KEY)
    if name is None:
        raise ProCacheError("preset", f"'auto' has no preset for the model family '{family}'.",
                            "pick a preset on ProCache Apply or connect a ProCache Schedule Loader.")
    return name
