"""The UI preview (nodes/preview.py) shows what the run plans (nodes/run_plan.plan_run), without a host.

The run is planned the way ProCache Apply sets it up (its selective / inject decision, the active range,
the short-run floor, the few-step preset of the preset's family), on a sampler whose steps sit at evenly
spaced noise positions, which is what the preview assumes; the preview's actions must be the run's.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

from procache_core import few_step
from procache_core.plan import SHORT_RUN_FLOOR, active_from_noise, even_run_noise

ROOT = Path(__file__).resolve().parents[2]
# a preset whose noise record is not even: carried by its record, not by its step share
SKEWED = ("version: 1\nname: skewed\nfamily: flux\nactions: FCCCCCFCSCFF\n"
          "noise: [0.0, 0.3, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98]\n")
TYPED = ["FCSCFCSCFCFCF", "FCCCFCCFCF", "FCSCF", "FC", "F" + "CCF" * 9, SKEWED]
SHIPPED = ["flux-28-fast", "pixart-alpha-dpm20-paper", "wan-50-quality", "fewstep-8"]
STEPS = [None, 2, 3, 4, 6, 8, 13, 20, 37]
SELECTIVE = [None, {"enabled": True, "ratio": 0.3}, {"enabled": False}]
RANGES = [(0.0, 1.0), (0.0, 0.5), (0.25, 0.75), (0.3, 1.0)]


@pytest.fixture(scope="module")
def pack():
    """The pack under the name the host gives it (relative imports), without a host: the preview and
    the planner need none."""
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from _inprocess import import_pack

    import_pack()
    preview = importlib.import_module("procache_pack.nodes.preview")
    bridge = importlib.import_module("procache_pack.nodes.run_plan")
    files = importlib.import_module("procache_pack.nodes.preset_files")
    context = importlib.import_module("procache_pack.nodes.run_context")
    core_presets = importlib.import_module("procache_pack.procache_core.presets")
    shipped = core_presets.list_presets([core_presets.shipped_presets_dir()])
    # the run loads its few-step presets through the Schedule Loader's listing (a host); same files
    for row in few_step.FEW_STEP_PRESETS.values():
        for name in row.values():
            bridge._FEW_STEP_CACHE.setdefault(name, core_presets.load_preset(shipped[name]))
    return types.SimpleNamespace(preview=preview, bridge=bridge, files=files, presets=core_presets, context=context)


def _run_actions(pack, monkeypatch, preset, steps, selective, start, end, floor):
    """The schedule plan_run gives a run of ``steps`` evenly spaced noise levels, set up as Apply does."""
    n = steps if steps is not None else len(preset.schedule)
    if selective is not None:
        sel = pack.presets.SelectiveSettings.from_dict(selective).validate()
        inject = bool(sel.enabled and not any(a.value == "S" for a in preset.schedule.actions))
    else:
        sel, inject = preset.selective.validate(), False
    config = types.SimpleNamespace(
        preset=preset, schedule=preset.schedule, selective=sel, inject_selective=inject, start_percent=start,
        end_percent=end, adapter=types.SimpleNamespace(family=preset.family), block_adapter=None,
        short_run_floor=SHORT_RUN_FLOOR if floor is None else floor, log=pack.context.RunLog(), name=preset.name)
    monkeypatch.setattr(pack.bridge, "noise_positions", lambda ms, sig: (even_run_noise(len(sig) - 1), True))
    sigmas = [1.0 - i / n for i in range(n)] + [0.0]
    return pack.bridge.plan_run(config, sigmas, None).schedule.to_string()


def _cases():
    i = 0
    for text in TYPED + SHIPPED:
        for steps in STEPS:
            sel = SELECTIVE[i % len(SELECTIVE)]
            rng = RANGES[(i // len(SELECTIVE)) % len(RANGES)]
            floor = (None, 0)[i % 2]
            i += 1
            yield text, steps, sel, rng, floor


@pytest.mark.parametrize("text, steps, selective, rng, floor", list(_cases()))
def test_preview_actions_are_the_run_plan(pack, monkeypatch, text, steps, selective, rng, floor):
    if text in SHIPPED:  # a shipped preset pasted as YAML: its noise record, family and selective come along
        shipped = pack.presets.list_presets([pack.presets.shipped_presets_dir()])
        text = shipped[text].read_text()
    preset = pack.files.preset_from_text(text)  # what the Schedule Loader hands ProCache Apply
    data = {"text": text, "start_percent": rng[0], "end_percent": rng[1]}
    for key, value in (("steps", steps), ("selective", selective), ("short_run_floor", floor)):
        if value is not None:
            data[key] = value
    got = pack.preview.preview_payload(data)
    want = _run_actions(pack, monkeypatch, preset, steps, selective, rng[0], rng[1], floor)
    assert got["actions"] == want, (data, got)
    assert got["steps"] == len(want) and sum(got["counts"].values()) == len(want)


def test_cases_cover_the_planner_branches(pack):
    """The grid above reaches every rule of the planner: few-step presets, the floor, noise mapping."""
    seen = set()
    for text, steps, selective, rng, floor in _cases():
        if text in SHIPPED:
            text = pack.presets.list_presets([pack.presets.shipped_presets_dir()])[text].read_text()
        data = {"text": text, "start_percent": rng[0], "end_percent": rng[1], "steps": steps,
                "short_run_floor": floor, "selective": selective}
        got = pack.preview.preview_payload({k: v for k, v in data.items() if v is not None})
        seen.add(got["mapping"])
        if got["few_step"]:
            seen.add("few-step")
    assert seen >= {"as written", "noise", "short run", "few-step"}, seen


def test_even_noise_active_range_is_the_step_share():
    """On even noise, the active range of the planner is the old step-share rule i/n in [start, end)."""
    for n in (1, 4, 7, 20):
        for start, end in RANGES:
            assert active_from_noise(even_run_noise(n), start, end) == [start <= i / n < end for i in range(n)]
