"""Schedule: parsing, summaries, Eq. 7 selective injection and remapping."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from procache_core.errors import ProCacheError, ScheduleError
from procache_core.schedule import Action, Schedule, from_intervals

DIT = "FCSC" * 6 + "FCS" * 4 + "FC" * 7
PIXART = "F F S C F S C F S C F S C F S C F S C F"

schedules = st.text(alphabet="FCS", max_size=80).map(lambda s: Schedule.from_string("F" + s))
nonincreasing = st.lists(st.integers(0, 6), min_size=1, max_size=25).map(lambda v: sorted(v, reverse=True))
FAST = settings(max_examples=150, deadline=None)


def test_action_values():
    assert [a.value for a in Action] == ["F", "C", "S"]
    assert Action("F") is Action.FULL and Action.CACHED == "C" and str(Action.SELECTIVE) == "S"


def test_from_string_is_lenient_about_case_spaces_commas():
    s = Schedule.from_string(" f c, S\tc\nF ")
    assert s.to_string() == "FCSCF"
    assert len(s) == 5 and s[2] is Action.SELECTIVE and s[-1] is Action.FULL
    assert Schedule.from_string(s.grouped()) == s
    assert Schedule(("F", "c")) == Schedule((Action.FULL, Action.CACHED))


def test_bad_letter_names_position():
    with pytest.raises(ScheduleError) as ei:
        Schedule.from_string("FC XS")
    assert ei.value.field == "actions"
    assert "position 4" in str(ei.value) and "'X'" in str(ei.value) and "Fix:" in str(ei.value)


@pytest.mark.parametrize("text", ["C", "SFC", "cf"])
def test_first_step_must_be_full(text):
    with pytest.raises(ScheduleError) as ei:
        Schedule.from_string(text)
    assert ei.value.field == "actions" and "first" in ei.value.fix


@pytest.mark.parametrize("bad", ["", " , ", None, 5])
def test_empty_or_wrong_type(bad):
    with pytest.raises(ProCacheError):
        Schedule.from_string(bad)


def test_schedule_is_frozen_and_validated_on_construction():
    s = Schedule.from_string("FC")
    with pytest.raises(Exception):
        s.actions = ()  # type: ignore[misc]
    with pytest.raises(ScheduleError):
        Schedule((Action.CACHED,))
    with pytest.raises(ScheduleError):
        Schedule(("F", "X"))


def test_paper_dit_pattern():
    s = Schedule.from_string(DIT)
    assert len(s) == 50
    assert s.counts() == {"full": 17, "cached": 23, "selective": 10}
    assert s.intervals() == [3] * 6 + [2] * 4 + [1] * 7
    assert s.with_selective(True) == s  # the DiT pattern is exactly Eq. 7


def test_paper_pixart_pattern():
    s = Schedule.from_string(PIXART)
    assert len(s) == 20 and s.counts() == {"full": 8, "cached": 6, "selective": 6}
    assert s.intervals() == [0, 2, 2, 2, 2, 2, 2, 0]


def test_intervals_include_trailing_run():
    assert Schedule.from_string("FCCFCF").intervals() == [2, 1, 0]
    assert Schedule.from_string("FCCFCFCC").intervals() == [2, 1, 2]
    assert Schedule.from_string("F").intervals() == [0]


@pytest.mark.parametrize("run, expected", [("C", "C"), ("CC", "CS"), ("CCC", "CSC"), ("CCCC", "CSCS"),
                                           ("SSSSS", "CSCSC")])
def test_with_selective_eq7(run, expected):
    assert Schedule.from_string("F" + run + "F" + run).with_selective().to_string() == "F" + expected + "F" + expected


@FAST
@given(schedules)
def test_with_selective_properties(s):
    on, off = s.with_selective(True), s.with_selective(False)
    assert off.counts()["selective"] == 0
    assert off.full_steps() == s.full_steps() == on.full_steps()
    assert on.with_selective(False) == off and off.with_selective(True) == on
    assert all(not (a is Action.SELECTIVE and b is Action.SELECTIVE) for a, b in zip(on.actions, on.actions[1:]))


@FAST
@given(schedules)
def test_counts_and_intervals_consistent(s):
    c = s.counts()
    assert sum(c.values()) == len(s)
    iv = s.intervals()
    assert len(iv) == c["full"] and sum(iv) + c["full"] == len(s)
    assert from_intervals(iv).with_selective(False) == s.with_selective(False)
    assert Schedule.from_string(s.to_string()) == s


def test_compute_fraction():
    s = Schedule.from_string("FCSC")
    assert s.compute_fraction(0.0) == 0.25
    assert s.compute_fraction(1.0) == 0.5
    assert math.isclose(s.compute_fraction(0.1), (1 + 0.1) / 4)
    with pytest.raises(ScheduleError) as ei:
        s.compute_fraction(1.5)
    assert ei.value.field == "selective_cost"


# -- remapping ------------------------------------------------------------------------------------
@FAST
@given(schedules, st.integers(1, 120))
def test_remap_properties(s, n):
    r = s.remap(n)
    assert len(r) == n and r[0] is Action.FULL
    b, t = s.counts()["full"], len(s)
    expected = min(n, max(1, math.floor(b * n / t + 0.5)))
    assert r.counts()["full"] == expected
    if expected > 1:
        assert abs(expected / n - b / t) <= 0.5 / n + 1e-12
    if n == t:  # same length: the schedule is kept exactly as written (published S placement included)
        assert r == s
    else:  # otherwise S steps are re-derived by Eq. 7 on the remapped pattern
        assert r.has_selective() == (s.has_selective() and r.with_selective(True).has_selective())


@FAST
@given(schedules)
def test_remap_identity(s):
    assert s.remap(len(s)) == s


@FAST
@given(nonincreasing, st.booleans(), st.integers(1, 150))
def test_remap_keeps_nonincreasing_intervals(iv, sel, n):
    s = from_intervals(iv, selective=sel)
    r = s.remap(n)
    got = r.intervals()
    assert all(a >= b for a, b in zip(got, got[1:])), (s.to_string(), r.to_string())
    if sel and r.with_selective(True) != r.with_selective(False):
        assert r == r.with_selective(True)  # S re-derived by Eq. 7


def test_remap_paper_dit_shape():
    r = Schedule.from_string(DIT).remap(25)
    assert r.counts()["full"] == 9  # 17 * 25 / 50 = 8.5 rounds half up
    iv = r.intervals()
    assert iv[0] >= iv[-1] and r == r.with_selective(True)


def test_remap_rejects_bad_lengths():
    s = Schedule.from_string("FCSC")
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(ScheduleError) as ei:
            s.remap(bad)  # type: ignore[arg-type]
        assert ei.value.field == "n_steps"


def test_remap_by_sigmas_same_sampler_is_identity():
    sig = [1.0 - i / 20 for i in range(21)]
    s = Schedule.from_string(PIXART)
    assert s.remap_by_sigmas(sig, sig).with_selective(False) == s.with_selective(False)


def test_remap_by_sigmas_nearest():
    src = [10, 8, 6, 4, 2, 0]            # 5 steps
    dst = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # 10 steps
    s = Schedule.from_string("FCFCF")     # full at sigma 10, 6, 2
    r = s.remap_by_sigmas(src, dst)
    assert len(r) == 10 and r.full_steps() == [0, 4, 8]


@FAST
@given(schedules, st.integers(1, 60))
def test_remap_by_sigmas_properties(s, n):
    src = [1.0 - i / len(s) for i in range(len(s) + 1)]
    dst = [(1.0 - i / n) ** 2 for i in range(n + 1)]
    r = s.remap_by_sigmas(src, dst)
    assert len(r) == n and r[0] is Action.FULL
    assert r.counts()["full"] <= s.counts()["full"]


sigma_values = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 14.6])


@FAST
@given(schedules, st.lists(sigma_values, min_size=2, max_size=30), st.data())
def test_remap_by_sigmas_matches_brute_force(s, dst, data):
    src = data.draw(st.lists(sigma_values, min_size=len(s) + 1, max_size=len(s) + 1))
    steps = dst[:-1]
    expected = {0} | {min(range(len(steps)), key=lambda j: (abs(steps[j] - src[i]), j)) for i in s.full_steps()}
    assert s.remap_by_sigmas(src, dst).full_steps() == sorted(expected)


def test_hash_and_repr():
    a, b = Schedule.from_string("FCS"), Schedule.from_string("fcs")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert repr(a) == "Schedule.from_string('FCS')" and Schedule.from_string(repr(a)[22:-2]) == a


def test_remap_by_sigmas_validates():
    s = Schedule.from_string("FCF")
    with pytest.raises(ScheduleError) as ei:
        s.remap_by_sigmas([1, 0], [1, 0.5, 0])
    assert ei.value.field == "src_sigmas"
    with pytest.raises(ScheduleError) as ei:
        s.remap_by_sigmas([1, 0.6, 0.3, 0], [1])
    assert ei.value.field == "dst_sigmas"
    with pytest.raises(ScheduleError):
        s.remap_by_sigmas([1, float("nan"), 0.3, 0], [1, 0])


def test_from_full_steps():
    s = Schedule.from_full_steps(50, [0, 1, 2, 6, 12, 18, 24, 30, 35, 40, 45])
    assert s.counts()["full"] == 11 and s.intervals() == [0, 0, 3, 5, 5, 5, 5, 4, 4, 4, 4]
    with pytest.raises(ScheduleError):
        Schedule.from_full_steps(5, [7])
