"""procache_core/plan.py, the run planner, on its own (the preview-equals-run check is test_preview_plan.py)."""
from __future__ import annotations

from procache_core.plan import even_run_noise, plan_schedule
from procache_core.presets import Preset
from procache_core.schedule import Schedule


def test_schedule_of_the_run_steps_from_the_top_runs_as_written():
    plan = plan_schedule(Schedule.from_string("FCSCF"), None, even_run_noise(5))
    assert plan.schedule.to_string() == "FCSCF" and plan.mapping == "as written" and plan.remapped_from is None
    assert plan.notes == [] and plan.noted == set()


def test_no_noise_record_note_once_per_holder_of_noted():
    noted: set[str] = set()
    first = plan_schedule(Schedule.from_string("FCCFCCF"), None, even_run_noise(12), name="mine", noted=noted)
    assert first.mapping == "noise" and first.remapped_from == 7
    assert any("has no noise record" in n and "'mine'" in n for n in first.notes)
    noted |= first.noted
    again = plan_schedule(Schedule.from_string("FCCFCCF"), None, even_run_noise(12), name="mine", noted=noted)
    assert again.schedule == first.schedule and not any("noise record" in n for n in again.notes)


def test_short_run_floor_and_its_off_switch():
    sched = Schedule.from_string("FCCFCCFCCF")
    assert plan_schedule(sched, None, even_run_noise(3)).schedule.to_string() == "FFF"
    assert plan_schedule(sched, None, even_run_noise(3)).mapping == "short run"
    assert plan_schedule(sched, None, even_run_noise(3), short_run_floor=0).schedule.to_string() != "FFF"


def test_few_step_preset_replaces_a_long_schedule_as_written():
    few = Preset.from_schedule_text("FCFF", name="fewstep-test")
    plan = plan_schedule(Schedule.from_string("FCC" * 10), None, even_run_noise(4), few=few, short_run_floor=0)
    assert plan.schedule.to_string() == "FCFF" and plan.few_step is few
    assert any("few-step preset 'fewstep-test'" in n for n in plan.notes)


def test_selective_then_active_range():
    sched = Schedule.from_string("FCCCFCCC")
    assert plan_schedule(sched, None, even_run_noise(8), inject_selective=True).schedule.to_string() == "FCSCFCSC"
    assert plan_schedule(Schedule.from_string("FCSC"), None, even_run_noise(4),
                         selective_enabled=False).schedule.to_string() == "FCCC"
    got = plan_schedule(sched, None, even_run_noise(8), start_percent=0.25, end_percent=0.75)
    assert got.schedule.to_string() == "FFCCFCFF"
    masked = plan_schedule(sched, None, even_run_noise(8), active=[True] * 4 + [False] * 4)
    assert masked.schedule.to_string() == "FCCCFFFF"
