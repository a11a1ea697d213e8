"""The schedule a sampling run uses: ``procache_core.plan.plan_schedule`` (the rules live there) fed with
what only the host knows (noise positions from its model sampling, the active range through
``percent_to_sigma``) and the shipped few-step preset loaded from its file."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..procache_core.errors import ProCacheError
from ..procache_core.plan import few_step_name, plan_schedule
from ..procache_core.schedule import Action, Schedule
from .noise_axis import noise_positions
from .run_context import ProCacheConfig

log = logging.getLogger("ProCache")


def _percent_active(model_sampling: Any, sigmas: list[float], start: float, end: float) -> list[bool]:
    """Per step: inside [start_percent, end_percent) of denoising progress (sigma based, like the host)."""
    n = len(sigmas) - 1
    if start <= 0.0 and end >= 1.0:
        return [True] * n
    try:
        s_hi = float(model_sampling.percent_to_sigma(start))
        s_lo = float(model_sampling.percent_to_sigma(end))
    except Exception:  # model_sampling without percent_to_sigma: fall back to step fractions
        return [start <= i / max(n, 1) < end for i in range(n)]
    return [s_hi >= sigmas[i] > s_lo for i in range(n)]


@dataclass
class RunPlan:
    """What :func:`plan_run` decided for one run."""

    schedule: Schedule
    remapped_from: int | None
    noise: list[float]
    mapping: str                      # "as written", "noise" or "short run"
    notes: list[str]                  # log lines (the "no noise record" one is logged once per config)
    few_step: Any = None              # the shipped few-step preset that replaced a long schedule (or None)


def plan_run(config: ProCacheConfig, sigmas: list[float], model_sampling: Any) -> RunPlan:
    """The schedule this run uses: ``procache_core.plan.plan_schedule`` (the rules are there) on the
    run's noise positions and active range as the host's model sampling gives them, with the shipped
    few-step preset it picks loaded from its file."""
    n = len(sigmas) - 1
    noise, _exact = noise_positions(model_sampling, sigmas)
    plan = plan_schedule(
        config.schedule, getattr(config.preset, "noise", None), noise, name=config.name,
        selective_enabled=config.selective.enabled, inject_selective=config.inject_selective,
        active=_percent_active(model_sampling, sigmas, config.start_percent, config.end_percent),
        short_run_floor=config.short_run_floor, few=_few_step_preset(config, len(config.schedule), n),
        noted=config.log.noted)
    for key in plan.noted:
        config.log.note_once(key)
    return RunPlan(schedule=plan.schedule, remapped_from=plan.remapped_from, noise=noise, mapping=plan.mapping,
                   notes=plan.notes, few_step=plan.few_step)


_FEW_STEP_CACHE: dict[str, Any] = {}


def _few_step_preset(config: ProCacheConfig, schedule_steps: int, run_steps: int) -> Any:
    """The shipped few-step preset a ``run_steps``-step run takes in place of its schedule, or None
    (``procache_core.plan.few_step_name``). A missing or broken preset file keeps the schedule
    (one log line per config)."""
    family = (config.block_adapter or config.adapter).family
    name = few_step_name(family, schedule_steps, run_steps)
    if name is None:
        return None
    if name not in _FEW_STEP_CACHE:
        from .preset_files import load_named_preset

        try:
            _FEW_STEP_CACHE[name] = load_named_preset(name)
        except ProCacheError as e:
            if config.log.note_once("few-step-missing"):
                log.warning("ProCache: few-step preset unavailable (%s); short runs map '%s' as it is.", e, config.name)
            return None
    return _FEW_STEP_CACHE[name]


def few_step_note(few: Any, sched: Schedule) -> str:
    """What a few-step run reused and what that cost on the measured models (the preset's provenance)."""
    reused = sum(1 for a in sched.actions if a is not Action.FULL)
    text = (f"{len(sched)}-step run: few-step preset '{few.name}' ({sched.to_string()}), {reused} of {len(sched)} "
            "steps reused")
    measured = (getattr(few, "provenance", None) or {}).get("measured")
    if measured and reused:
        text += f"; quality traded for speed: {measured}"
    elif reused:
        text += "; quality traded for speed"
    return text
