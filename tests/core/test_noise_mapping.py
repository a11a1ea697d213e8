"""Schedules on the noise axis (``map_by_noise``): properties over any preset and any decreasing sigmas."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from procache_core.errors import ScheduleError
from procache_core.presets import Preset, dump_preset, parse_preset_text
from procache_core.schedule import (Action, Schedule, even_noise, from_intervals, full_budget, map_by_noise, noise_lookup,
                                   required_full)

FAST = settings(max_examples=120, deadline=None)
PIXART = Schedule.from_string("F F S C F S C F S C F S C F S C F S C F")

schedules = st.text(alphabet="FCS", max_size=60).map(lambda s: Schedule.from_string("F" + s))


@st.composite
def preset_and_run(draw):
    """A valid preset (schedule + non-decreasing noise record) and a run given as decreasing sigmas,
    turned into noise positions with a monotone map (any decreasing sigma list gives such positions)."""
    sched = draw(schedules)
    t = len(sched)
    raw = sorted(draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=t, max_size=t)))
    src = tuple(round(v, 6) for v in raw)
    n = draw(st.integers(1, 70))
    top = draw(st.floats(0.05, 50.0))
    cuts = sorted(draw(st.lists(st.floats(1e-4, 1.0, allow_nan=False), min_size=n - 1, max_size=n - 1)),
                  reverse=True)
    sigmas = [top] + [top * c for c in cuts] + [draw(st.sampled_from([0.0, top * 1e-5]))]
    sigmas = [s for i, s in enumerate(sigmas) if i == 0 or s <= sigmas[i - 1]]
    smax = draw(st.floats(1.0, 100.0)) * top
    dst = [1.0 if s <= 0 else min(1.0, max(0.0, math.log(smax / s) / math.log(smax / (top * 1e-5)))) for s in sigmas]
    return sched, src, dst


@FAST
@given(preset_and_run())
def test_any_preset_on_any_decreasing_sigmas_gives_a_valid_schedule(case):
    sched, src, dst = case
    out = map_by_noise(sched, src, dst)
    n = len(dst) - 1
    assert isinstance(out, Schedule) and len(out) == n and out[0] is Action.FULL
    # the FULL count is within rounding of the preset's share over the range the run covers
    full = out.counts()["full"]
    assert 1 <= full <= n
    look = [sched[noise_lookup(src, q)] for q in dst[:-1]]
    # selective steps only where the preset is selective at that noise level
    assert all(look[j] is Action.SELECTIVE for j, a in enumerate(out) if a is Action.SELECTIVE)
    # every change from the rule (lookup + "no reuse across a preset refresh") is a budget move
    req = required_full(sched, src, dst)
    assert req[0] and all(req[j] for j, a in enumerate(look) if a is Action.FULL)
    refresh = [src[i] for i in sched.full_steps()]
    for j in range(1, n):  # brute force: a refresh in (q_{j-1}, q_j] forces step j
        if any(dst[j - 1] + 1e-6 < r <= dst[j] + 1e-6 for r in refresh):
            assert req[j]
    moved = sum((a is Action.FULL) != f for a, f in zip(out, req))
    assert moved == abs(full - sum(req))
    if sum(req) <= full:
        assert all(out[j] is Action.FULL for j, f in enumerate(req) if f)


@FAST
@given(schedules, st.integers(1, 120))
def test_full_share_kept_within_rounding_on_full_denoise(sched, n):
    dst = [i / n for i in range(n + 1)]
    out = map_by_noise(sched, even_noise(len(sched)), dst)
    lo, hi = full_budget(sched.counts()["full"] / len(sched), n)
    assert lo <= out.counts()["full"] <= hi


@FAST
@given(schedules)
def test_same_noise_levels_is_identity(sched):
    src = even_noise(len(sched))
    assert map_by_noise(sched, src, list(src) + [1.0]) == sched


def test_denoise_half_takes_the_second_half_of_the_preset():
    src = even_noise(20)
    dst = [0.5 + i / 40 for i in range(21)]  # 20 steps over the lower half of the noise range
    out = map_by_noise(PIXART, src, dst).to_string()
    want = "".join(PIXART[10 + j // 2].value for j in range(20))
    assert out == "F" + want[1:]


def test_mapping_validates_inputs():
    with pytest.raises(ScheduleError, match="src_noise"):
        map_by_noise(PIXART, [0.0] * 3, [0.0, 1.0])
    with pytest.raises(ScheduleError, match="src_noise"):
        map_by_noise(Schedule.from_string("FC"), [0.5, 0.1], [0.0, 1.0])
    with pytest.raises(ScheduleError, match="dst_noise"):
        map_by_noise(PIXART, even_noise(20), [0.0])


def test_old_and_new_preset_files_load():
    old = ("version: 1\nname: old\nfamily: any\nsteps: 4\nactions: FCSF\n"
           "provenance: {source: test, sampler: euler / normal, date: '2025-01-01'}\n")
    p = parse_preset_text(old)
    assert p.noise is None and p.noise_positions == (0.0, 0.25, 0.5, 0.75)
    q = Preset(name="new", schedule=p.schedule, noise=(0.0, 0.1, 0.3, 0.7))
    assert parse_preset_text(dump_preset(q)) == q and "noise: [0.0, 0.1, 0.3, 0.7]" in dump_preset(q)
    with pytest.raises(ScheduleError, match="noise"):
        parse_preset_text(old + "noise: [0.0, 0.5]\n")
    with pytest.raises(ScheduleError, match="noise"):
        parse_preset_text(old + "noise: [0.0, 0.5, 0.4, 0.9]\n")


def test_search_on_the_noise_axis_keeps_budget_and_carries_the_step_patterns():
    from procache_core.search import sample_patterns, sample_patterns_on_noise

    n = 20
    even = [i / n for i in range(n + 1)]
    assert sample_patterns_on_noise(even, 7, 1, 4, 5, 0) == sample_patterns(n, 7, 1, 4, 5, 0)
    late = [1 - (1 - i / n) ** 2 for i in range(n + 1)]   # big noise drops first
    got = sample_patterns_on_noise(late, 7, 1, 4, 5, 0)
    assert all(g.counts()["full"] == 7 and len(g) == n for g in got)
    assert got != sample_patterns(n, 7, 1, 4, 5, 0)


def _karras_like(n: int) -> list[float]:
    """Noise positions whose first steps cover most of the range (karras on a flow model), plus the end."""
    return [1.0 - (1.0 - i / n) ** 5 for i in range(n)] + [1.0]


def test_budget_keeps_full_steps_where_the_noise_drops_most():
    """flux-28-quality's shape (dense FULL late) on a karras-like run: every late step lies in the source's
    all-FULL tail, the budget binds, and the FULL steps kept must be the ones spanning the most noise, not an
    every-other-step thinning that reuses across the run's largest drops (issue 27: it lost to -balanced)."""
    src = from_intervals([2, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    dst = _karras_like(20)
    out = map_by_noise(src, even_noise(len(src)), dst)
    lo, hi = full_budget(src.counts()["full"] / len(src), 20)
    assert lo <= out.counts()["full"] <= hi
    drop = [dst[j + 1] - dst[j] for j in range(20)]
    largest = sorted(range(20), key=lambda j: -drop[j])[:out.counts()["full"] - 1]
    assert all(out[j] is Action.FULL for j in largest), (out.to_string(), largest)
    assert out.to_string().startswith("FFFF"), out.to_string()


@given(st.lists(st.booleans(), min_size=2, max_size=40), st.sampled_from([1.0, 0.6]))
@settings(max_examples=200, deadline=None)
def test_even_runs_thin_and_fill_as_by_step_count(tail, end):
    """On evenly spaced positions (host float32 jitter included) noise spans order like step gaps: the
    noise rule picks the same steps as the step-count rule did."""
    from procache_core.schedule import _missing_full, _surplus_full

    full = [True] + tail
    n = len(full)
    noise = [end * i / n + (1e-7 if i % 3 == 1 else -1e-7 if i % 3 == 2 else 0.0) for i in range(n)] + [end]
    if sum(full) > 1:
        assert _surplus_full(full, noise) == _surplus_full(full)
    if not all(full):
        assert _missing_full(full, noise) == _missing_full(full)
