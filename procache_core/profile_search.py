"""Schedule search from one full run: a per-step reuse error profile and an exact dynamic programme.

The sampled search (procache_core.search) needs one sampling per candidate. This one needs a single
full-compute run: from what it records at every step (the sampler's denoised prediction, or any per-step
feature), ``cost[j][i]`` estimates the error of reusing at step ``i`` what was computed at step ``j``
(how far the feature moved from ``j`` to ``i``, as MagCache / ERTACache measure it). A schedule's cost is
the sum of ``cost[last full step before i][i]`` over its reused steps, and the programme finds the
schedule of least cost with exactly ``budget`` full steps, step 0 full, every reuse run (the trailing one
too) within [vmin, vmax] and, optionally, non-increasing runs: the sampled search's two spaces
(``search.PatternSpace(..., non_increasing)``). It is exact: no schedule of that space costs less
(tests/core/test_profile_search.py checks it against enumeration and against every pattern the sampled
search can draw). It is not the better search: on held-out seeds it loses to the sampled one
(benchmarks/results/search_space_cpu.md), because its objective underrates late reuse.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import ScheduleError
from .schedule import Schedule, from_intervals
from .search import _check_space, _infeasible, _int_arg

INF = float("inf")


def reuse_cost(features: Sequence[Tensor]) -> list[list[float]]:
    """``cost[j][i]`` for j < i: the squared relative L2 distance of step i's feature from step j's."""
    flat = [f.detach().float().reshape(-1) for f in features]
    n = len(flat)
    cost = [[0.0] * n for _ in range(n)]
    for i in range(n):
        norm = float(flat[i].pow(2).sum()) or 1e-30
        for j in range(i):
            cost[j][i] = float((flat[i] - flat[j]).pow(2).sum()) / norm
    return cost


def schedule_cost(cost: Sequence[Sequence[float]], schedule: Schedule) -> float:
    """The profile cost of ``schedule`` (reused steps cost ``cost[last full][step]``)."""
    total, last = 0.0, 0
    for i, a in enumerate(schedule.actions):
        if a.value == "F":
            last = i
        else:
            total += cost[last][i]
    return total


def best_schedule(cost: Sequence[Sequence[float]], budget: int, vmin: int, vmax: int,
                  non_increasing: bool = False) -> Schedule:
    """The least-cost schedule of ``len(cost)`` steps (module docstring); ScheduleError when none fits."""
    steps = len(cost)
    _check_space(steps, vmin, vmax)
    _int_arg(budget, "budget", 1, steps)
    # run_cost[j][v]: reusing after a full step at j for v steps
    run_cost = [[0.0] * (vmax + 1) for _ in range(steps)]
    for j in range(steps):
        acc = 0.0
        for v in range(1, vmax + 1):
            if j + v < steps:
                acc += cost[j][j + v]
                run_cost[j][v] = acc
            else:
                run_cost[j][v] = INF
    # best[b][j][p]: least cost of the steps before j with b full steps placed, the b-th at j, and the
    # previous run of length p (p = vmax for the first, so the ordering never binds it)
    best: dict[tuple[int, int, int], tuple[float, tuple | None]] = {(1, 0, vmax): (0.0, None)}
    for b in range(1, budget):
        for (bb, j, p), (c, _) in [kv for kv in best.items() if kv[0][0] == b]:
            for v in range(vmin, (min(vmax, p) if non_increasing else vmax) + 1):
                i = j + v + 1
                if i >= steps:
                    break
                key = (b + 1, i, v)
                val = c + run_cost[j][v]
                if val < best.get(key, (INF, None))[0]:
                    best[key] = (val, (bb, j, p, v))
    end, end_cost = None, INF
    for (b, j, p), (c, _) in best.items():
        v = steps - 1 - j
        if b != budget or not (vmin <= v <= vmax) or (non_increasing and v > p):
            continue
        total = c + (run_cost[j][v] if v else 0.0)
        if total < end_cost:
            end, end_cost = (b, j, p, v), total
    if end is None:
        raise _infeasible(steps, budget, vmin, vmax)
    intervals = [end[3]]
    key = end[:3]
    while True:
        prev = best[key][1]
        if prev is None:
            break
        intervals.append(prev[3])
        key = prev[:3]
    intervals.reverse()
    sched = from_intervals(intervals)
    if len(sched) != steps:  # a programme error, never a user one
        raise ScheduleError("budget", f"gave {len(sched)} steps for {steps}.", "report this as a ProCache bug.")
    return sched
