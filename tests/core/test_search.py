"""Constrained search: exact counts, constraints, uniformity, determinism and the CLI."""
from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from procache_core.errors import ScheduleError
from procache_core.schedule import Action
from procache_core.search import (PatternSpace, budget_for_speedup, count_patterns, feasible_budgets,
                                  sample_patterns)

ROOT = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=80, deadline=None)


def brute_force(t: int, b: int, vmin: int, vmax: int, non_increasing: bool = True) -> set[str]:
    """Every F/C pattern of length t satisfying the constraints, by enumeration (reuse runs in any order
    with ``non_increasing=False``)."""
    out = set()
    for bits in itertools.product("FC", repeat=t - 1):
        s = "F" + "".join(bits)
        if s.count("F") != b:
            continue
        full = [i for i, c in enumerate(s) if c == "F"] + [t]
        iv = [full[i + 1] - full[i] - 1 for i in range(b)]
        if all(vmin <= v <= vmax for v in iv) and (not non_increasing or all(x >= y for x, y in zip(iv, iv[1:]))):
            out.add(s)
    return out


def _check_constraints(s, t, b, vmin, vmax):
    assert len(s) == t and s[0] is Action.FULL
    assert s.counts()["full"] == b
    iv = s.intervals()
    assert all(vmin <= v <= vmax for v in iv)
    assert all(x >= y for x, y in zip(iv, iv[1:]))


@pytest.mark.parametrize("t", range(1, 13))
def test_counts_match_brute_force(t):
    for vmin, vmax in [(0, 0), (0, 2), (1, 3), (0, 11), (2, 5)]:
        for b in range(1, t + 1):
            expected = brute_force(t, b, vmin, vmax)
            assert count_patterns(t, b, vmin, vmax) == len(expected), (t, b, vmin, vmax)
            if expected:
                got = {s.to_string() for s in sample_patterns(t, b, vmin, vmax, k=10_000, seed=1)}
                assert got == expected


def test_reference_defaults():
    assert feasible_budgets(50, 1, 4) == (10, 25)
    cands = sample_patterns(50, 13, 1, 4, k=5, seed=0)
    assert len(cands) == 5 and len({c.to_string() for c in cands}) == 5
    for c in cands:
        _check_constraints(c, 50, 13, 1, 4)


@FAST
@given(st.integers(1, 60), st.integers(0, 3), st.integers(0, 6), st.integers(1, 12), st.integers(0, 2**32))
def test_samples_satisfy_every_constraint(t, vmin, span, k, seed):
    vmax = vmin + span
    lo, hi = feasible_budgets(t, vmin, vmax)
    if lo > hi:
        with pytest.raises(ScheduleError):
            sample_patterns(t, max(1, min(t, lo)), vmin, vmax, k, seed)
        return
    b = random.Random(seed).randint(lo, hi)
    cands = sample_patterns(t, b, vmin, vmax, k, seed)
    n = count_patterns(t, b, vmin, vmax)
    assert len(cands) == min(k, n)
    assert len({c.to_string() for c in cands}) == len(cands)  # distinct
    for c in cands:
        _check_constraints(c, t, b, vmin, vmax)
    assert cands == sample_patterns(t, b, vmin, vmax, k, seed)  # deterministic


@FAST
@given(st.integers(1, 40), st.integers(0, 2), st.integers(0, 5))
def test_feasible_range_is_exact(t, vmin, span):
    vmax = vmin + span
    lo, hi = feasible_budgets(t, vmin, vmax)
    for b in range(1, t + 1):
        assert (count_patterns(t, b, vmin, vmax) > 0) == (lo <= b <= hi)


def test_rank_unrank_bijection():
    space = PatternSpace(24, 7, 1, 4)
    seen = set()
    for r in range(space.count):
        iv = space.unrank(r)
        assert space.contains(iv) and space.rank(iv) == r
        seen.add(tuple(iv))
    assert len(seen) == space.count


def test_uniformity_chi_square():
    """Single draws over a small space hit every pattern about equally often (fixed seeds, not flaky)."""
    t, b, vmin, vmax = 16, 5, 0, 5
    n = count_patterns(t, b, vmin, vmax)
    assert 10 <= n <= 60
    draws = 200 * n
    freq = Counter(sample_patterns(t, b, vmin, vmax, k=1, seed=s)[0].to_string() for s in range(draws))
    assert len(freq) == n
    expected = draws / n
    chi2 = sum((c - expected) ** 2 / expected for c in freq.values())
    df = n - 1
    assert chi2 < df + 5 * (2 * df) ** 0.5, chi2  # ~3.5 sigma above the mean of chi2(df)


