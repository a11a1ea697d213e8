"""Constraint-aware schedule search, part 1 of the method: uniform sampling by exact counting.

The search space for T steps and a budget of B full steps holds every F/C pattern with

* exactly B full steps, the first step full;
* reuse intervals v_1..v_B with v_min <= v_i <= v_max, where v_i is the number of reused steps after
  the i-th full step. **The trailing run after the last full step counts as an interval too**, so it
  obeys the same bounds and ordering (a pattern cannot end in a long unchecked reuse run);
* optionally (``non_increasing=True``, the paper's rule and the default) non-increasing intervals,
  v_{i+1} <= v_i (long reuse early, short reuse late). Without it the intervals may come in any order,
  so dense-early schedules (short reuse first), which win under karras-like spacings, are in the space.

Since the intervals add up to T - B, a pattern is a partition (non-increasing) or a composition (any
order) of T - B into exactly B parts in [v_min, v_max], and B is feasible exactly when
B * (v_min + 1) <= T <= B * (v_max + 1) either way. We count them with a dynamic programme in Python
integers (exact, no overflow), then draw uniform ranks and unrank them: every pattern has the same
probability, unlike stick-breaking with rejection.

CLI::

    python -m procache_core.search --steps 50 --budget 13 --vmin 1 --vmax 4 -k 5 --seed 0 --json
    python -m procache_core.search --steps 20 --budget 4 --any-order --count
    python -m procache_core.search --validate schedules/dit-xl2-ddim50-paper.yaml
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Sequence

from .errors import ProCacheError, ScheduleError
from .schedule import Schedule, even_noise, from_intervals, map_by_noise

MAX_SEARCH_STEPS = 1000
_MAX_TABLE_CELLS = 20_000_000  # guards the counting table against pathological inputs


def _int_arg(value: object, field: str, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ScheduleError(field, f"must be a whole number, got {value!r}.", f"give an integer >= {lo}.")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ScheduleError(field, f"is {value}, outside {rng}.", f"use a value {rng}.")
    return value


def _check_space(steps: int, vmin: int, vmax: int) -> None:
    _int_arg(steps, "steps", 1, MAX_SEARCH_STEPS)
    _int_arg(vmin, "vmin", 0)
    _int_arg(vmax, "vmax", 0)
    if vmin > vmax:
        raise ScheduleError("vmin", f"is {vmin}, larger than vmax={vmax}.", "use vmin <= vmax, e.g. vmin=1, vmax=4.")


def feasible_budgets(steps: int, vmin: int, vmax: int) -> tuple[int, int]:
    """The inclusive range (lo, hi) of budgets B with at least one pattern; lo > hi when there is none."""
    _check_space(steps, vmin, vmax)
    return -(-steps // (vmax + 1)), steps // (vmin + 1)


def _infeasible(steps: int, budget: int, vmin: int, vmax: int) -> ScheduleError:
    lo, hi = feasible_budgets(steps, vmin, vmax)
    if lo > hi:
        return ScheduleError("vmax", f"allows no pattern: with steps={steps}, vmin={vmin}, vmax={vmax} no budget works.",
                             f"widen the interval bounds, e.g. vmin=0 or vmax>={steps - 1}.")
    return ScheduleError("budget", f"is {budget}, but steps={steps}, vmin={vmin}, vmax={vmax} allow only budgets "
                                   f"{lo}..{hi}.", f"choose a budget between {lo} and {hi}, or change vmin/vmax.")


class PatternSpace:
    """All constrained patterns for (steps, budget, vmin, vmax), countable, rankable and unrankable.

    Patterns are ordered by their interval sequence (v_1, v_2, ...) lexicographically ascending.
    Non-increasing space: ``table[h][k][n]`` = number of non-increasing sequences of length k, values in
    [vmin, h], sum n. Any-order space (``non_increasing=False``): ``comp[k][n]`` = number of sequences of
    length k, values in [vmin, vmax], sum n.
    """

    def __init__(self, steps: int, budget: int, vmin: int, vmax: int, non_increasing: bool = True) -> None:
        _check_space(steps, vmin, vmax)
        _int_arg(budget, "budget", 1, steps)
        if not isinstance(non_increasing, bool):
            raise ScheduleError("non_increasing", f"must be true or false, got {non_increasing!r}.",
                                "use True (the paper's ordering) or False (intervals in any order).")
        self.steps, self.budget, self.vmin, self.vmax = steps, budget, vmin, vmax
        self.non_increasing = non_increasing
        self.rest = steps - budget
        lo, hi = feasible_budgets(steps, vmin, vmax)
        self._hi = min(vmax, max(vmin, self.rest))  # no part can exceed the total
        self.table: list[list[list[int]]] = []
        self.comp: list[list[int]] = []
        if not lo <= budget <= hi:
            self.count = 0
            return
        k_max, n_max = budget, self.rest
        if not non_increasing:
            if (budget + 1) * (n_max + 1) > _MAX_TABLE_CELLS:
                raise ScheduleError("steps", f"with budget={budget} makes a search table too large.",
                                    "use fewer steps.")
            comp = [[1 if n == 0 else 0 for n in range(n_max + 1)]]
            for k in range(1, k_max + 1):
                below = comp[-1]
                comp.append([sum(below[n - v] for v in range(vmin, min(self._hi, n) + 1)) for n in range(n_max + 1)])
            self.comp = comp
            self.count = comp[budget][self.rest]
            return
        cells = (self._hi - vmin + 1) * (budget + 1) * (self.rest + 1)
        if cells > _MAX_TABLE_CELLS:
            raise ScheduleError("steps", f"with budget={budget} and vmax={vmax} makes a search table too large "
                                         f"({cells} cells).", "use fewer steps or a smaller vmax.")
        prev = [[1 if (k == 0 and n == 0) else 0 for n in range(n_max + 1)] for k in range(k_max + 1)]
        for h in range(vmin, self._hi + 1):
            cur = [row[:] for row in prev]  # sequences whose largest value is < h
            for k in range(1, k_max + 1):
                row, below = cur[k], cur[k - 1]
                for n in range(h, n_max + 1):
                    row[n] += below[n - h]  # one more part equal to h on top of a sequence bounded by h
            self.table.append(cur)
            prev = cur
        self.count = self._table(self._hi, budget, self.rest)

    def _rest_count(self, v: int, k: int, n: int) -> int:
        """Sequences of k more parts summing to n that may follow a part equal to v."""
        if n < 0:
            return 0
        if not self.non_increasing:
            return self.comp[k][n]
        return self._table(v, k, n)

    def _table(self, h: int, k: int, n: int) -> int:
        if n < 0 or h < self.vmin:
            return 1 if (k == 0 and n == 0) else 0
        return self.table[min(h, self._hi) - self.vmin][k][n]

    def unrank(self, rank: int) -> list[int]:
        """The intervals of the pattern with the given rank (0 <= rank < count)."""
        if not 0 <= rank < self.count:
            raise ScheduleError("rank", f"is {rank}, outside [0, {self.count - 1}].", "use a rank below count.")
        out: list[int] = []
        n, k, h = self.rest, self.budget, self._hi
        while k > 0:
            for v in range(self.vmin, min(h, n) + 1):
                c = self._rest_count(v, k - 1, n - v)  # sequences starting with v (then bounded by v if ordered)
                if rank < c:
                    out.append(v)
                    n, k = n - v, k - 1
                    h = v if self.non_increasing else self._hi
                    break
                rank -= c
            else:  # pragma: no cover - counts are exact, so this cannot happen
                raise AssertionError("unrank ran past the table")
        return out

    def rank(self, intervals: Sequence[int]) -> int:
        """Inverse of ``unrank`` (the intervals must belong to the space)."""
        vals = list(intervals)
        if not self.contains(vals):
            raise ScheduleError("intervals", f"{vals} are not in this search space.",
                                "give intervals with the space's budget, bounds and ordering.")
        r, n, k = 0, self.rest, self.budget
        for v in vals:
            for w in range(self.vmin, v):  # every sequence that starts lower at this position comes first
                r += self._rest_count(w, k - 1, n - w)
            n, k = n - v, k - 1
        return r

    def contains(self, intervals: Sequence[int]) -> bool:
        vals = list(intervals)
        return (len(vals) == self.budget and sum(vals) == self.rest
                and all(self.vmin <= v <= self.vmax for v in vals)
                and (not self.non_increasing or all(a >= b for a, b in zip(vals, vals[1:]))))

    def schedule(self, rank: int, selective: bool = False) -> Schedule:
        return from_intervals(self.unrank(rank), selective=selective)

    def sample_ranks(self, k: int, rng: random.Random) -> list[int]:
        """k distinct ranks, a uniform random k-subset (all ranks when k >= count), sorted."""
        if k >= self.count:
            return list(range(self.count))
        if 2 * k > self.count:  # dense: sample the small space directly
            return sorted(rng.sample(range(self.count), k))
        chosen: set[int] = set()
        while len(chosen) < k:  # sparse: rejection of repeats, expected < 2 draws each
            chosen.add(rng.randrange(self.count))
        return sorted(chosen)


def count_patterns(steps: int, budget: int, vmin: int, vmax: int, non_increasing: bool = True) -> int:
    """Number of patterns in the constrained space (0 when the budget is infeasible)."""
    return PatternSpace(steps, budget, vmin, vmax, non_increasing).count


def sample_patterns_on_noise(noise: Sequence[float], budget: int, vmin: int, vmax: int, k: int, seed: int = 0,
                             selective: bool = False) -> list[Schedule]:
    """The constrained search expressed on the noise axis of one sampler.

    ``noise`` holds the sampler's N + 1 noise positions (its N steps and its end). The same k patterns
    as ``sample_patterns(N, budget, ...)`` are drawn on N evenly spaced noise levels, so their reuse
    intervals are bounded and non-increasing in noise rather than in steps, then carried onto the
    sampler's steps by ``map_by_noise`` (budget kept exactly on a full-denoise run). Measured on the
    digits DiT (benchmarks/noise_axis.py, benchmarks/results/README.md) this loses to the step-axis
    search under karras-like and late-drop spacings; the Schedule Search node therefore searches on
    the step axis, records the result's noise positions, and keeps uniform reuse when it scores better.
    """
    pos = [float(v) for v in noise]
    n = len(pos) - 1
    pats = sample_patterns(n, budget, vmin, vmax, k, seed)
    out = [map_by_noise(p, even_noise(n), pos) for p in pats]
    return [o.with_selective(True) for o in out] if selective else out


def sample_patterns(steps: int, budget: int, vmin: int, vmax: int, k: int, seed: int = 0,
                    selective: bool = False, non_increasing: bool = True) -> list[Schedule]:
    """k distinct patterns drawn uniformly from the space (a uniform k-subset), ordered by rank.

    Fewer than k patterns in the space: all of them, in rank order. Same arguments -> same output.
    An empty space raises ScheduleError naming the feasible budget range. ``selective=True`` applies
    paper Eq. 7 to each candidate (does not change which patterns are drawn). ``non_increasing=False``
    draws from the larger space whose intervals come in any order (the default keeps the paper's rule;
    benchmarks/search_space.py measures both).
    """
    _int_arg(k, "k", 1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ScheduleError("seed", f"must be a whole number, got {seed!r}.", "use e.g. seed=0.")
    space = PatternSpace(steps, budget, vmin, vmax, non_increasing)
    if space.count == 0:
        raise _infeasible(steps, budget, vmin, vmax)
    ranks = space.sample_ranks(k, random.Random(seed))
    return [space.schedule(r, selective=selective) for r in ranks]


def budget_for_speedup(steps: int, speedup: float, vmin: int | None = None, vmax: int | None = None) -> int:
    """Full-step budget for a target speed-up: B = round(steps / speedup), at least 1.

    The estimate counts cached steps as free; with vmin/vmax given, B is clamped into the feasible range.
    """
    _int_arg(steps, "steps", 1, MAX_SEARCH_STEPS)
    try:
        s = float(speedup)
    except (TypeError, ValueError):
        raise ScheduleError("speedup", f"must be a number, got {speedup!r}.", "use e.g. 2.5.") from None
    if not (math.isfinite(s) and s >= 1.0):
        raise ScheduleError("speedup", f"is {speedup}, but must be a finite number >= 1.", "use e.g. 2.0 or 3.0.")
    b = min(steps, max(1, math.floor(steps / s + 0.5)))
    if vmin is not None or vmax is not None:
        lo, hi = feasible_budgets(steps, 0 if vmin is None else vmin, steps if vmax is None else vmax)
        if lo > hi:
            raise _infeasible(steps, b, 0 if vmin is None else vmin, steps if vmax is None else vmax)
        b = min(hi, max(lo, b))
    return b


def describe(schedule: Schedule) -> dict:
    """The JSON form of a candidate used by the CLI and reports."""
    c = schedule.counts()
    return {"actions": schedule.to_string(), "steps": len(schedule), "full": c["full"], "cached": c["cached"],
            "selective": c["selective"], "intervals": schedule.intervals()}


# -- command line --------------------------------------------------------------------------------
def _validate_files(paths: Sequence[str]) -> int:
    from .presets import load_preset  # deferred: the sampler itself does not need YAML

    status = 0
    for p in paths:
        try:
            preset = load_preset(Path(p))
        except ProCacheError as exc:
            print(f"{p}: INVALID: {exc}", file=sys.stderr)
            status = 1
            continue
        c = preset.schedule.counts()
        print(f"{p}: OK {preset.name} [{preset.family}] {len(preset.schedule)} steps "
              f"({c['full']} full / {c['selective']} selective / {c['cached']} cached, version {preset.version})")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m procache_core.search",
                                 description="Sample ProCache schedules uniformly from the constrained space, "
                                             "or validate preset files.")
    ap.add_argument("--validate", nargs="+", metavar="FILE", help="validate preset YAML files and exit")
    ap.add_argument("--steps", type=int, help="number of sampling steps T")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--budget", type=int, help="number of full steps B")
    g.add_argument("--speedup", type=float, help="target speed-up; sets B = round(T / speedup)")
    ap.add_argument("--vmin", type=int, default=1, help="shortest reuse interval (default 1)")
    ap.add_argument("--vmax", type=int, default=4, help="longest reuse interval (default 4)")
    ap.add_argument("-k", type=int, default=5, help="number of distinct candidates (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--selective", action="store_true", help="mark selective steps (paper Eq. 7)")
    ap.add_argument("--any-order", action="store_true",
                    help="reuse intervals in any order (default: non-increasing, the paper's rule)")
    ap.add_argument("--json", action="store_true", help="print a JSON list")
    ap.add_argument("--count", action="store_true", help="print the size of the space and exit")
    args = ap.parse_args(argv)

    if args.validate:
        return _validate_files(args.validate)
    try:
        if args.steps is None:
            raise ScheduleError("steps", "is missing.", "pass --steps T (and --budget B or --speedup X).")
        if args.budget is not None:
            budget = args.budget
        elif args.speedup is not None:
            budget = budget_for_speedup(args.steps, args.speedup, args.vmin, args.vmax)
        else:
            raise ScheduleError("budget", "is missing.", "pass --budget B (full steps) or --speedup X.")
        if args.count:
            _check_space(args.steps, args.vmin, args.vmax)
            print(count_patterns(args.steps, budget, args.vmin, args.vmax, not args.any_order))
            return 0
        cands = sample_patterns(args.steps, budget, args.vmin, args.vmax, args.k, args.seed,
                                selective=args.selective, non_increasing=not args.any_order)
    except ProCacheError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    rows = [describe(c) for c in cands]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['actions']}  full={r['full']} selective={r['selective']} cached={r['cached']} "
                  f"intervals={r['intervals']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
