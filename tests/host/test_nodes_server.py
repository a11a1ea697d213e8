"""The pack's nodes through the REAL ComfyUI server (POST /prompt, /history, /interrupt).

Tiny seeded PixArt-α (4 blocks, hidden 1152) at 512 px (the host's PixArt pos-embed divides by zero
at 256 px), few steps, so each run takes seconds on two CPU cores. Latents are compared through the
host's SaveLatent files. ProCache runs are made to re-execute (the host caches node outputs by
input signature) by spelling the same schedule differently ("FCSF" vs "F C S F": spaces are ignored).
"""
from __future__ import annotations

import re
import time

import pytest
import torch

from comfy_client import PromptError, load_latent
from workflows import PIXART_ALPHA, add_procache, pixart_prompt

SEL = {"enabled": True, "depth_fraction": 0.5, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
       "w_output_norm": 0.25, "w_spatial": 0.5}
# relative L2 of "FCSF" (selective on the deeper half) vs uncached, 4 euler steps, cfg 2, 512 px:
# measured 0.0022 on this tiny model; bound with ~4.5x margin.
REL_L2_BOUND = 0.01


def latent_of(client, entry) -> torch.Tensor:
    files = client.output_files(entry, "latents")
    assert len(files) == 1, entry.get("outputs")
    return load_latent(files[0])


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def with_stats(p: dict) -> dict:
    p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply", 0]}}
    return p


def stats_text(entry: dict) -> str:
    for out in entry.get("outputs", {}).values():
        for t in out.get("text", []) or []:
            if isinstance(t, str) and t.startswith("ProCache ["):
                return t
    raise AssertionError(f"no ProCache Stats text in {entry.get('outputs')}")


def error_of(client, prompt: dict) -> str:
    entry = client.run(prompt, timeout=600, raise_on_error=False)
    assert entry["status"]["status_str"] == "error", entry["status"]
    msgs = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    assert msgs, entry["status"]
    return msgs[0]["exception_message"]


@pytest.fixture(scope="module")
def uncached(comfy_server):
    return latent_of(comfy_server, comfy_server.run(pixart_prompt(steps=4, prefix="uncached4"), timeout=900))


@pytest.fixture(scope="module")
def cached_fcsf(comfy_server):
    p = with_stats(pixart_prompt(steps=4, prefix="fcsf", procache={"actions": "FCSF", "selective": SEL}))
    entry = comfy_server.run(p, timeout=900)
    return latent_of(comfy_server, entry), entry


def test_object_info_io(comfy_server):
    info = comfy_server.object_info()
    loader = info["ProCacheScheduleLoader"]
    assert loader["output"] == ["PROCACHE_SCHEDULE", "STRING"]
    presets = loader["input"]["required"]["preset"]
    names = presets[1]["options"] if isinstance(presets[1], dict) and "options" in presets[1] else presets[0]
    assert "pixart-alpha-dpm20-paper" in names
    assert "wins" in loader["input"]["required"]["schedule_text"][1]["tooltip"]
    sel = info["ProCacheSelectiveSettings"]
    assert sel["output"] == ["PROCACHE_SELECTIVE"]
    assert set(sel["input"]["required"]) == {"enabled", "depth_fraction", "ratio", "w_staleness", "w_input_change",
                                             "w_output_norm", "w_spatial"}
    # a new settings node has selective steps off: per unit of compute, more full steps did better
    assert sel["input"]["required"]["enabled"][1]["default"] is False
    app = info["ProCacheApply"]
    assert app["output"] == ["MODEL"]
    assert set(app["input"]["required"]) == {"model"}
    assert set(app["input"]["optional"]) == {"schedule", "selective", "start_percent", "end_percent", "preset",
                                             "short_run_floor", "cache_device", "cache_mode", "cache_dtype", "reuse"}
    assert info["ProCacheStats"]["output_node"] is True


def test_all_full_schedule_is_bitwise_equal_to_no_procache(comfy_server, uncached):
    entry = comfy_server.run(with_stats(pixart_prompt(steps=4, prefix="ffff", procache={"actions": "FFFF"})),
                             timeout=900)
    assert torch.equal(latent_of(comfy_server, entry), uncached)
    assert "(4 full / 0 selective / 0 cached)" in stats_text(entry)


