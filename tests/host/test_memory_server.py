"""Cache placement and the memory-light cache through the REAL server (tiny Flux, CFG batched).

Same graph as test_flux_server.py with cfg 2 (cond and uncond in one batch) and a schedule with a
selective step, so CPU storage must write selective updates back.
"""
from __future__ import annotations

import re

import torch

from test_flux_server import flux_prompt
from workflows import saved_latent, stats_line


# the deeper half of the 6 engine blocks (the text stream of double block 1, both single blocks): its
# token-local MLP recomputes tokens on the S step, the shallower half is what the light cache folds
SELECTIVE = {"enabled": True, "depth_fraction": 0.5, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
             "w_output_norm": 0.25, "w_spatial": 0.5}


def _run(client, prefix: str, actions: str, **apply) -> tuple[torch.Tensor, str]:
    p = flux_prompt(prefix, {"actions": actions, "apply": apply, "selective": SELECTIVE} if actions else None)
    p["sampler"]["inputs"]["cfg"] = 2.0
    entry = client.run(p, timeout=600)
    return saved_latent(client, entry), (stats_line(entry) if actions else "")


def _peak(text: str) -> float:
    m = re.search(r"cache peak ([\d.]+) MiB", text)
    assert m, text
    return float(m.group(1))


def test_cpu_cache_light_cache_and_estimate(comfy_server):
    dev, dev_text = _run(comfy_server, "mem_dev", "FCSF", cache_device="model device", cache_mode="full")
    cpu, cpu_text = _run(comfy_server, "mem_cpu", "FCSF", cache_device="cpu", cache_mode="full")
    assert torch.equal(dev, cpu)                                   # same output wherever the cache lives
    print(dev_text, cpu_text, sep="\n")
    assert "(2 full / 1 selective / 1 cached)" in dev_text and "tokens recomputed" in dev_text, dev_text
    assert not re.search(r", 0 tokens recomputed", dev_text), dev_text
    assert "CPU memory" in cpu_text and re.search(r"\(cpu [\d.]+ MiB; full cache in CPU memory", cpu_text), cpu_text
    assert _peak(dev_text) == _peak(cpu_text) > 0
    log = comfy_server.server.log()
    # the estimate from the Flux block layout, logged before the first step, equals what was held
    est = re.findall(r"ProCache: cache estimate ([\d.]+) MiB full / ([\d.]+) MiB light \(2 rows", log)
    assert est and float(est[-1][0]) == _peak(cpu_text), (est, cpu_text)
    assert "told the model loader about" in log

    plain, _ = _run(comfy_server, "mem_plain", "")
    light_f, _ = _run(comfy_server, "mem_light_ffff", "FFFF", cache_mode="light")
    assert torch.equal(light_f, plain)                             # computed steps are the host's arithmetic
    light, light_text = _run(comfy_server, "mem_light", "FCSF", cache_mode="light")
    print(light_text)
    assert "light cache" in light_text
    assert _peak(light_text) < _peak(dev_text)
    assert float(est[-1][1]) == _peak(light_text), (est, light_text)
    assert not torch.equal(light, dev)                              # shallow blocks keep step-0 gates
    err = float((light.double() - dev.double()).norm() / dev.double().norm())
    assert 0.0 < err < 0.5, err
