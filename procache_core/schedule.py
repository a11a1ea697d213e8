"""Per-step cache schedules: which denoising steps compute fully, reuse the cache, or recompute tokens.

A schedule is a string of one letter per denoising step (in sampling order):

* ``F`` (FULL): every block runs and refreshes the cache.
* ``C`` (CACHED): every block reuses its cached branch outputs (adaLN gates stay fresh).
* ``S`` (SELECTIVE): like C, but the deepest blocks recompute the most important tokens.

The first step is always ``F``: nothing is cached before it. Reuse intervals are the lengths of the runs
of non-full steps that follow each full step (the run after the last full step included), which is the
quantity the constraint-aware search of the method bounds and orders.

Remapping (see ``docs/schedules.md``) carries a schedule written for T steps to a sampler with N steps
by denoising progress, so presets are not tied to one step count. Plain Python: no torch, no comfy.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Iterable, Sequence

from .errors import ScheduleError

MAX_STEPS = 10_000  # longer schedules are almost certainly a mistake (and would bloat UI payloads)
_IGNORED = " \t\r\n,"


class Action(str, Enum):
    """What a denoising step does with the block cache."""

    FULL = "F"
    CACHED = "C"
    SELECTIVE = "S"

    def __str__(self) -> str:  # "F", not "Action.FULL", in f-strings and joins
        return self.value


_BY_LETTER = {a.value: a for a in Action}


def _coerce_action(value: object, step: int) -> Action:
    if isinstance(value, Action):
        return value
    if isinstance(value, str) and value.upper() in _BY_LETTER:
        return _BY_LETTER[value.upper()]
    raise ScheduleError("actions", f"has {value!r} at step {step + 1}, which is not F, C or S.",
                        "use one letter per step: F (full), C (cached) or S (selective).")


@dataclass(frozen=True)
class Schedule:
    """An immutable per-step plan; ``actions[0]`` is always FULL (validated on construction)."""

    actions: tuple[Action, ...]

    def __post_init__(self) -> None:
        raw = self.actions
        if isinstance(raw, str):  # Schedule("FCS") is a common slip; accept it like from_string would
            raw = tuple(raw)
        try:
            items = tuple(raw)
        except TypeError:
            raise ScheduleError("actions", f"must be a sequence of actions, got {type(raw).__name__}.",
                                "pass a tuple of Action values or use Schedule.from_string('FCSC...').") from None
        acts = tuple(_coerce_action(a, i) for i, a in enumerate(items))
        if not acts:
            raise ScheduleError("actions", "is empty.", "give at least one step, e.g. 'F'.")
        if len(acts) > MAX_STEPS:
            raise ScheduleError("actions", f"has {len(acts)} steps, more than the limit of {MAX_STEPS}.",
                                f"use at most {MAX_STEPS} steps.")
        if acts[0] is not Action.FULL:
            raise ScheduleError("actions", f"starts with {acts[0].value}, but step 1 must be F (nothing is cached yet).",
                                "make the first letter F, e.g. 'F" + "".join(a.value for a in acts[1:4]) + "...'.")
        object.__setattr__(self, "actions", acts)

    def __hash__(self) -> int:
        return hash(self.actions)

    def __repr__(self) -> str:  # readable in logs and test failures
        return f"Schedule.from_string({self.to_string()!r})"

    # -- construction / text --------------------------------------------------------------------
    @classmethod
    def from_string(cls, text: str) -> "Schedule":
        """Parse ``"FCSC ..."``: case-insensitive, spaces/tabs/newlines/commas ignored."""
        if not isinstance(text, str):
            raise ScheduleError("actions", f"must be a string of F/C/S, got {type(text).__name__}.",
                                "write e.g. 'FCSCFCSF'.")
        acts: list[Action] = []
        for pos, ch in enumerate(text):
            if ch in _IGNORED:
                continue
            up = ch.upper()
            if up not in _BY_LETTER:
                raise ScheduleError("actions", f"has {ch!r} at position {pos + 1} (step {len(acts) + 1}), "
                                               "which is not F, C or S.",
                                    "use only the letters F (full), C (cached) and S (selective).")
            acts.append(_BY_LETTER[up])
            if len(acts) > MAX_STEPS:
                raise ScheduleError("actions", f"has more than {MAX_STEPS} steps.", f"use at most {MAX_STEPS} steps.")
        return cls(tuple(acts))

    @classmethod
    def from_full_steps(cls, n_steps: int, full_steps: Iterable[int]) -> "Schedule":
        """All-cached schedule of ``n_steps`` with FULL at the given indices (step 0 is always added)."""
        n = _check_steps(n_steps, "n_steps")
        full = {0}
        for i in full_steps:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
                raise ScheduleError("full_steps", f"contains {i!r}, outside [0, {n - 1}].",
                                    f"use step indices between 0 and {n - 1}.")
            full.add(i)
        return cls(tuple(Action.FULL if i in full else Action.CACHED for i in range(n)))

    def to_string(self) -> str:
        return "".join(a.value for a in self.actions)

    def grouped(self) -> str:
        """The string split before every F ("FCSC FCS FC"): one group per refresh, easy to read."""
        groups: list[str] = []
        for a in self.actions:
            if a is Action.FULL or not groups:
                groups.append("")
            groups[-1] += a.value
        return " ".join(groups)

    def __str__(self) -> str:
        return self.to_string()

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, index: int) -> Action:
        return self.actions[index]

    def __iter__(self):
        return iter(self.actions)

    # -- summaries --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {"full": sum(a is Action.FULL for a in self.actions),
                "cached": sum(a is Action.CACHED for a in self.actions),
                "selective": sum(a is Action.SELECTIVE for a in self.actions)}

    def full_steps(self) -> list[int]:
        return [i for i, a in enumerate(self.actions) if a is Action.FULL]

    def intervals(self) -> list[int]:
        """Reuse intervals: for each full step, the number of non-full steps after it before the next
        full step (or the end). One entry per full step; the last entry is the trailing run."""
        full = self.full_steps() + [len(self.actions)]
        return [full[i + 1] - full[i] - 1 for i in range(len(full) - 1)]

    def has_selective(self) -> bool:
        return any(a is Action.SELECTIVE for a in self.actions)

    def compute_fraction(self, selective_cost: float) -> float:
        """Estimated share of the full model's compute: FULL costs 1, CACHED 0, SELECTIVE ``selective_cost``.

        The inverse is the estimated speed-up; the engine's RunStats measures the real number.
        """
        cost = float(selective_cost)
        if not (0.0 <= cost <= 1.0):
            raise ScheduleError("selective_cost", f"is {selective_cost}, outside [0, 1].",
                                "give the cost of a selective step relative to a full one, e.g. 0.05.")
        c = self.counts()
        return (c["full"] + cost * c["selective"]) / len(self.actions)

    # -- transformations --------------------------------------------------------------------------
    def with_selective(self, enabled: bool = True) -> "Schedule":
        """Paper Eq. 7: in every run of non-full steps the 2nd, 4th, ... become SELECTIVE, the others
        CACHED ([C,C] -> [C,S], [C,C,C] -> [C,S,C]). Existing S placements are re-derived, so the result
        depends only on where the FULL steps are. ``enabled=False`` turns every S into C."""
        out: list[Action] = []
        run = 0
        for a in self.actions:
            if a is Action.FULL:
                run = 0
                out.append(a)
                continue
            run += 1
            out.append(Action.SELECTIVE if (enabled and run % 2 == 0) else Action.CACHED)
        return Schedule(tuple(out))

    def remap(self, n_steps: int, budget: int | None = None) -> "Schedule":
        """This schedule carried to a sampler with ``n_steps`` steps, by denoising progress.

        Rule (T = len(self), N = n_steps, B = full steps):
          1. B' = max(1, floor(B * N / T + 0.5)) full steps (the share of full steps is kept), at most N.
          2. Let s_0 < ... < s_{B-1} be the full steps, s_B = T, and Phi the piecewise-linear map with
             Phi(i) = s_i on [0, B]. The m-th destination segment (full step + its reuse run) covers the
             share [m/B', (m+1)/B') of the source's full steps, so its ideal length in steps is
             N * (Phi((m+1) B/B') - Phi(m B/B')) / T; its ideal reuse interval is that minus 1.
          3. Ideal intervals are clamped at 0, scaled to add up to N - B', and rounded by largest
             remainder (ties go to the earlier segment). Every step of this keeps non-increasing
             intervals non-increasing, so "long reuse early, short late" survives.
          4. Non-full steps are CACHED; if the source had any SELECTIVE step, S is re-derived with
             ``with_selective(True)``.
        ``remap(len(self))`` returns an equal schedule. ``budget`` (optional) replaces B' in step 1: the
        same shape with another number of full steps.
        """
        n = _check_steps(n_steps, "n_steps")
        t = len(self.actions)
        if n == t and budget is None:
            return self
        full = self.full_steps()
        b = len(full)
        b_new = min(n, max(1, math.floor(b * n / t + 0.5))) if budget is None else min(n, max(1, int(budget)))
        rest = n - b_new
        bounds = full + [t]

        def phi(u: Fraction) -> Fraction:
            i = min(math.floor(u), b - 1)
            return bounds[i] + (u - i) * (bounds[i + 1] - bounds[i])

        # exact rationals: float noise could break ties and with them the non-increasing shape
        ideal: list[Fraction] = []
        for m in range(b_new):
            lo, hi = phi(Fraction(m * b, b_new)), phi(Fraction((m + 1) * b, b_new))
            ideal.append(max(Fraction(0), n * (hi - lo) / t - 1))
        intervals = _largest_remainder(ideal, rest)
        return _from_intervals(intervals, selective=self.has_selective())

    def remap_by_sigmas(self, src_sigmas: Sequence[float], dst_sigmas: Sequence[float]) -> "Schedule":
        """This schedule carried to another sampler's sigmas (each list has steps + 1 entries, as the
        sampler's ``sigmas``; the sigma of step i is ``sigmas[i]``, the final entry is the end point).

        Each source FULL step is placed on the destination step whose sigma is nearest to its own
        (ties go to the earlier step); step 0 is always FULL; several source full steps landing on one
        destination step merge, so the full count may drop when the destination has fewer steps, and
        it does not grow when the destination has more (use ``remap`` to keep the share of full steps).
        Non-full steps are CACHED, with S re-derived by ``with_selective(True)`` if the source had S.
        """
        src = _check_sigmas(src_sigmas, "src_sigmas")
        dst = _check_sigmas(dst_sigmas, "dst_sigmas")
        if len(src) != len(self.actions) + 1:
            raise ScheduleError("src_sigmas", f"has {len(src)} entries, but the schedule has {len(self.actions)} "
                                              f"steps and needs {len(self.actions) + 1}.",
                                "pass the source sampler's sigmas (steps + 1 values, the last being the end).")
        steps = dst[:-1]
        first_at: dict[float, int] = {}
        for j, v in enumerate(steps):
            first_at.setdefault(v, j)
        values = sorted(first_at)
        full = {0}
        for i in self.full_steps():
            s = src[i]
            k = bisect.bisect_left(values, s)
            near = [values[x] for x in (k - 1, k) if 0 <= x < len(values)]
            d = min(abs(v - s) for v in near)
            full.add(min(first_at[v] for v in near if abs(v - s) == d))
        out = Schedule.from_full_steps(len(steps), sorted(full))
        return out.with_selective(True) if self.has_selective() else out


def _check_steps(n: object, field: str) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise ScheduleError(field, f"must be a whole number, got {n!r}.", "give the sampler's number of steps.")
    if not 1 <= n <= MAX_STEPS:
        raise ScheduleError(field, f"is {n}, outside [1, {MAX_STEPS}].", f"use between 1 and {MAX_STEPS} steps.")
    return n


def _check_sigmas(values: Sequence[float], field: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ScheduleError(field, "must be a list of numbers.", "pass the sampler's sigmas as floats.") from None
    if len(out) < 2:
        raise ScheduleError(field, f"has {len(out)} entries; a sampler with N steps has N + 1 sigmas.",
                            "pass at least two sigmas (one step).")
    if len(out) - 1 > MAX_STEPS:
        raise ScheduleError(field, f"describes {len(out) - 1} steps, more than {MAX_STEPS}.",
                            f"use at most {MAX_STEPS} steps.")
    if not all(math.isfinite(v) for v in out):
        raise ScheduleError(field, "contains a non-finite value.", "pass finite sigmas (the final 0 is fine).")
    return out


def _largest_remainder(ideal: Sequence[Fraction], total: int) -> list[int]:
    """Integers summing to ``total`` closest to ``ideal`` (scaled to that total); ties to the earlier
    index, which keeps a non-increasing input non-increasing."""
    s = sum(ideal)
    if total <= 0:
        return [0] * len(ideal)
    scaled = [Fraction(x) * total / s for x in ideal] if s > 0 else [Fraction(total, len(ideal))] * len(ideal)
    base = [int(math.floor(x)) for x in scaled]
    left = total - sum(base)
    order = sorted(range(len(scaled)), key=lambda i: (-(scaled[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return base


def _from_intervals(intervals: Sequence[int], selective: bool = False) -> Schedule:
    """The schedule with one full step per interval followed by that many non-full steps."""
    acts: list[Action] = []
    for v in intervals:
        acts.append(Action.FULL)
        acts.extend([Action.CACHED] * int(v))
    sched = Schedule(tuple(acts))
    return sched.with_selective(True) if selective else sched


def from_intervals(intervals: Sequence[int], selective: bool = False) -> Schedule:
    """Public form of the interval constructor: ``[3, 2, 1]`` -> ``FCCC FCC FC`` (S by Eq. 7 if asked)."""
    vals = list(intervals)
    if not vals:
        raise ScheduleError("intervals", "is empty.", "give one reuse interval per full step, e.g. [3, 2, 1].")
    for i, v in enumerate(vals):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ScheduleError(f"intervals[{i}]", f"is {v!r}, not a whole number >= 0.", "use counts of reused steps.")
    if len(vals) + sum(vals) > MAX_STEPS:
        raise ScheduleError("intervals", f"describe more than {MAX_STEPS} steps.", f"use at most {MAX_STEPS} steps.")
    return _from_intervals(vals, selective)


# -- the noise axis ---------------------------------------------------------------------------------
#
# A noise position is the host's "timestep percent" of a step: 0 at the top of the model's noise range
# (pure noise), 1 at the bottom (clean). It is comparable across samplers, schedulers, step counts and
# denoise values, unlike a step index. A schedule's noise record holds the position of every step (T
# values, non-decreasing, in [0, 1]); step i covers [noise[i], noise[i + 1]) and the last step ends at 1.

NOISE_TOL = 1e-6


def even_noise(n_steps: int) -> tuple[float, ...]:
    """Positions of ``n_steps`` steps spread evenly over the whole noise range (i / n)."""
    n = _check_steps(n_steps, "n_steps")
    return tuple(i / n for i in range(n))


def check_noise(values: Sequence[float], field: str, n_steps: int | None = None) -> tuple[float, ...]:
    """Validated noise positions: finite, in [0, 1], non-decreasing (and ``n_steps`` of them if given)."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ScheduleError(field, "must be a list of numbers.", "give one noise position in [0, 1] per step.") from None
    if n_steps is not None and len(out) != n_steps:
        raise ScheduleError(field, f"has {len(out)} entries, but the schedule has {n_steps} steps.",
                            "give one noise position per step (or remove the list).")
    if not out:
        raise ScheduleError(field, "is empty.", "give one noise position in [0, 1] per step.")
    for i, v in enumerate(out):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ScheduleError(field, f"has {v!r} at position {i + 1}, outside [0, 1].",
                                "use the timestep percent of each step: 0 = pure noise, 1 = clean.")
        if i and v < out[i - 1]:
            raise ScheduleError(field, f"decreases at position {i + 1} ({out[i - 1]} -> {v}).",
                                "list the steps in sampling order (noise positions never decrease).")
    return out


