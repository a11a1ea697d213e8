"""The run planner: which action every step of one run takes. Plain Python (no torch, no comfy).

One function decides it for the sampling run (``nodes/run_plan.plan_run``, which reads the run's
noise positions and active range off the host's model sampling) and for the UI preview
(``nodes/preview.preview_payload``, which has no sampler and uses evenly spaced noise), so the
preview cannot disagree with the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

from . import few_step as _few_step
from .schedule import Action, Schedule, even_noise, map_by_noise

# runs with fewer steps compute every step unless ProCache Apply says otherwise; 4 from the measurement in
# benchmarks/few_step.py (results/few_step_cpu.md): the best 3-step reuse loses too much, 4 steps hold the bar
SHORT_RUN_FLOOR = 4
SHORT_RUN_FLOOR_MAX = 1000         # the largest floor ProCache Apply (and the preview) accepts
NOTE_NO_NOISE = "no-noise"        # key of the once-per-config "no noise record" note
_TOP = 1e-3                       # a run whose first noise position is at most this starts at the top


@dataclass
class Plan:
    """What :func:`plan_schedule` decided."""

    schedule: Schedule
    remapped_from: int | None         # the schedule's length when it was carried onto the run (None: as written)
    mapping: str                      # "as written", "noise" or "short run"
    notes: list[str]                  # log lines for the run
    few_step: Any = None              # the few-step preset that replaced a long schedule (or None)
    noted: set[str] = field(default_factory=set)   # once-only note keys this plan used (the caller adds them to its run log)


def even_run_noise(n_steps: int) -> list[float]:
    """Noise positions of an ``n_steps``-step run spread evenly over the whole range, end point included:
    what the preview plans on (it has no sampler)."""
    return [*even_noise(n_steps), 1.0]


def active_from_noise(noise: Sequence[float], start: float, end: float) -> list[bool]:
    """Per step (``noise`` has steps + 1 positions): inside [start, end) of denoising progress."""
    n = len(noise) - 1
    if start <= 0.0 and end >= 1.0:
        return [True] * n
    return [start <= noise[i] < end for i in range(n)]


def few_step_name(family: str, schedule_steps: int, run_steps: int) -> str | None:
    """The shipped few-step preset a ``run_steps``-step run of a ``family`` model takes in place of its
    ``schedule_steps``-step schedule, or None (``few_step.few_step_choice``)."""
    table = _few_step.presets_for(family)
    steps = _few_step.few_step_choice(schedule_steps, run_steps, table)
    return None if steps is None else table[steps]


def plan_schedule(schedule: Schedule, noise_record: Sequence[float] | None, noise: Sequence[float], *,
                  name: str = "custom", selective_enabled: bool = True, inject_selective: bool = False,
                  active: Sequence[bool] | None = None, start_percent: float = 0.0, end_percent: float = 1.0,
                  short_run_floor: int = SHORT_RUN_FLOOR, few: Any = None,
                  noted: Collection[str] = ()) -> Plan:
    """The schedule a run whose steps sit at ``noise`` (steps + 1 positions on the 0..1 axis) uses.

    * A schedule with a noise record (``noise_record``, one position per step) is carried onto the run by
      noise level (``schedule.map_by_noise``): each step takes the schedule's action at its own noise
      position, the first step is FULL, the FULL share stays within rounding of the schedule's.
    * Without a record (presets written before the noise axis, typed schedules) the schedule's steps are
      taken as evenly spaced in noise level, except that a schedule with exactly the run's step count on a
      run that starts at the top of the noise range runs as written (it was written for this run).
    * ``few`` (the shipped few-step preset :func:`few_step_name` chose, loaded by the caller) replaces the
      schedule: as written when it has the run's steps from the top of the noise range, else mapped as above.
    * Runs shorter than ``short_run_floor`` steps compute every step (reuse across a few large steps costs
      the most detail), unless the schedule runs as written or the floor is 0.
    * ``inject_selective`` re-derives S steps (Eq. 7); else ``selective_enabled`` False turns S into C.
    * Steps outside the active range (``active``, else [start_percent, end_percent) of ``noise``) are FULL.
    ``noted`` holds the once-only note keys already logged (e.g. by an earlier run of the same config).
    """
    n = len(noise) - 1
    sched = schedule
    rec = noise_record
    notes: list[str] = []
    used: set[str] = set()
    remapped_from = None
    mapping = "as written"
    if few is not None:
        sched, rec = few.schedule, getattr(few, "noise", None)
    has_record = rec is not None and len(rec) == len(sched)
    # a few-step preset of the run's own step count runs as written from the top of the noise range: at 4
    # steps the schedulers' small offsets from i/4 (sgm_uniform) would move its reuse by a whole step
    exact_few = few is not None and len(sched) == n and noise[0] <= _TOP
    if n >= 1 and not exact_few and (has_record or len(sched) != n or noise[0] > _TOP):
        if not has_record and NOTE_NO_NOISE not in noted:
            used.add(NOTE_NO_NOISE)
            notes.append(f"ProCache: schedule '{name}' has no noise record; its {len(sched)} steps are "
                         "taken as evenly spaced in noise level (timestep percent i/steps).")
        src = tuple(rec) if has_record else even_noise(len(sched))
        mapped = map_by_noise(sched, src, noise)
        if mapped != sched or len(sched) != n:
            remapped_from = len(sched)
        sched = mapped
        mapping = "noise"
    if few is not None:
        notes.append(f"ProCache: {n}-step run: schedule '{name}' ({len(schedule)} steps) is made for "
                     f"runs of {_few_step.FEW_STEP_BELOW}+ steps; this run uses the few-step preset '{few.name}' "
                     f"({few.schedule.to_string()})" + (" as written." if exact_few else
                                                         f" carried onto its noise levels: {sched.to_string()}."))
    if n >= 1 and (mapping != "as written" or few is not None) and 0 < short_run_floor and n < short_run_floor:
        sched = Schedule(tuple([Action.FULL] * n))
        mapping = "short run"
        notes.append(f"ProCache: {n} steps is below the short-run floor of {short_run_floor}: every step is "
                     "computed (set short_run_floor on ProCache Apply to 0 to cache short runs anyway).")
    if inject_selective:
        sched = sched.with_selective(True)
    elif not selective_enabled:
        sched = sched.with_selective(False)
    if active is None:
        active = active_from_noise(noise, start_percent, end_percent)
    if not all(active):
        sched = Schedule(tuple(a if active[i] else Action.FULL for i, a in enumerate(sched.actions)))
    return Plan(schedule=sched, remapped_from=remapped_from, mapping=mapping, notes=notes, few_step=few, noted=used)


__all__ = ["SHORT_RUN_FLOOR", "SHORT_RUN_FLOOR_MAX", "Plan", "plan_schedule", "even_run_noise", "active_from_noise", "few_step_name"]
