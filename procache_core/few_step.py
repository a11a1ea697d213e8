"""Few-step runs (4-8-step distilled models): which schedule a short run uses.

The family presets are made for 20-50 steps. Squeezed onto a 4- or 8-step run by noise level they keep
their share of full steps (~35 %), which at a few large steps reuses across most of the denoising path.
So the one rule, applied by the run planner (``procache_core.plan``, for the run and the preview) whatever picked the
preset (``auto``, a Schedule Loader preset, a typed schedule):

* a run of fewer than ``FEW_STEP_BELOW`` steps whose schedule has ``FEW_STEP_BELOW`` or more steps
  takes the shipped few-step schedule whose step count is nearest the run's (ties: the one with more
  steps), carried onto the run's noise levels like any preset;
* a schedule written for fewer steps (a typed ``FFCF``, a user's 8-step preset) is left alone: it is
  mapped by noise level, or runs as written when it has exactly the run's steps.

The short-run floor (ProCache Apply ``short_run_floor``) still applies after this: a run with fewer
steps than the floor computes every step. Plain Python: no torch, no comfy.
"""
from __future__ import annotations

from typing import Iterable

FEW_STEP_BELOW = 10   # runs with fewer steps are few-step runs; schedules with at least this many are long
DEFAULT = "*"         # the few-step presets of every family without its own row
# family (adapter family name) -> step count -> shipped preset (schedules/<name>.yaml, written by
# scripts/generate_presets.py from the measurement in benchmarks/few_step.py, which says why they differ:
# at 4 steps the trained digits Flux loses least reusing step 3, PixArt-alpha reusing step 2). The other
# families take the default row, the Flux measurement: the few-step models users run (Flux.2 klein,
# Z-Image Turbo, Qwen-Image Lightning, Wan lightx2v) are flow models like it.
FEW_STEP_PRESETS: dict[str, dict[int, str]] = {
    DEFAULT: {4: "fewstep-4", 8: "fewstep-8"},
    "pixart": {4: "fewstep-4-pixart", 8: "fewstep-8"},
}


def presets_for(family: str) -> dict[int, str]:
    """Step count -> few-step preset name for a model of ``family``."""
    return FEW_STEP_PRESETS.get(family) or FEW_STEP_PRESETS[DEFAULT]


def is_long(steps: int) -> bool:
    """A schedule (or run) of ``steps`` steps counts as long, i.e. not made for a few-step run."""
    return int(steps) >= FEW_STEP_BELOW


def nearest_steps(run_steps: int, available: Iterable[int]) -> int | None:
    """The step count in ``available`` nearest ``run_steps`` (ties: the larger); None when empty."""
    best: int | None = None
    for s in sorted({int(v) for v in available}):
        if best is None or abs(s - run_steps) <= abs(best - run_steps):
            best = s
    return best


def few_step_choice(schedule_steps: int, run_steps: int, available: Iterable[int]) -> int | None:
    """Step count of the few-step schedule that replaces a ``schedule_steps``-step schedule on a
    ``run_steps``-step run, or None when the schedule is kept (see the module docstring)."""
    if run_steps < 1 or is_long(run_steps) or not is_long(schedule_steps):
        return None
    return nearest_steps(run_steps, available)


__all__ = ["FEW_STEP_BELOW", "DEFAULT", "FEW_STEP_PRESETS", "presets_for", "is_long", "nearest_steps", "few_step_choice"]