def noise_lookup(src_noise: Sequence[float], q: float) -> int:
    """Index of the source step whose noise interval holds position ``q`` (the first step below it)."""
    return max(0, bisect.bisect_right(src_noise, q + NOISE_TOL) - 1)


def _full_share(sched: "Schedule", src_noise: Sequence[float], lo: float, hi: float) -> float:
    """Share of the source's steps inside the noise range [lo, hi] that are FULL (partial steps weighted)."""
    bounds = list(src_noise) + [1.0]
    w_all = w_full = 0.0
    for i, a in enumerate(sched.actions):
        a0, a1 = bounds[i], max(bounds[i], bounds[i + 1])
        if a1 > a0:
            w = max(0.0, min(a1, hi) - max(a0, lo)) / (a1 - a0)
        else:
            w = 1.0 if lo - NOISE_TOL <= a0 <= hi + NOISE_TOL else 0.0
        w_all += w
        if a is Action.FULL:
            w_full += w
    if w_all <= 0.0:  # the run lies outside every source step (or has zero width): look it up
        return 1.0 if sched.actions[noise_lookup(src_noise, lo)] is Action.FULL else len(sched.full_steps()) / len(sched)
    return w_full / w_all


def full_budget(share: float, n: int) -> tuple[int, int]:
    """Allowed FULL count for ``n`` steps at ``share``: floor .. ceil of share * n, at least 1, at most n."""
    x = share * n
    lo = math.floor(x + 1e-9)
    hi = math.ceil(x - 1e-9)
    return min(n, max(1, lo)), min(n, max(1, hi))


