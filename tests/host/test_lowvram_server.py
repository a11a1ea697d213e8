"""ProCache on weights loaded the way ``--lowvram`` / ``--novram`` load them.

Honest scope: the flags themselves cannot be tested on this machine. ComfyUI's argument parser puts
``--cpu``, ``--lowvram`` and ``--novram`` in one mutually exclusive group ("argument --lowvram: not
allowed with argument --cpu"), and without ``--cpu`` and without a GPU the host dies importing
``comfy.model_management`` (``torch.cuda.current_device()``: "Found no NVIDIA driver"). Even if it
started, a CPU load device gets ``VRAMState.DISABLED`` and a complete load whatever the flags say
(``comfy.model_management.load_models_gpu``).

What the flags do on a GPU is a partial load, and that is what these tests force, on the normal
``--cpu`` server, with the test node ``ProCacheTestLowVram`` (tests/host_nodes/nodes_lowvram_load.py): the
host's own ``ModelPatcher.load`` gets a small weight budget (30 % of the weights, as ``--lowvram`` would
leave room for; nothing for ``--novram``'s 0.1-byte budget) and offloads the rest, so those layers cast
their weights per call (``comfy_cast_weights``) and apply weight patches on the fly (``LowVramPatch``).
ProCache's cached and reused steps on such layers (no adaLN row slicing there) must give the output of a
normal complete load with the same patches baked into the weights.
"""
from __future__ import annotations

import re

import pytest
import torch

from comfy_client import load_latent

pytestmark = pytest.mark.host

MODES = {"lowvram": 0.3, "novram": 0.0}   # mode -> share of the weights kept resident


def prompt(prefix: str, load_fraction: float) -> dict:
    cond = {"tokens": 8, "dim": 64, "pooled_dim": 768, "scale": 1.0}
    return {
        "flux": {"class_type": "ProCacheTestTinyFlux",
                 "inputs": {"seed": 0, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 64}},
        "lowvram": {"class_type": "ProCacheTestLowVram",
                    "inputs": {"model": ["flux", 0], "load_fraction": load_fraction, "patch_seed": 3}},
        "apply": {"class_type": "ProCacheApply",
                  "inputs": {"model": ["lowvram", 0], "preset": "auto", "short_run_floor": 0}},
        "pos": {"class_type": "ProCacheTestConditioning", "inputs": {"seed": 1, **cond}},
        "neg": {"class_type": "ProCacheTestConditioning", "inputs": {"seed": 2, **cond}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 0, "steps": 5, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }


def run_latent(client, p: dict) -> torch.Tensor:
    entry = client.run(p, timeout=600)
    return load_latent(client.output_files(entry, "latents")[0])


@pytest.mark.parametrize("mode", list(MODES))
def test_procache_flux_with_lowvram_loaded_weights_matches_a_complete_load(comfy_server, mode):
    srv = comfy_server.server
    normal = run_latent(comfy_server, prompt("vram_ref", 1.0))  # complete load, patches baked in
    before = len(srv.log())
    got = run_latent(comfy_server, prompt(f"vram_{mode}", MODES[mode]))
    log = srv.log()[before:]
    part = re.search(r"loaded partially; .*?lowvram patches: (\d+)", log)
    assert part is not None, log[-3000:]                        # the host's low-VRAM load ran
    assert int(part.group(1)) > 0, part.group(0)                # weight patches applied on the fly
    if mode == "novram":
        assert re.search(r"loaded partially; [\d.]+ MB usable, 0\.00 MB loaded", log), part.group(0)
    run_line = next(ln for ln in log.splitlines() if "ProCache [flux] run:" in ln)
    assert re.search(r"[1-9]\d* cached", run_line), run_line    # steps were reused, not all FULL
    torch.testing.assert_close(got, normal, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(got).all()
