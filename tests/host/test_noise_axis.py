"""Schedules on the noise axis, through the REAL server (issue #12).

One tiny Flux.1 (host Flux classes, 2 double + 2 single blocks = 6 engine blocks per evaluation at
cfg 1) at 256 px; several sampler chains share one prompt. ProCache Stats' machine-readable summary
gives, per run, the action each step used, the sampler evaluations of each step and each step's noise
position (timestep percent). The expected actions are recomputed here from the preset file alone: the
preset's action at each step's noise position, step 0 always full.
"""
from __future__ import annotations

import bisect
import json
import re

import pytest

from procache_core.presets import load_preset, shipped_presets_dir
from procache_core.schedule import map_by_noise

CTX = 64
BLOCKS = 6                     # engine blocks per evaluation: 2 double (image + text) + 2 single
PRESET = "pixart-alpha-dpm20-paper"
OFF = {"enabled": False, "depth_fraction": 0.25, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
       "w_output_norm": 0.25, "w_spatial": 0.5}


def base(floor: int = 0, preset: str = PRESET) -> dict:
    return {
        "flux": {"class_type": "ProCacheTestTinyFlux",
                 "inputs": {"seed": 5, "depth": 2, "depth_single_blocks": 2, "context_in_dim": CTX}},
        "pos": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 1, "tokens": 8, "dim": CTX, "pooled_dim": 768, "scale": 1.0}},
        "neg": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 2, "tokens": 8, "dim": CTX, "pooled_dim": 768, "scale": 1.0}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "schedule": {"class_type": "ProCacheScheduleLoader", "inputs": {"preset": preset, "schedule_text": ""}},
        "selective": {"class_type": "ProCacheSelectiveSettings", "inputs": dict(OFF)},
        "apply": {"class_type": "ProCacheApply", "inputs": {"model": ["flux", 0], "schedule": ["schedule", 0],
                                                            "selective": ["selective", 0], "short_run_floor": floor}},
    }


def ksampler(p: dict, name: str, sampler: str, steps: int, scheduler: str = "normal", denoise: float = 1.0,
             seed: int = 0) -> None:
    p[name] = {"class_type": "KSampler", "inputs": {
        "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": sampler, "scheduler": scheduler,
        "denoise": denoise}}
    stats(p, name)


def stats(p: dict, sampler_node: str) -> None:
    p["stats_" + sampler_node] = {"class_type": "ProCacheStats",
                                  "inputs": {"samples": [sampler_node, 0], "model": ["apply", 0]}}


def summaries(entry: dict) -> dict[str, dict]:
    out = {}
    for node, o in entry["outputs"].items():
        if node.startswith("stats_") and o.get("procache_stats"):
            out[node[len("stats_"):]] = o["procache_stats"][0]
    return out


def expected_actions(noise: list[float], preset_name: str = PRESET) -> str:
    """The documented mapping (``map_by_noise``, whose rules the core property tests check) with S
    counted as C; the plain lookup must agree wherever the rule and the budget leave it alone."""
    pre = load_preset(shipped_presets_dir() / f"{preset_name}.yaml")
    mapped = map_by_noise(pre.schedule, pre.noise_positions, noise).with_selective(False).to_string()
    assert mapped[0] == "F"
    return mapped


def assert_refreshes_kept(st: dict, preset_name: str = PRESET) -> None:
    """Independent of map_by_noise: every preset refresh inside the run's noise range has a refresh of the
    run within one step of it, and the run's full share is the preset's within one step."""
    pre = load_preset(shipped_presets_dir() / f"{preset_name}.yaml")
    src = list(pre.noise_positions)
    noise, acts = st["noise"], st["step_actions"]
    for i in pre.schedule.full_steps():
        lvl = src[i]
        if not noise[0] - 1e-6 <= lvl <= noise[-2] + 1e-6:
            continue  # outside the run, or inside its last step (no later step of this run to refresh)
        j = max(0, bisect.bisect_right(noise[:-1], lvl + 1e-6) - 1)   # the run step holding that level
        assert "F" in acts[max(0, j - 1):j + 2], (lvl, j, acts)
    lo, hi = noise[0], noise[-1]
    bounds = src + [1.0]
    w = [max(0.0, min(bounds[i + 1], hi) - max(bounds[i], lo)) / (bounds[i + 1] - bounds[i]) for i in range(len(src))]
    share = sum(wi for wi, a in zip(w, pre.schedule) if a.value == "F") / sum(w)
    assert abs(acts.count("F") - share * len(acts)) <= 1, (acts, share)


def block_evals_done(st: dict) -> float:
    """What the run must have computed: every evaluation of a FULL step, nothing else."""
    return BLOCKS * sum(e for a, e in zip(st["step_actions"], st["evals_per_step"]) if a == "F")


# evaluations per step of each multi-evaluation solver with n steps (sigma_n = 0: the last step is Euler)
SOLVERS = {
    "euler": lambda n: [1] * n,
    "heun": lambda n: [2] * (n - 1) + [1],
    "heunpp2": lambda n: [3] * (n - 2) + [2, 1],
    "dpm_2": lambda n: [2] * (n - 1) + [1],
    "dpm_2_ancestral": lambda n: [2] * (n - 1) + [1],
    "dpmpp_sde": lambda n: [2] * (n - 1) + [1],
    "dpmpp_2s_ancestral": lambda n: [2] * (n - 1) + [1],
    "uni_pc": lambda n: [1] * n,
    "res_multistep": lambda n: [1] * n,
}
STEPS = 10  # not fewer: a run of fewer than 10 steps takes a few-step preset in place of PRESET


