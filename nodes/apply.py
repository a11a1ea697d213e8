"""ProCache Apply (patches a MODEL clone) and ProCache Stats (reports what the last run did)."""
from __future__ import annotations

import logging
import torch
from comfy_api.latest import io

from ..procache_core.schedule import Action
from .adapters import adapter_for
from .runtime_bridge import ProCacheConfig, config_of, install_wrappers, validate_range
from .auto_preset import AUTO, preset_name_for
from .schedule_loader import ScheduleSocket, available_presets, load_named_preset
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
            description="Returns a copy of the MODEL that caches transformer block outputs across denoising "
                        "steps according to the schedule (PixArt-α/Σ, Flux.1, SD3/3.5, Wan 2.x).",
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
            ],
            outputs=[io.Model.Output(tooltip="the patched model (the input MODEL is left untouched)")],
        )

    @classmethod
    def execute(cls, model, schedule=None, selective=None, start_percent: float = 0.0,
                end_percent: float = 1.0, preset: str = AUTO) -> io.NodeOutput:
        validate_range(start_percent, end_percent)
        adapter = adapter_for(model)  # UnsupportedModelError names the supported families
        preset = schedule if schedule is not None else preset_from_widget(preset, adapter.family)
        if selective is not None:
            sel = selective.validate()
            has_s = any(a == Action.SELECTIVE for a in preset.schedule.actions)
            inject = bool(sel.enabled and not has_s)
        else:
            sel = preset.selective.validate()
            inject = False
        patched = model.clone()
        config = ProCacheConfig(preset=preset, schedule=preset.schedule, selective=sel, inject_selective=inject,
                                start_percent=start_percent, end_percent=end_percent, adapter=adapter)
        install_wrappers(patched, config)
        adapter.install(patched, config)
        unsplit = adapter.unsplit_report()
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
        if cfg is None:
            text = "ProCache is not applied to this MODEL (connect the output of ProCache Apply)."
        elif cfg.last_stats is None:
            text = "ProCache: this MODEL has not been sampled yet in this server session."
        else:
            st = cfg.last_stats
            match = None
            lat = samples.get("samples") if isinstance(samples, dict) else None
            if torch.is_tensor(lat):
                shape, head = _latent_key(lat)
                for rec in reversed(cfg.history):
                    if rec["shape"] == shape and torch.equal(rec["head"], head):
                        match = rec["stats"]
                        break
            if match is not None:
                st = match
                text = st["line"]
            else:
                text = st["line"] + " (latest run of this MODEL; this LATENT was not matched to a run)"
        return io.NodeOutput(text, samples, ui={"text": [text]})
