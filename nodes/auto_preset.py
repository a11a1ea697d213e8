"""Which preset ProCache Apply uses when no schedule is connected and its preset is "auto".

Each family names its preset where it registers (``adapters/registry.py``, in the family's own file); the
model-level fallback (``"generic"``, also used for a family registered without a preset) has the one below.
"""
from __future__ import annotations

AUTO = "auto"
FALLBACK_KEY = "generic"  # the model-level fallback adapter; also used for a family without a preset
# any other model (schedule-only caching of the whole model call): Flux.1's rule preset
FALLBACK_PRESET = "flux-28-balanced"


def family_presets() -> dict[str, str]:
    """family -> preset name (schedules/<name>.yaml) for every registered family with a preset, and the
    fallback. Presets are remapped to the sampler's step count."""
    from .adapters import registry

    presets = {name: fam.preset for name, fam in registry.families().items() if fam.preset}
    presets[FALLBACK_KEY] = FALLBACK_PRESET
    return presets


def preset_name_for(family: str) -> str:
    """The preset "auto" stands for on a model of ``family`` (the fallback's for a family without one)."""
    return family_presets().get(family, FALLBACK_PRESET)
