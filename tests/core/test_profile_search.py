"""The one-run profile search: its dynamic programme is exact (no schedule of the space costs less, checked
by enumeration), honours the space's rules, and reuses where the profile says features hold still."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from procache_core.errors import ScheduleError
from procache_core.profile_search import best_schedule, reuse_cost, schedule_cost
from procache_core.schedule import from_intervals
from procache_core.search import PatternSpace


def random_cost(n: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.random() * (i - j) if j < i else 0.0 for i in range(n)] for j in range(n)]


def all_schedules(steps, budget, vmin, vmax, non_increasing):
    if non_increasing:
        space = PatternSpace(steps, budget, vmin, vmax)
        return [space.schedule(r) for r in range(space.count)]
    out = []
    for vals in itertools.product(range(vmin, vmax + 1), repeat=budget):
        if sum(vals) + budget == steps:
            out.append(from_intervals(list(vals)))
    return out


@pytest.mark.parametrize("non_increasing", [False, True])
@pytest.mark.parametrize("steps,budget,vmin,vmax,seed", [(10, 3, 1, 4, 0), (12, 4, 0, 5, 1), (14, 4, 1, 4, 2),
                                                         (9, 2, 2, 6, 3), (16, 5, 1, 3, 4)])
def test_programme_is_exact_against_enumeration(steps, budget, vmin, vmax, seed, non_increasing):
    cost = random_cost(steps, seed)
    cands = all_schedules(steps, budget, vmin, vmax, non_increasing)
    if not cands:
        with pytest.raises(ScheduleError):
            best_schedule(cost, budget, vmin, vmax, non_increasing)
        return
    got = best_schedule(cost, budget, vmin, vmax, non_increasing)
    assert got.to_string() in {c.to_string() for c in cands}
    assert abs(schedule_cost(cost, got) - min(schedule_cost(cost, c) for c in cands)) < 1e-12


def test_reuse_goes_where_features_hold_still():
    """Features that move fast early and barely late: the full steps crowd the start."""
    t = torch.linspace(0, 1, 20)
    feats = [torch.full((4,), float(1 - (1 - v) ** 4)) + 1.0 for v in t]
    sched = best_schedule(reuse_cost(feats), 5, 0, 10)
    fulls = [i for i, a in enumerate(sched.to_string()) if a == "F"]
    assert fulls[0] == 0 and fulls[-1] < 10, sched.to_string()


def test_infeasible_budget_names_the_field():
    with pytest.raises(ScheduleError) as e:
        best_schedule(random_cost(10, 0), 9, 1, 4)
    assert e.value.field == "budget"


@pytest.mark.parametrize("non_increasing", [False, True])
@pytest.mark.parametrize("steps,budget,vmin,vmax,seed", [(12, 4, 0, 5, 5), (15, 5, 1, 4, 6), (20, 5, 1, 4, 7)])
def test_programme_matches_the_sampled_search_space_exhaustively(steps, budget, vmin, vmax, seed, non_increasing):
    """The programme searches the sampled search's own space: its optimum is the best of every pattern
    sample_patterns can draw there (k above the space's size draws them all)."""
    from procache_core.search import count_patterns, sample_patterns

    cost = random_cost(steps, seed)
    n = count_patterns(steps, budget, vmin, vmax, non_increasing)
    drawn = sample_patterns(steps, budget, vmin, vmax, n + 1, 0, non_increasing=non_increasing)
    assert len(drawn) == n > 1
    got = best_schedule(cost, budget, vmin, vmax, non_increasing)
    assert got.to_string() in {d.to_string() for d in drawn}
    assert schedule_cost(cost, got) == pytest.approx(min(schedule_cost(cost, d) for d in drawn), abs=1e-12)
