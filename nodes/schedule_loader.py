"""ProCache Schedule Loader: a shipped/user preset, or a schedule typed in as F/C/S text."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from comfy_api.latest import io

from ..procache_core.errors import ProCacheError
from .preset_files import available_presets, load_named_preset, preset_from_text


ScheduleSocket = io.Custom("PROCACHE_SCHEDULE")
NO_PRESETS = "(no presets found)"
DEFAULT_PRESET = "pixart-alpha-dpm20-paper"


def _file_fingerprint(path: Path) -> str:
    try:
        data = path.read_bytes()
        return f"{path}:{os.stat(path).st_mtime_ns}:{hashlib.sha256(data).hexdigest()}"
    except OSError as exc:
        return f"{path}:missing:{exc}"


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
