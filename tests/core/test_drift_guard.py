"""The drift guard: a reused step whose first block moved far more than the last full steps predict runs in
full; bounded by its budget; off by default; said in Stats."""
from __future__ import annotations

import pytest
import torch

from procache_core.engine import Branch, CacheRun
from procache_core.errors import ProCacheError
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings

B, N, C = 1, 8, 4
BASE = torch.linspace(1.0, 2.0, B * N * C, dtype=torch.float64).reshape(B, N, C)


def run(schedule: str, jumps: dict[int, float], guard: float, budget: float = 0.1):
    cr = CacheRun(Schedule.from_string(schedule), SelectiveSettings(enabled=False, drift_guard=guard,
                                                                      drift_budget=budget), num_blocks=2)
    calls = {0: [], 1: []}
    for step in range(len(schedule)):
        t = float(step)
        level = 1.0 + 0.01 * t + sum(v for s, v in jumps.items() if s <= step)  # slow drift, level shifts

        def branch(block):
            def compute(x):
                calls[block].append(step)
                return BASE * level
            return [Branch("mlp", compute, None, True)]

        cr.begin_step(step, noise=t)
        x = torch.zeros(B, N, C, dtype=torch.float64)
        for block in (0, 1):
            x = cr.run_block(block, x, branch(block))
    cr.close()
    return cr, calls


def test_a_jump_on_a_reused_step_makes_it_full():
    cr, calls = run("FCCFCCCCCC", {6: 0.5}, guard=2.0)
    assert cr.stats.guard_fired == 1
    assert calls[1] == [0, 3, 6]                  # the deep block ran on the scheduled and the guarded step
    assert calls[0] == list(range(10))           # the probe: block 0 runs on every step
    assert "drift guard x2 (at most 1): 1 extra full" in cr.stats.format_line()


def test_slow_drift_never_fires_and_off_is_plain_reuse():
    cr, calls = run("FCCFCCCCCC", {}, guard=2.0)
    assert cr.stats.guard_fired == 0 and calls[1] == [0, 3]
    off, calls_off = run("FCCFCCCCCC", {6: 0.5}, guard=0.0)
    assert off.stats.guard_fired == 0 and calls_off[0] == [0, 3] and calls_off[1] == [0, 3]
    assert "drift guard" not in off.stats.format_line()


def test_budget_bounds_the_extra_full_steps():
    cr, calls = run("FCCFCCCCCC", {5: 0.5, 6: 1.5, 8: 3.0}, guard=2.0, budget=0.1)  # 1 of 10 steps
    assert cr.stats.guard_fired == 1 and calls[1] == [0, 3, 5]
    cr, calls = run("FCCFCCCCCC", {5: 0.5, 6: 1.5, 8: 3.0}, guard=2.0, budget=0.3)
    assert cr.stats.guard_fired == 3 and calls[1] == [0, 3, 5, 6, 8]


@pytest.mark.parametrize("field,kw", [("drift_guard", {"drift_guard": 0.5}), ("drift_budget", {"drift_budget": 2.0})])
def test_bad_guard_settings_name_the_field(field, kw):
    with pytest.raises(ProCacheError) as e:
        SelectiveSettings(**kw).validate()
    assert e.value.field == field
