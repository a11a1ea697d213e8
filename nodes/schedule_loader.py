"""ProCache Schedule Loader: a shipped/user preset, or a schedule typed in as F/C/S text."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from comfy_api.latest import io

from ..procache_core.errors import ProCacheError, ScheduleError
from ..procache_core.schedule import Schedule
from ..procache_core.settings import SelectiveSettings

log = logging.getLogger("ProCache")

ScheduleSocket = io.Custom("PROCACHE_SCHEDULE")
NO_PRESETS = "(no presets found)"
DEFAULT_PRESET = "pixart-alpha-dpm20-paper"
_SCHEDULE_RE = re.compile(r"^[FCSfcs\s,|_\-]+$")


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


def _file_fingerprint(path: Path) -> str:
    try:
        data = path.read_bytes()
        return f"{path}:{os.stat(path).st_mtime_ns}:{hashlib.sha256(data).hexdigest()}"
    except OSError as exc:
        return f"{path}:missing:{exc}"


def preset_from_text(text: str):
    """A Preset from the schedule_text widget: an F/C/S string, or a whole YAML preset."""
    t = text.strip()
    if _SCHEDULE_RE.match(t) or (":" not in t and "\n" not in t):
        actions = re.sub(r"[\s,|_\-]", "", t).upper()
        try:
            sched = Schedule.from_string(actions)
        except ProCacheError as exc:
            raise ScheduleError("schedule_text", f"is not a valid schedule ({exc.problem})",
                                "type one letter per step: F (full), C (cached), S (selective), starting with F, "
                                "e.g. FCSCFCSF; or clear it to use the preset.") from None
        except ValueError as exc:
            raise ScheduleError("schedule_text", f"is not a valid schedule ({exc})",
                                "type one letter per step: F, C or S, starting with F, e.g. FCSCFCSF.") from None
        return _p().Preset(name="custom", schedule=sched, family="any", model="",
                           selective=SelectiveSettings(), provenance={"source": "schedule_text"})
    try:
        return _p().parse_preset_text(text, "schedule_text")
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


def summarize(preset) -> str:
    sched = preset.schedule
    c = sched.counts()
    prov = preset.provenance if isinstance(preset.provenance, dict) else {}
    src = prov.get("source", "")
    kind = {"searched": "searched pattern", "rule": "rule on the noise axis"}.get(prov.get("kind"), "")
    what = "; ".join(x for x in (kind, f"from {src}" if src else "") if x)
    return (f"{preset.name} [{preset.family}]: {len(sched)} steps "
            f"({c.get('full', 0)} full / {c.get('selective', 0)} selective / {c.get('cached', 0)} cached) "
            f"{sched.to_string()}" + (f" ({what})" if what else ""))


class ProCacheScheduleLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(available_presets()) or [NO_PRESETS]
        default = DEFAULT_PRESET if DEFAULT_PRESET in names else names[0]
        return io.Schema(
            node_id="ProCacheScheduleLoader",
            display_name="ProCache Schedule Loader",
            category="ProCache",
            description="Loads a ProCache schedule (which denoising steps compute fully, reuse cached block "
                        "outputs, or recompute only selected tokens).",
            inputs=[
                io.Combo.Input("preset", options=names, default=default,
                               tooltip="Shipped presets: *-paper are the paper's searched patterns; *-fast / "
                                       "*-balanced / *-quality follow a documented rule on the noise axis (not "
                                       "searched for your model: ProCache Schedule Search tunes one for your model "
                                       "and sampler). Your own from <user dir>/procache_presets are listed as "
                                       "user/<name>. Ignored when schedule_text is not empty."),
                io.String.Input("schedule_text", default="", multiline=False,
                                placeholder="e.g. FCSCFCSCF (overrides the preset when not empty)",
                                tooltip="When NOT empty this wins over the preset: one letter per denoising step, "
                                        "F = full compute, C = reuse cached block outputs, S = selective token "
                                        "recompute; the first step must be F. A whole YAML preset may be pasted "
                                        "too. A length different from the sampler's steps (or a partial denoise) "
                                        "is carried over by noise level."),
            ],
            outputs=[
                ScheduleSocket.Output(display_name="schedule", tooltip="the preset, for ProCache Apply"),
                io.String.Output(display_name="summary", tooltip="one-line description of the schedule"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, preset: str, schedule_text: str = "") -> str:
        if not isinstance(preset, str) or not isinstance(schedule_text, str):
            return f"bad-input:{preset!r}:{schedule_text!r}"  # execute refuses it, naming the input
        if schedule_text and schedule_text.strip():
            return "text:" + hashlib.sha256(schedule_text.encode()).hexdigest()
        path = available_presets().get(preset)
        return _file_fingerprint(path) if path is not None else f"missing:{preset}"

    @classmethod
    def execute(cls, preset: str, schedule_text: str = "") -> io.NodeOutput:
        for fld, value in (("preset", preset), ("schedule_text", schedule_text)):
            if not isinstance(value, str):  # an API client can send any JSON value
                raise ProCacheError(fld, f"must be text, got {type(value).__name__}.",
                                    "send the preset's name or an F/C/S schedule as a string.")
        if schedule_text and schedule_text.strip():
            p = preset_from_text(schedule_text)
        else:
            p = load_named_preset(preset)
        text = summarize(p)
        return io.NodeOutput(p, text, ui={"text": [text]})
