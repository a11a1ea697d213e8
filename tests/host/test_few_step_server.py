"""Few-step runs through the REAL server: ProCache Apply with default settings on the trained digits
models (the host's own Flux and PixArt-alpha classes, loaded by the demo node the way the host's loader
does), sampled by the host's KSampler at 4 and 8 steps, reuses steps (ProCache Stats counts), names the
few-step preset and the trade in Stats and in the log, gives the same latent on a second run, and the
short-run floor still computes every step below it."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import host_digits as hd  # noqa: E402
from procache_core import few_step  # noqa: E402
from procache_core.presets import load_preset, shipped_presets_dir  # noqa: E402

pytestmark = pytest.mark.host

FLOOR = 4  # the shipped default (procache_core/plan.SHORT_RUN_FLOOR), read independently of the code


def prompt(family: str, steps: int, prefix: str, apply: dict | None = None, cfg: float = 1.0) -> dict:
    """Digits text-to-image, euler / simple; ``apply`` None: no ProCache; {}: ProCache Apply with every
    input at its default (preset auto, the default short_run_floor)."""
    p = hd.digits_prompt(family, digits="0123456789", repeat=1, steps=steps, cfg=cfg, sampler="euler",
                         scheduler="simple", prefix=prefix, procache=None if apply is None else {"actions": "F"})
    if apply is not None:
        del p["schedule"]
        p["apply"]["inputs"] = {"model": ["model", 0], **apply}
    return p


def run(client, p: dict) -> tuple[torch.Tensor, dict]:
    from comfy_client import load_latent

    entry = client.run(p, timeout=900)
    lat = load_latent(client.output_files(entry, "latents")[0])
    st = entry["outputs"].get("stats", {}).get("procache_stats", [None])[0]
    return lat, st


def shipped(name: str):
    return load_preset(shipped_presets_dir() / f"{name}.yaml")


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_default_settings_reuse_steps_at_4_and_8_steps_deterministically(comfy_server, family):
    srv = comfy_server.server
    before = len(srv.log())
    got = {}
    # 4, 8, 4, 8: each run evicts the other from the host's output cache, so every one samples again
    for rnd in (0, 1):
        for steps in (4, 8):
            got.setdefault(steps, []).append(run(comfy_server, prompt(family, steps, f"fs_{family}_{steps}_{rnd}", {})))
    log = srv.log()[before:]
    for steps in (4, 8):
        (lat1, st1), (lat2, st2) = got[steps]
        name = few_step.presets_for(family)[steps]
        want = shipped(name).schedule.to_string()   # euler / simple at its own step count: as written
        assert st1["few_step_preset"] == name and st1["step_actions"] == want, st1
        assert st1["sched_cached"] == want.count("C") >= 1 and st1["sched_full"] == want.count("F")
        assert st1["steps_cached"] == want.count("C") and st1["block_eval_fraction"] < 1.0, st1
        assert f"few-step preset '{name}' ({want}), {want.count('C')} of {steps} steps reused" in st1["line"]
        assert "quality traded for speed" in st1["line"] and "dB" in st1["line"]
        assert torch.equal(lat1, lat2), f"{family} {steps} steps: the second run differs"
        assert st2["run_index"] > st1["run_index"]  # really sampled twice
        assert re.search(rf"{steps}-step run: schedule '[\w.-]+' \(\d+ steps\) is made for runs of 10\+ steps; "
                         rf"this run uses the few-step preset '{name}' \({want}\) as written", log), log[-3000:]
    # reuse changed the result (it is not full compute under another name)
    plain, _ = run(comfy_server, prompt(family, 4, f"fs_{family}_plain"))
    assert not torch.equal(plain, got[4][0][0])


def test_floor_computes_every_step_below_it(comfy_server):
    family = "flux"
    plain3, _ = run(comfy_server, prompt(family, 3, "fl_plain3"))
    lat3, st3 = run(comfy_server, prompt(family, 3, "fl_default3", {}))
    assert st3["step_actions"] == "FFF" and st3["mapping"] == "short run" and st3["sched_cached"] == 0, st3
    assert st3["few_step_preset"] is None and f"short run (< {FLOOR} steps)" in st3["line"]
    torch.testing.assert_close(lat3, plain3, rtol=1e-5, atol=1e-6)
    # a floor raised on the node covers a 4-step run too (every step computed, one log line)
    srv = comfy_server.server
    before = len(srv.log())
    _, st4 = run(comfy_server, prompt(family, 4, "fl_floor5", {"short_run_floor": 5}))
    assert st4["step_actions"] == "FFFF" and st4["mapping"] == "short run", st4
    assert "4 steps is below the short-run floor of 5: every step is computed" in srv.log()[before:]
    # floor 0: the 3-step run follows the 4-step preset carried onto its noise levels
    _, st0 = run(comfy_server, prompt(family, 3, "fl_floor0", {"short_run_floor": 0}))
    assert st0["few_step_preset"] == few_step.presets_for(family)[4] and "C" in st0["step_actions"], st0


def test_schedule_written_for_few_steps_is_not_replaced(comfy_server):
    """A typed 8-step schedule on an 8-step run runs as written, no few-step preset involved."""
    p = prompt("flux", 8, "fl_typed", {})
    p["schedule"] = {"class_type": "ProCacheScheduleLoader", "inputs": {"preset": "flux-28-balanced",
                                                                         "schedule_text": "FFCFFCFF"}}
    p["apply"]["inputs"]["schedule"] = ["schedule", 0]
    _, st = run(comfy_server, p)
    assert st["step_actions"] == "FFCFFCFF" and st["few_step_preset"] is None and st["mapping"] == "as written", st
