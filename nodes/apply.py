"""ProCache Apply (patches a MODEL clone) and ProCache Stats (reports what the last run did)."""
from __future__ import annotations

import dataclasses
import logging
import math

import torch
from comfy_api.latest import io

from ..procache_core.plan import SHORT_RUN_FLOOR, SHORT_RUN_FLOOR_MAX
from ..procache_core.schedule import Action
from .adapters import adapter_for
from .memory_bridge import memory_inputs, request_from_inputs
from .run_context import ProCacheConfig
from .runtime_bridge import config_of, install_wrappers, validate_range
from .auto_preset import AUTO, preset_name_for
from .family_text import apply_description
from .preset_files import available_presets, load_named_preset
from .schedule_loader import ScheduleSocket
from .selective_settings import SelectiveSocket

log = logging.getLogger("ProCache")


def preset_choices() -> list[str]:
    """The dropdown of ProCache Apply's own preset: "auto", then every preset the loader lists."""
    return [AUTO, *available_presets()]


def preset_from_widget(name: str, family: str):
    """The Preset chosen on Apply itself ("auto": the one made for the detected family)."""
    chosen = preset_name_for(family) if name == AUTO else name
    preset = load_named_preset(chosen, field="preset")
    if name == AUTO:
        log.info("ProCache: preset 'auto' -> '%s' for a %s model", chosen, family)
    return preset


class ProCacheApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheApply",
            display_name="ProCache Apply",
            category="ProCache",
            description=apply_description(),  # the family list derives from the registry
            inputs=[
                io.Model.Input("model"),
                ScheduleSocket.Input("schedule", optional=True,
                                     tooltip="optional: from ProCache Schedule Loader (wins over 'preset')"),
                SelectiveSocket.Input("selective", optional=True,
                                      tooltip="Selective Compute Settings; when absent the preset's own settings "
                                              "are used and the schedule runs exactly as written."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Steps before this share of denoising progress always run FULL."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Steps from this share of denoising progress on always run FULL."),
                io.Combo.Input("preset", options=preset_choices(), default=AUTO, optional=True,
                               tooltip="Used when no schedule is connected. 'auto' picks the preset made for "
                                       "the model's family; the schedule is remapped to the sampler's steps."),
                io.Int.Input("short_run_floor", default=SHORT_RUN_FLOOR, min=0, max=SHORT_RUN_FLOOR_MAX, optional=True,
                             tooltip="Runs with fewer steps than this compute every step (reuse across a few "
                                     "large steps costs the most detail; the log says so). 0 = always follow "
                                     "the schedule."),
                *memory_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="the patched model (the input MODEL is left untouched)")],
        )

    @classmethod
    def execute(cls, model, schedule=None, selective=None, start_percent: float = 0.0,
                end_percent: float = 1.0, preset: str = AUTO, short_run_floor: int = SHORT_RUN_FLOOR,
                cache_device: str = "auto", cache_mode: str = "auto", cache_dtype: str = "auto",
                reuse: str = "blocks") -> io.NodeOutput:
        validate_range(start_percent, end_percent)
        memory = request_from_inputs(cache_device, cache_mode, cache_dtype, reuse)
        adapter = adapter_for(model)  # a block adapter, or the model-level fallback; errors only for non-models
        preset = schedule if schedule is not None else preset_from_widget(preset, adapter.family)
        if selective is not None:
            sel = selective.validate()
            has_s = any(a == Action.SELECTIVE for a in preset.schedule.actions)
            inject = bool(sel.enabled and not has_s)
        else:
            sel = preset.selective.validate()
            inject = False
        if adapter.schedule_only:  # model-level fallback: no block to recompute tokens in
            sel = dataclasses.replace(sel, enabled=False, start_block=None)
            inject = False
        patched = model.clone()
        config = ProCacheConfig(preset=preset, schedule=preset.schedule, selective=sel, inject_selective=inject,
                                start_percent=start_percent, end_percent=end_percent, adapter=adapter,
                                short_run_floor=int(short_run_floor), memory_request=memory)
        install_wrappers(patched, config)
        adapter.install(patched, config)
        try:
            unsplit = adapter.unsplit_report()
        except Exception as e:  # a host block without what the adapter expects: the first run's check says more
            log.debug("ProCache: no adaLN report (%s: %s)", type(e).__name__, e)
            unsplit = None
        if unsplit:
            log.info(unsplit)
        fam = getattr(preset, "family", "any") or "any"
        if fam not in ("any", adapter.family):
            log.info("ProCache: preset '%s' was made for %s; applying it to a %s model as is.",
                     preset.name, fam, adapter.family)
        log.info("ProCache: applied '%s' (%d steps) to %s", preset.name, len(preset.schedule), adapter.describe())
        return io.NodeOutput(patched)


def _latent_key(t: torch.Tensor) -> tuple:
    flat = t.detach().reshape(-1)
    return tuple(t.shape), flat[:64].float().cpu()


class ProCacheStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheStats",
            display_name="ProCache Stats",
            category="ProCache",
            description="Reports what ProCache did in the sampling run that produced the LATENT: steps "
                        "full/cached/selective, block evaluations saved, tokens recomputed, sampling time.",
            inputs=[
                io.Latent.Input("samples", tooltip="the sampler's output (makes this node run after it)"),
                io.Model.Input("model", tooltip="the MODEL output of ProCache Apply used by that sampler"),
            ],
            outputs=[io.String.Output(display_name="stats"), io.Latent.Output(display_name="samples")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # always report the newest run

    @classmethod
    def execute(cls, samples, model) -> io.NodeOutput:
        cfg = config_of(model)
        runs = None if cfg is None else cfg.log   # what the runs of this Apply did (any clone of its output)
        if runs is None:
            text = "ProCache is not applied to this MODEL (connect the output of ProCache Apply)."
        elif runs.last_stats is None:
            text = "ProCache: this MODEL has not been sampled yet in this server session."
        else:
            st = runs.last_stats
            match = None
            lat = samples.get("samples") if isinstance(samples, dict) else None
            if torch.is_tensor(lat):
                shape, head = _latent_key(lat)
                for rec in reversed(runs.history):
                    if rec["shape"] == shape and torch.equal(rec["head"], head):
                        match = rec["stats"]
                        break
            if match is not None:
                st = match
                text = st["line"]
            else:
                text = st["line"] + " (latest run of this MODEL; this LATENT was not matched to a run)"
        ui = {"text": [text]}
        if runs is not None and runs.last_stats is not None:
            ui["procache_stats"] = [_json_safe(st)]  # machine-readable: per-step actions, evals, noise levels
        return io.NodeOutput(text, samples, ui=ui)


def _json_safe(summary: dict) -> dict:
    """The run summary with non-finite floats as None (the browser's JSON parser rejects NaN)."""
    def conv(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)
    return {k: conv(v) for k, v in summary.items()}
