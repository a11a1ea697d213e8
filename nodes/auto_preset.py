"""Which preset ProCache Apply uses when no schedule is connected and its preset is "auto".

One table, one place: an adapter's ``family`` name -> the shipped preset made for that family. A new
family (or the generic fallback adapter, under the key ``"generic"``) adds one line here.
"""
from __future__ import annotations

from ..procache_core.errors import ProCacheError

AUTO = "auto"
FALLBACK_KEY = "generic"  # the model-level fallback adapter; also used for a family without an entry

# family -> preset name (schedules/<name>.yaml). Presets are remapped to the sampler's step count.
FAMILY_PRESETS: dict[str, str] = {
    "pixart": "pixart-alpha-20-balanced",
    "flux": "flux-28-balanced",
    "sd3": "sd3-28-balanced",
    "wan": "wan-30-balanced",
    # families without presets of their own: the rule preset of the nearest layout (image DiTs with
    # joint/double-stream blocks -> Flux's, video DiTs -> Wan's); ProCache Schedule Search tunes one
    "flux2": "flux-28-balanced",
    "chroma": "flux-28-balanced",
    "qwen_image": "flux-28-balanced",
    "z_image": "flux-28-balanced",
    "lumina2": "flux-28-balanced",
    "hunyuan_image21": "flux-28-balanced",
    "hidream": "flux-28-balanced",
    "hunyuan_video": "wan-30-balanced",
    "hunyuan_video15": "wan-30-balanced",
    "ltxv": "wan-30-balanced",
    "ltxav": "wan-30-balanced",   # LTX-2 audio-video
    "cosmos_predict2": "wan-30-balanced",
    "kandinsky5": "wan-30-balanced",
    "kandinsky5_image": "flux-28-balanced",
    FALLBACK_KEY: "flux-28-balanced",  # any other model (schedule-only caching of the whole model call)
}



def preset_name_for(family: str) -> str:
    """The preset "auto" stands for on a model of ``family`` (ProCacheError when there is none)."""
    name = FAMILY_PRESETS.get(family) or FAMILY_PRESETS.get(FALLBACK_KEY)
    if name is None:
        raise ProCacheError("preset", f"'auto' has no preset for the model family '{family}'.",
                            "pick a preset on ProCache Apply or connect a ProCache Schedule Loader.")
    return name