def map_by_noise(sched: "Schedule", src_noise: Sequence[float], dst_noise: Sequence[float]) -> "Schedule":
    """``sched`` (made on the noise positions ``src_noise``, one per step) carried to a run whose steps
    sit at ``dst_noise`` (N + 1 values: the N steps' positions and the run's end position).

    1. Each run step takes the source's action at its own noise position (``noise_lookup``).
    2. The run's first step is FULL, and so is every step whose noise span since the previous step
       holds a source refresh (the start of a FULL source step): a run never reuses across a noise level
       at which the source refreshes (``required_full``).
    3. The FULL count is kept within rounding of the source's share of FULL steps over the noise range
       the run covers (``full_budget``): surplus FULL steps are turned into reuses where that leaves the
       merged reuse gap spanning the least noise (later first); missing ones split the reuse run spanning
       the most noise where that best halves its span (earliest run first). Gaps are measured on the
       noise axis, not in steps, so full steps stay where the noise drops most.
    4. Non-full steps are SELECTIVE where the source is SELECTIVE at that noise position, else CACHED.
    When the budget does not bind, every refresh of the source is a refresh of the run within one step
    of its noise level. When it binds (a run much sparser than the source), the share wins.
    """
    src = check_noise(src_noise, "src_noise", len(sched))
    try:
        dst = [float(v) for v in dst_noise]
    except (TypeError, ValueError):
        raise ScheduleError("dst_noise", "must be a list of numbers.", "pass the run's noise positions.") from None
    if len(dst) < 2 or not all(math.isfinite(v) for v in dst):
        raise ScheduleError("dst_noise", "needs N + 1 finite values for N steps.",
                            "pass each step's noise position and the run's end position.")
    n = len(dst) - 1
    _check_steps(n, "dst_noise")
    raw = [sched.actions[noise_lookup(src, q)] for q in dst[:-1]]
    full = required_full(sched, src, dst)
    lo_b, hi_b = full_budget(_full_share(sched, src, min(dst), max(dst)), n)
    while sum(full) > hi_b:
        full[_surplus_full(full, dst)] = False
    while sum(full) < lo_b:
        full[_missing_full(full, dst)] = True
    acts = [Action.FULL if f else (Action.SELECTIVE if raw[j] is Action.SELECTIVE else Action.CACHED)
            for j, f in enumerate(full)]
    return Schedule(tuple(acts))