def test_every_solver_maps_each_evaluation_to_its_step(comfy_server):
    p = base(floor=0)
    for name in SOLVERS:
        ksampler(p, name, name, STEPS)
    entry = comfy_server.run(p, timeout=1200)
    got = summaries(entry)
    assert set(got) == set(SOLVERS), got.keys()
    for name, evals in SOLVERS.items():
        st = got[name]
        assert st["sampler_steps"] == STEPS, (name, st)
        assert st["evals_per_step"] == evals(STEPS), (name, st["evals_per_step"])
        assert st["step_actions"] == expected_actions(st["noise"]), (name, st["step_actions"], st["noise"])
        assert st["block_evals_full"] == BLOCKS * sum(evals(STEPS)), name
        # Heun & co.: each full step is computed once per solver evaluation of that step, never more
        assert st["block_evals_done"] == pytest.approx(block_evals_done(st)), (name, st)
    # the schedule really differs between steps, so a wrong step assignment would change the counts
    assert "C" in got["heun"]["step_actions"] and got["heun"]["step_actions"].count("F") >= 3


def test_denoise_split_samplers_and_custom_sigmas_follow_noise(comfy_server):
    p = base(floor=10)
    ksampler(p, "half", "euler", 20, denoise=0.5)
    common = {"model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "noise_seed": 0,
              "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal"}
    p["adv1"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
        common, latent_image=["latent", 0], add_noise="enable", start_at_step=0, end_at_step=10,
        return_with_leftover_noise="enable")}
    p["adv2"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
        common, latent_image=["adv1", 0], add_noise="disable", start_at_step=10, end_at_step=20,
        return_with_leftover_noise="disable")}
    stats(p, "adv1")
    stats(p, "adv2")
    p.update({
        "karras": {"class_type": "KarrasScheduler",
                   "inputs": {"steps": 12, "sigma_max": 1.0, "sigma_min": 0.02, "rho": 7.0}},
        "ksel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "custom": {"class_type": "SamplerCustom", "inputs": {
            "model": ["apply", 0], "add_noise": True, "noise_seed": 0, "cfg": 1.0, "positive": ["pos", 0],
            "negative": ["neg", 0], "sampler": ["ksel", 0], "sigmas": ["karras", 0], "latent_image": ["latent", 0]}},
    })
    stats(p, "custom")
    entry = comfy_server.run(p, timeout=1200)
    got = summaries(entry)
    assert set(got) == {"half", "adv1", "adv2", "custom"}, got.keys()
    half, a1, a2, cu = got["half"], got["adv1"], got["adv2"], got["custom"]
    # denoise 0.5 starts half-way down the noise range, so it takes the preset's second half, not its start
    assert 0.4 < half["noise"][0] < 0.6 and half["sampler_steps"] == 20
    for st in (half, a1, a2, cu):
        assert st["step_actions"] == expected_actions(st["noise"]), st
        assert_refreshes_kept(st)
        assert st["block_evals_done"] == pytest.approx(block_evals_done(st)), st
    # the split pair: two runs with their own caches, one on each half of the noise range
    assert a1["sampler_steps"] == a2["sampler_steps"] == 10
    assert a1["noise"][0] < 1e-6 and a2["noise"][0] == pytest.approx(a1["noise"][-1])
    assert a1["step_actions"] != a2["step_actions"]
    assert a2["run_index"] != a1["run_index"]


def test_same_preset_refreshes_at_same_noise_levels_across_step_counts(comfy_server):
    """20, 30 and 50 steps of euler/normal and dpmpp_2m/karras: every refresh of the preset has a
    refresh of the run within one step of its noise level."""
    p = base(floor=10)
    runs = [(s, sch, n) for s, sch in (("euler", "normal"), ("dpmpp_2m", "karras")) for n in (20, 30, 50)]
    for s, sch, n in runs:
        ksampler(p, f"{s}_{sch}_{n}", s, n, scheduler=sch)
    entry = comfy_server.run(p, timeout=1800)
    got = summaries(entry)
    for s, sch, n in runs:
        st = got[f"{s}_{sch}_{n}"]
        assert len(st["step_actions"]) == n and st["step_actions"][0] == "F"
        assert st["step_actions"] == expected_actions(st["noise"]), (s, sch, n)
        assert_refreshes_kept(st)


def test_short_run_computes_every_step_with_one_log_line(comfy_server):
    p = base(floor=10)
    ksampler(p, "four", "euler", 4, scheduler="simple")
    p2 = base(floor=0)
    ksampler(p2, "four", "euler", 4, scheduler="simple", seed=1)
    e1 = comfy_server.run(p, timeout=600)
    st = summaries(e1)["four"]
    assert st["step_actions"] == "FFFF" and st["mapping"] == "short run"
    log = comfy_server.server.log()
    assert len(re.findall(r"4 steps is below the short-run floor of 10: every step is computed", log)) == 1
    # asked for on the node: 4 steps are cached, with the few-step preset in place of the 20-step one
    # (procache_core/few_step.py; euler / simple at 4 steps: as written)
    st2 = summaries(comfy_server.run(p2, timeout=600))["four"]
    assert st2["few_step_preset"] == "fewstep-4" and st2["mapping"] == "as written" and "C" in st2["step_actions"], st2
    assert json.dumps(st2)  # the summary is plain JSON
