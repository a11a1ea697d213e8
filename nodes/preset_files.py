"""Where presets live and how a listed one is read: shipped presets, the user folder, typed text.

Host-free at import (``folder_paths`` is imported when the user folder is first asked for), so the
Schedule Loader node, the run planner's few-step presets and the /procache/ payloads share one reader
and it can be tested without a host.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..procache_core.errors import ProCacheError, ScheduleError

log = logging.getLogger("ProCache")


def _p():
    """procache_core.presets, imported when first needed."""
    from ..procache_core import presets

    return presets


def user_presets_dir(create: bool = True) -> Path:
    import folder_paths

    d = Path(folder_paths.get_user_directory()) / "procache_presets"
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only user dir: list shipped presets only
            log.info("ProCache: cannot create %s (%s); user presets disabled", d, exc)
    return d


def available_presets() -> dict[str, Path]:
    """Dropdown name -> file: shipped presets by name, user presets as ``user/<name>``.

    A user file that resolves outside the user folder (a link) is not listed, so nothing is ever read
    through it (the /procache/ routes list the same way).
    """
    pm = _p()
    out = {str(k): Path(v) for k, v in sorted(pm.list_presets([pm.shipped_presets_dir()]).items())}
    udir = user_presets_dir()
    if udir.is_dir():
        root = udir.resolve()
        for k, v in sorted(pm.list_presets([udir]).items()):
            v = Path(v)
            # a plain file in the folder is inside it; only a link (or a linked folder) needs resolving
            if (v.is_symlink() or v.parent != udir) and v.resolve().parent != root:
                continue
            k = str(k)
            out[k if k.startswith(pm.USER_PREFIX) else pm.USER_PREFIX + k] = Path(v)
    return out


def load_listed_preset(name: str, path: Path):
    """Load a listed preset; messages name it as listed ("user/mine"), never by its server path."""
    return _p().parse_preset_text(read_listed_preset(name, path), f"preset {name}")


def read_listed_preset(name: str, path: Path) -> bytes:
    """A listed preset file's bytes (at most the size limit); errors name it as listed."""
    pm = _p()
    try:
        with open(path, "rb") as fh:  # never more than the size limit into memory
            raw = fh.read(pm.MAX_PRESET_BYTES + 1)
    except FileNotFoundError:
        raise ProCacheError("preset", f"'{name}' was removed from its folder.",
                            "pick another preset or save this one again.") from None
    except OSError as exc:
        raise ProCacheError("preset", f"'{name}' cannot be read ({exc.strerror or type(exc).__name__}).",
                            "check the file's permissions in <user dir>/procache_presets.") from None
    if len(raw) > pm.MAX_PRESET_BYTES:
        raise ProCacheError("preset", f"'{name}' is larger than {pm.MAX_PRESET_BYTES // 1024} KiB.",
                            "a preset is a few lines; remove what does not belong to it.")
    return raw


def preset_from_text(text: str):
    """A Preset from the schedule_text widget: an F/C/S string, or a whole YAML preset (the one rule:
    ``procache_core.presets.typed_actions``)."""
    pm = _p()
    if pm.typed_actions(text) is not None:
        try:
            return pm.Preset.from_schedule_text(text, source="schedule_text")
        except ProCacheError as exc:
            raise ScheduleError("schedule_text", f"is not a valid schedule ({exc.problem})",
                                "type one letter per step: F (full), C (cached), S (selective), starting with F, "
                                "e.g. FCSCFCSF; or clear it to use the preset.") from None
        except ValueError as exc:
            raise ScheduleError("schedule_text", f"is not a valid schedule ({exc})",
                                "type one letter per step: F, C or S, starting with F, e.g. FCSCFCSF.") from None
    try:
        return pm.parse_preset_text(text, "schedule_text")
    except ProCacheError as exc:
        if "schedule_text" in str(exc):
            raise
        raise ScheduleError("schedule_text", f"holds a preset that is not valid: {exc}",
                            "fix the YAML, type a plain F/C/S schedule, or clear it to use the preset.") from None


def load_named_preset(name: str, field: str = "preset"):
    """A shipped or user preset by its dropdown name (ProCacheError naming ``field`` when missing)."""
    found = available_presets()
    if name not in found:
        raise ProCacheError(field, f"'{name}' was not found.",
                            f"pick one of {sorted(found) or 'the shipped presets'} or type a schedule "
                            "into a ProCache Schedule Loader.")
    return load_listed_preset(name, found[name])