def test_schedule_saves_block_evaluations_and_stays_close(comfy_server, uncached, cached_fcsf):
    lat, entry = cached_fcsf
    err = rel_l2(lat, uncached)
    print(f"rel L2 FCSF vs uncached: {err:.5f}")
    assert 0.0 < err < REL_L2_BOUND, err
    text = stats_text(entry)
    assert "(2 full / 1 selective / 1 cached)" in text
    m = re.search(r"blocks computed ([\d.]+)% of full \(([\d.]+) of (\d+) block evals saved\)", text)
    assert m and float(m.group(1)) < 60.0 and float(m.group(2)) > 0, text
    assert int(re.search(r"(\d+) tokens recomputed", text).group(1)) > 0
    assert re.search(r"ProCache \[pixart\] run: 4 steps .*sampling [\d.]+ s", comfy_server.server.log())


def test_interrupt_then_next_run_equals_fresh_run(comfy_server, cached_fcsf):
    fresh, _ = cached_fcsf
    long = pixart_prompt(steps=12, prefix="interrupted", procache={"actions": "FCCCCCCCCCCF", "selective": SEL})
    pid = comfy_server.queue(long)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is sampling
        if "ProCache: applied" in comfy_server.server.log().split("interrupted")[-1] or \
                comfy_server.queue_state().get("queue_running"):
            break
        time.sleep(0.2)
    time.sleep(3.0)
    comfy_server.interrupt()
    entry = comfy_server.wait(pid, timeout=600, raise_on_error=False)
    assert entry["status"]["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    again = comfy_server.run(pixart_prompt(steps=4, prefix="after_interrupt",
                                           procache={"actions": "F C S F", "selective": SEL}), timeout=900)
    assert torch.equal(latent_of(comfy_server, again), fresh)
    assert "ProCache [pixart] interrupted after" in comfy_server.server.log()


def test_schedule_length_differs_from_steps_is_remapped_and_logged(comfy_server):
    # 12 steps: a run of fewer than 10 would take a few-step preset instead (tests/host/test_few_step_server.py)
    p = with_stats(pixart_prompt(steps=12, prefix="remap", cfg=1.0, procache={"preset": "pixart-alpha-dpm20-paper"}))
    entry = comfy_server.run(p, timeout=900)
    log = comfy_server.server.log()
    assert re.search(r"ProCache: schedule 'pixart-alpha-dpm20-paper' has 20 steps but the sampler runs 12; "
                     r"remapped to F[FCS]{11}", log), log[-3000:]
    assert "schedule remapped 20->12 steps" in stats_text(entry)


def test_malformed_schedule_text_errors_in_history(comfy_server):
    p = pixart_prompt(steps=2, prefix="bad", procache={"actions": "FCXQ"})
    msg = error_of(comfy_server, p)
    assert "schedule_text" in msg and "'X'" in msg
    assert comfy_server.get("/system_stats").ok


def test_schedule_not_starting_with_full_errors(comfy_server):
    msg = error_of(comfy_server, pixart_prompt(steps=2, prefix="bad2", procache={"actions": "CF"}))
    assert "schedule_text" in msg and "F" in msg


def test_out_of_range_ratio_errors_in_history(comfy_server):
    p = pixart_prompt(steps=2, prefix="badratio", procache={"actions": "FC", "selective": dict(SEL, ratio=1.5)})
    msg = error_of(comfy_server, p)
    assert "'ratio'" in msg and "1.5" in msg
    p = pixart_prompt(steps=2, prefix="baddepth", procache={"actions": "FC", "selective": dict(SEL, depth_fraction=-0.1)})
    assert "'depth_fraction'" in error_of(comfy_server, p)
    assert comfy_server.get("/system_stats").ok


def test_bad_percent_range_errors(comfy_server):
    p = pixart_prompt(steps=2, prefix="badrange", procache={"actions": "FC",
                                                          "apply": {"start_percent": 0.8, "end_percent": 0.2}})
    assert "'start_percent'" in error_of(comfy_server, p)