def required_full(sched: "Schedule", src_noise: Sequence[float], dst_noise: Sequence[float]) -> list[bool]:
    """Per run step: FULL by rule 1-2 of ``map_by_noise`` (before the budget)."""
    refresh = [src_noise[i] for i in sched.full_steps()]
    out = []
    for j in range(len(dst_noise) - 1):
        q = dst_noise[j]
        f = j == 0 or sched.actions[noise_lookup(src_noise, q)] is Action.FULL
        if not f:
            prev = dst_noise[j - 1]
            k = bisect.bisect_right(refresh, prev + NOISE_TOL)   # first refresh strictly after prev
            f = k < len(refresh) and refresh[k] <= q + NOISE_TOL
        out.append(f)
    return out


_SPAN_GRID = 1e-4  # the host's float32 sigmas put ~1e-7 jitter on evenly spaced positions; spans tie on this grid


def _span(noise: Sequence[float] | None, a: int, b: int) -> int:
    """Noise covered from step ``a`` to step ``b`` (``b`` may be the run's end) in units of ``_SPAN_GRID``,
    so evenly spaced positions tie exactly; the step count without positions."""
    if noise is None:
        return b - a
    return round((float(noise[b]) - float(noise[a])) / _SPAN_GRID)


def _surplus_full(full: list[bool], noise: Sequence[float] | None = None) -> int:
    """The FULL step (never step 0) whose removal leaves the shortest merged reuse gap: the NOISE span
    from the previous FULL step to the next one (or to the run's end, ``noise[n]``), then the step gap;
    ties go to the later step. So full steps stay where the noise drops most (under karras-like spacings
    the first steps), and surplus FULL steps in a dense group are thinned out evenly."""
    n = len(full)
    idx = [j for j in range(n) if full[j]] + [n]
    best, best_key = -1, None
    for k in range(1, len(idx) - 1):
        key = (_span(noise, idx[k - 1], idx[k + 1]), idx[k + 1] - idx[k - 1], -idx[k])
        if best_key is None or key < best_key:
            best, best_key = idx[k], key
    return best


def _missing_full(full: list[bool], noise: Sequence[float] | None = None) -> int:
    """A new FULL step in the reuse run that spans the most noise (from its FULL step to the next FULL
    step or the end; then the most steps; earliest first), at the step that best halves that span
    (the later one on ties; with evenly spaced positions the run's middle step)."""
    n = len(full)
    best_run, best_key = None, None
    j = 0
    while j < n:
        if full[j]:
            j += 1
            continue
        k = j
        while k < n and not full[k]:
            k += 1
        key = (_span(noise, max(j - 1, 0), k), k - j)
        if best_key is None or key > best_key:
            best_run, best_key = (j, k), key
        j = k
    j, k = best_run
    prev = max(j - 1, 0)
    return min(range(j, k), key=lambda m: (max(_span(noise, prev, m), _span(noise, m, k)), -m))