def test_k_subset_inclusion_is_uniform():
    """With k > 1 every pattern is included with probability k / count."""
    space = PatternSpace(18, 6, 0, 4)
    n, k, rounds = space.count, 4, 4000
    assert n > 2 * k
    rng = random.Random(7)
    hits = Counter()
    for _ in range(rounds):
        ranks = space.sample_ranks(k, rng)
        assert len(set(ranks)) == k
        hits.update(ranks)
    expected = rounds * k / n
    chi2 = sum((hits[r] - expected) ** 2 / expected for r in range(n))
    assert chi2 < (n - 1) + 5 * (2 * (n - 1)) ** 0.5


def test_fewer_than_k_returns_all_sorted():
    a = sample_patterns(12, 4, 1, 3, k=100, seed=0)
    b = sample_patterns(12, 4, 1, 3, k=100, seed=99)
    assert a == b and len(a) == count_patterns(12, 4, 1, 3)


def test_seed_changes_output():
    outs = {tuple(c.to_string() for c in sample_patterns(50, 13, 1, 4, k=3, seed=s)) for s in range(10)}
    assert len(outs) > 1


def test_empty_space_names_feasible_range():
    with pytest.raises(ScheduleError) as ei:
        sample_patterns(50, 30, 1, 4, k=5, seed=0)
    assert ei.value.field == "budget" and "10..25" in str(ei.value)
    with pytest.raises(ScheduleError) as ei:
        sample_patterns(5, 1, 0, 0, k=1)
    assert "5..5" in str(ei.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps=0, budget=1, vmin=0, vmax=1, k=1), "steps"),
    (dict(steps=10, budget=0, vmin=0, vmax=1, k=1), "budget"),
    (dict(steps=10, budget=11, vmin=0, vmax=1, k=1), "budget"),
    (dict(steps=10, budget=3, vmin=3, vmax=1, k=1), "vmin"),
    (dict(steps=10, budget=3, vmin=-1, vmax=1, k=1), "vmin"),
    (dict(steps=10, budget=3, vmin=1, vmax=3, k=0), "k"),
    (dict(steps=10.0, budget=3, vmin=1, vmax=3, k=1), "steps"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ScheduleError) as ei:
        sample_patterns(**kwargs)
    assert ei.value.field == field


def _partitions(n: int, k: int, lo: int, hi: int, memo: dict) -> int:
    """Independent count: non-increasing k-tuples in [lo, hi] summing to n (top-down recursion)."""
    if k == 0:
        return int(n == 0)
    key = (n, k, hi)
    if key not in memo:
        memo[key] = sum(_partitions(n - v, k - 1, lo, v, memo) for v in range(lo, min(hi, n) + 1))
    return memo[key]


def test_large_counts_are_exact_python_ints():
    n = count_patterns(400, 100, 0, 12)
    assert n > 2**32 and n == _partitions(300, 100, 0, 12, {})
    assert count_patterns(160, 40, 1, 9) == _partitions(120, 40, 1, 9, {})
    c = sample_patterns(400, 100, 0, 12, k=3, seed=5)
    assert len(c) == 3
    for s in c:
        _check_constraints(s, 400, 100, 0, 12)


def test_selective_flag():
    plain = sample_patterns(50, 13, 1, 4, k=3, seed=2)
    sel = sample_patterns(50, 13, 1, 4, k=3, seed=2, selective=True)
    assert [s.with_selective(True) for s in plain] == sel


def test_budget_for_speedup():
    assert budget_for_speedup(50, 1.0) == 50
    assert budget_for_speedup(50, 2.0) == 25
    assert budget_for_speedup(50, 4.0) == 13  # 12.5 rounds half up
    assert budget_for_speedup(50, 1000.0) == 1
    assert budget_for_speedup(50, 10.0, vmin=1, vmax=4) == 10  # clamped into the feasible range
    for bad in (0.5, float("nan"), float("inf"), "x"):
        with pytest.raises(ScheduleError) as ei:
            budget_for_speedup(50, bad)  # type: ignore[arg-type]
        assert ei.value.field == "speedup"


