"""Few-step runs: which schedule a short run takes (procache_core/few_step.py) and the shipped presets."""
from __future__ import annotations

import pytest

from procache_core import few_step
from procache_core.presets import load_preset, shipped_presets_dir
from procache_core.schedule import Action, map_by_noise

TABLE = {4: "a", 8: "b"}


@pytest.mark.parametrize("run, want", [(1, 4), (3, 4), (4, 4), (5, 4), (6, 8), (7, 8), (8, 8), (9, 8)])
def test_long_schedule_on_a_few_step_run_takes_the_nearest_few_step_preset(run, want):
    # ties (6: two steps from 4 and from 8) go to the preset with more steps
    assert few_step.few_step_choice(28, run, TABLE) == want
    assert few_step.few_step_choice(few_step.FEW_STEP_BELOW, run, TABLE) == want


@pytest.mark.parametrize("sched_steps, run", [(8, 4), (4, 8), (9, 9), (3, 3)])
def test_schedule_written_for_few_steps_is_kept(sched_steps, run):
    assert few_step.few_step_choice(sched_steps, run, TABLE) is None


@pytest.mark.parametrize("run", [few_step.FEW_STEP_BELOW, 20, 50, 0])
def test_long_or_empty_runs_keep_their_schedule(run):
    assert few_step.few_step_choice(28, run, TABLE) is None


def test_nearest_steps_edge_cases():
    assert few_step.nearest_steps(5, []) is None
    assert few_step.nearest_steps(5, [8]) == 8
    assert few_step.nearest_steps(2, [4, 8, 4]) == 4


def test_families_without_a_row_take_the_default_row():
    assert few_step.presets_for("pixart") == few_step.FEW_STEP_PRESETS["pixart"]
    for fam in ("flux", "flux2", "z_image", "qwen_image", "wan", "generic", "no-such-family"):
        assert few_step.presets_for(fam) == few_step.FEW_STEP_PRESETS[few_step.DEFAULT]


def _every_few_step_preset():
    return sorted({(steps, name) for row in few_step.FEW_STEP_PRESETS.values() for steps, name in row.items()})


@pytest.mark.parametrize("steps, name", _every_few_step_preset())
def test_each_few_step_preset_is_shipped_with_its_step_count_and_measurement(steps, name):
    p = load_preset(shipped_presets_dir() / f"{name}.yaml")
    assert len(p.schedule) == steps and not few_step.is_long(steps)
    assert p.schedule.counts()["cached"] >= 1              # it reuses something, else it would be pointless
    assert p.schedule.actions[-1] is Action.FULL            # the last (finest) step is always computed
    assert p.noise is not None and len(p.noise) == steps
    assert "dB" in p.provenance["measured"] and "few_step" in p.provenance["source"]


@pytest.mark.parametrize("row", sorted(few_step.FEW_STEP_PRESETS))
def test_few_step_presets_carried_to_in_between_step_counts_keep_reusing(row):
    """5-7 and 9 steps take the nearest preset by noise level: they still reuse, never the last step."""
    table = few_step.FEW_STEP_PRESETS[row]
    for n in range(4, few_step.FEW_STEP_BELOW):
        p = load_preset(shipped_presets_dir() / f"{table[few_step.nearest_steps(n, table)]}.yaml")
        got = map_by_noise(p.schedule, p.noise_positions, [i / n for i in range(n + 1)])
        assert len(got) == n and got[0] is Action.FULL
        assert got.counts()["cached"] >= 1, (row, n, got)
        assert got.actions[-1] is Action.FULL, (row, n, got)
