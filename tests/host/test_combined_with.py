"""ProCache together with what users combine it with, through the real server.

* A model whose linears are a quantized-style op (int8 weights dequantized in forward, not a torch
  Linear, as GGUF / int8 packs install them): ProCache runs, gives finite output equal to the same
  model without ProCache on an all-FULL schedule, and logs which adaLN layers it could not split.
* The host's TorchCompileModel (CPU inductor) before ProCache Apply: torch.compile captures a bounded
  number of graphs (counted with torch._dynamo's counters in the server), longer runs compile nothing
  new beyond the host's own one recompile for a new step count, and the output matches the uncompiled
  run.
"""
from __future__ import annotations

import json

import pytest
import torch

from comfy_client import load_latent

pytestmark = pytest.mark.host


def flux_prompt(model: dict, prefix: str, procache: dict | None = None, steps: int = 3) -> dict:
    p = {
        "model": model,
        "pos": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 1, "tokens": 8, "dim": 64, "pooled_dim": 768, "scale": 1.0}},
        "neg": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 2, "tokens": 8, "dim": 64, "pooled_dim": 768, "scale": 1.0}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 0, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }
    if procache is not None:
        p["apply"] = {"class_type": "ProCacheApply", "inputs": {"model": ["model", 0], **procache}}
        p["sampler"]["inputs"]["model"] = ["apply", 0]
    return p


def latent(client, prompt) -> torch.Tensor:
    entry = client.run(prompt, timeout=600)
    return load_latent(client.output_files(entry, "latents")[0])


INT8 = {"class_type": "ProCacheTestTinyFluxInt8", "inputs": {"seed": 0}}


def test_quantized_style_linears_run_and_are_named_in_the_log(comfy_server):
    srv = comfy_server.server
    before = len(srv.log())
    # short_run_floor 0: a 3-step run would otherwise compute every step (the short-run rule)
    cached = latent(comfy_server, flux_prompt(INT8, "q8_auto", {"preset": "auto", "short_run_floor": 0}))
    log = srv.log()[before:]
    assert torch.isfinite(cached).all()
    line = next((ln for ln in log.splitlines() if "adaLN layers are not split" in ln), None)
    assert line is not None, log[-3000:]
    # 2 double blocks x (img, txt) + 2 single blocks, every one an Int8Linear
    assert "6 of 6 adaLN layers" in line and "Int8Linear is not a torch Linear" in line, line
    # an all-FULL schedule through the same patched blocks reproduces the model without ProCache
    plain = latent(comfy_server, flux_prompt(INT8, "q8_plain"))
    sched = {"class_type": "ProCacheScheduleLoader", "inputs": {"preset": "flux-28-balanced", "schedule_text": "FFF"}}
    full = flux_prompt(INT8, "q8_full", {"schedule": ["sched", 0]})
    full["sched"] = sched
    got = latent(comfy_server, full)
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)
    assert (cached - plain).abs().max() > 0  # the auto preset did reuse something


TINY_FLUX = {"class_type": "ProCacheTestTinyFlux",
             "inputs": {"seed": 0, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 64}}


def counters(client, reset: bool = False) -> dict:
    entry = client.run({"c": {"class_type": "ProCacheTestCompileCounters", "inputs": {"reset": reset}}}, timeout=60)
    return json.loads(entry["outputs"]["c"]["text"][0])


def graphs(client) -> int:
    return counters(client).get("stats", {}).get("unique_graphs", 0)


def compiled_prompt(prefix: str, steps: int, compile_: bool) -> dict:
    # short_run_floor 0: the short runs below follow the schedule (cached steps), not all-FULL
    p = flux_prompt(TINY_FLUX, prefix, {"preset": "auto", "short_run_floor": 0}, steps=steps)
    if compile_:
        p["compile"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["model", 0], "backend": "inductor"}}
        p["apply"]["inputs"]["model"] = ["compile", 0]
    return p


def test_torch_compile_model_compiles_a_bounded_number_of_times_and_matches(comfy_server):
    """TorchCompileModel (CPU inductor) before ProCache Apply.

    ProCache's patched blocks run outside the compiled graph (``outside_compile``): before that, dynamo
    guarded on ProCache's per-step Python state and compiled 44 graphs for 4 steps, more with every step.
    Their branch maths is compiled again as functions of (block, tensors), one graph per kind of branch.
    Now the count is fixed by the model: the host itself recompiles once for a new step count (the
    length of ``transformer_options['sample_sigmas']`` becomes dynamic; the same happens without
    ProCache), after that longer runs compile nothing new. ~1 min on 2 cores, almost all inductor."""
    srv = comfy_server.server
    counters(comfy_server, reset=True)
    before = len(srv.log())
    first = latent(comfy_server, compiled_prompt("tc_4", 4, True))
    log = srv.log()[before:]
    n4 = graphs(comfy_server)
    # 9 for the model around ProCache's blocks (the unpatched tiny Flux alone: 20) + a few for the Flux
    # branch maths compiled with the host's settings (adapters/compiled.py; one per kind of branch graph)
    assert 1 <= n4 <= 30, counters(comfy_server)
    assert "patched blocks run outside the compiled graph, their branch maths compiled" in log, log[-3000:]
    run_line = next(ln for ln in log.splitlines() if "ProCache [flux] run:" in ln)
    assert "0 cached" not in run_line, run_line  # the run reused features, not an all-FULL run
    latent(comfy_server, compiled_prompt("tc_6", 6, True))
    n6 = graphs(comfy_server)
    assert n6 - n4 <= 1, (n4, n6)  # at most the host's one sigma-length recompile
    again = latent(comfy_server, compiled_prompt("tc_12", 12, True))
    assert graphs(comfy_server) == n6, (n4, n6, counters(comfy_server))  # twice the steps, nothing new
    eager = latent(comfy_server, compiled_prompt("tc_eager", 4, False))
    torch.testing.assert_close(first, eager, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(again).all()