# -- CLI ------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "procache_core.search", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_json():
    p = _cli("--steps", "50", "--budget", "13", "--vmin", "1", "--vmax", "4", "-k", "5", "--seed", "0", "--json",
             "--selective")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 5
    for r in rows:
        assert set(r) >= {"actions", "full", "cached", "selective", "intervals"}
        assert len(r["actions"]) == 50 and r["full"] == 13 and r["actions"][0] == "F"
        assert r["full"] + r["cached"] + r["selective"] == 50 and r["selective"] > 0
    assert [r["actions"] for r in rows] == [s.to_string() for s in sample_patterns(50, 13, 1, 4, 5, 0, True)]


def test_cli_speedup_and_errors():
    p = _cli("--steps", "28", "--speedup", "3", "--json", "-k", "2")
    assert p.returncode == 0, p.stderr
    assert all(r["full"] == budget_for_speedup(28, 3, 1, 4) for r in json.loads(p.stdout))
    p = _cli("--steps", "50", "--budget", "40")
    assert p.returncode == 2 and "'budget'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _cli("--budget", "4")
    assert p.returncode == 2 and "'steps'" in p.stderr


def test_cli_validate(tmp_path):
    good = ROOT / "schedules" / "dit-xl2-ddim50-paper.yaml"
    p = _cli("--validate", str(good))
    assert p.returncode == 0 and "OK" in p.stdout and "17 full" in p.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nsteps: 3\nactions: FC\n")
    p = _cli("--validate", str(bad))
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "'steps'" in lines[0] and "Fix:" in lines[0]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    p = _cli("--validate", str(broken))
    assert p.returncode == 1 and "'yaml'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _cli("--validate", str(tmp_path / "missing.yaml"))
    assert p.returncode == 1 and "does not exist" in p.stderr


# -- the any-order space (non_increasing=False) ----------------------------------------------------
@pytest.mark.parametrize("t", range(1, 12))
def test_any_order_counts_and_draws_match_brute_force(t):
    for vmin, vmax in [(0, 0), (0, 2), (1, 3), (0, 11), (2, 5)]:
        for b in range(1, t + 1):
            expected = brute_force(t, b, vmin, vmax, non_increasing=False)
            assert count_patterns(t, b, vmin, vmax, non_increasing=False) == len(expected), (t, b, vmin, vmax)
            if expected:
                got = {s.to_string() for s in sample_patterns(t, b, vmin, vmax, k=10_000, seed=1,
                                                              non_increasing=False)}
                assert got == expected
                assert brute_force(t, b, vmin, vmax) <= expected  # the paper's space is a subset


def test_any_order_rank_unrank_bijection_and_order():
    space = PatternSpace(20, 6, 0, 5, non_increasing=False)
    seqs = [space.unrank(r) for r in range(space.count)]
    assert seqs == sorted(seqs) and len(set(map(tuple, seqs))) == space.count
    assert all(space.rank(s) == r for r, s in enumerate(seqs))
    assert any(a < b for s in seqs for a, b in zip(s, s[1:]))  # dense-early orderings are in it


def test_any_order_draw_contains_increasing_intervals():
    """Under the default bounds at B=5 of 20 the paper's space has 5 patterns, the any-order one 101."""
    assert count_patterns(20, 5, 1, 4) == 5 and count_patterns(20, 5, 1, 4, non_increasing=False) == 101
    cands = sample_patterns(20, 5, 1, 4, k=101, seed=0, non_increasing=False)
    assert len(cands) == 101 and any(c.intervals()[0] < c.intervals()[-1] for c in cands)
    assert sample_patterns(20, 5, 1, 4, k=5, seed=3) == sample_patterns(20, 5, 1, 4, k=5, seed=3, non_increasing=True)


def test_non_increasing_must_be_a_bool():
    with pytest.raises(ScheduleError) as e:
        PatternSpace(10, 3, 1, 4, non_increasing="no")
    assert e.value.field == "non_increasing"


def test_cli_any_order_count():
    out = subprocess.run([sys.executable, "-m", "procache_core.search", "--steps", "20", "--budget", "5",
                          "--any-order", "--count"], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "101"