def test_two_applies_batch2_and_resolution_change(comfy_server):
    """Apply twice on one chain (the later wins), batch 2, then another resolution with the same model."""
    p = pixart_prompt(steps=2, width=512, height=576, batch=2, cfg=1.0, prefix="twice", procache={"actions": "FF"})
    p["apply2"] = {"class_type": "ProCacheApply", "inputs": {"model": ["apply", 0], "schedule": ["schedule2", 0]}}
    p["schedule2"] = {"class_type": "ProCacheScheduleLoader",
                      "inputs": {"preset": "pixart-alpha-dpm20-paper", "schedule_text": "FC"}}
    p["sampler"]["inputs"]["model"] = ["apply2", 0]
    p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply2", 0]}}
    entry = comfy_server.run(p, timeout=900)
    lat = latent_of(comfy_server, entry)
    assert lat.shape == (2, 4, 72, 64) and torch.isfinite(lat).all()
    assert "(1 full / 0 selective / 1 cached)" in stats_text(entry)


def test_ksampler_advanced_and_custom_advanced(comfy_server):
    p = pixart_prompt(steps=4, cfg=1.0, prefix="adv", procache={"actions": "FCFC", "apply": {"short_run_floor": 0}})
    s = p["sampler"]["inputs"]
    p["sampler"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": s["model"], "positive": s["positive"], "negative": s["negative"], "latent_image": s["latent_image"],
        "add_noise": "enable", "noise_seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "normal", "start_at_step": 0, "end_at_step": 3, "return_with_leftover_noise": "disable"}}
    p = with_stats(p)
    entry = comfy_server.run(p, timeout=900)
    # 3 of 4 steps run: the 4-letter schedule is remapped to 3 steps
    assert "schedule remapped 4->3 steps" in stats_text(entry)

    q = pixart_prompt(steps=3, cfg=2.0, prefix="custom", procache={"actions": "FCF"})
    q.pop("sampler")
    q.update({
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["apply", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "cfg": 2.0}},
        "ksel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "heun"}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["apply", 0], "scheduler": "normal",
                                                             "steps": 3, "denoise": 1.0}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "sampler": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ksel", 0], "sigmas": ["sched", 0],
            "latent_image": ["latent", 0]}},
    })
    entry = comfy_server.run(with_stats(q), timeout=900)
    text = stats_text(entry)
    # heun: 2 model evaluations per step except the last; extra evaluations reuse their step's action
    assert "3 steps (2 full / 0 selective / 1 cached), 5 model evals" in text, text


def test_stats_node_without_procache_says_so(comfy_server):
    p = pixart_prompt(steps=1, cfg=1.0, prefix="nostats")
    p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["unet", 0]}}
    entry = comfy_server.run(p, timeout=600)
    texts = [t for o in entry["outputs"].values() for t in (o.get("text") or [])]
    assert any("not applied" in t for t in texts), texts


def _check_structure(prompt: dict, info: dict) -> None:
    for nid, node in prompt.items():
        ct = node["class_type"]
        assert ct in info, f"{nid}: unknown node {ct}"
        spec = info[ct]["input"]
        required = set(spec.get("required", {}))
        known = required | set(spec.get("optional", {}))
        assert required <= set(node["inputs"]), f"{nid} ({ct}) misses {required - set(node['inputs'])}"
        assert set(node["inputs"]) <= known, f"{nid} ({ct}) has unknown inputs {set(node['inputs']) - known}"
        for name, val in node["inputs"].items():
            if isinstance(val, list) and len(val) == 2 and isinstance(val[1], int):
                assert str(val[0]) in prompt, f"{nid}.{name} links to missing node {val[0]}"


def test_example_workflows_match_object_info(comfy_server):
    import json
    from pathlib import Path

    info = comfy_server.object_info()
    folder = Path(__file__).resolve().parents[2] / "api_workflows"
    flux = json.loads((folder / "flux_dev_procache.api.json").read_text())
    _check_structure(flux, info)  # needs real Flux weights to run; structure only
    assert flux["schedule"]["inputs"]["preset"] in info["ProCacheScheduleLoader"]["input"]["required"]["preset"][1]["options"]
    _check_structure(json.loads((folder / "pixart_alpha_procache.api.json").read_text()), info)


def test_pixart_example_workflow_runs(comfy_server):
    import json
    from pathlib import Path

    p = json.loads((Path(__file__).resolve().parents[2] / "api_workflows" / "pixart_alpha_procache.api.json").read_text())
    p["sampler"]["inputs"]["steps"] = 3  # keep CPU time small; the 20-step preset is remapped
    for k in ("vae", "decode", "image"):
        p.pop(k, None)
    entry = comfy_server.run(p, timeout=900)
    assert entry["status"]["status_str"] == "success"
