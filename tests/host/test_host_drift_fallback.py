"""A ComfyUI whose blocks changed: ProCache verifies its adapter, warns once and falls back safely.

Through the REAL server, with ProCacheTestDriftModel (tests/host_nodes/nodes_drifted_blocks.py) standing in for a
future host: it reloads a tiny PixArt (object-patched blocks) or SD3 (``dit`` replace patches) through the
host's loader and turns its blocks into subclasses that either compute something else (``scale``: the
residual update times 1.25) or renamed an attribute the adapter reads (``rename``: an AttributeError in
the adapter). For each: one warning line naming family, ComfyUI version, block class and what differed;
the all-FULL run equals the same graph without ProCache bit for bit; the next run of that MODEL uses the
model-level fallback (Stats: ``[generic]``), exact when all-FULL; a caching schedule on the fallback runs.
"""
from __future__ import annotations

import copy
import re

import pytest
import torch

from comfy_client import COMFY_DIR, load_latent
from workflows import PIXART_ALPHA, add_procache, sample_and_save, text_conditioning

MODELS = {
    "pixart": ({"class_type": "UNETLoader", "inputs": {"unet_name": PIXART_ALPHA, "weight_dtype": "default"}},
               (4096, 0), {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
               "PixArtMSBlock (block 0)"),
    "sd3": ({"class_type": "ProCacheTestTinySD3", "inputs": {"seed": 6}},
            (4096, 2048), {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
            "JointBlock (double_block 0)"),
}


def host_version() -> str:
    text = (COMFY_DIR / "comfyui_version.py").read_text()
    return re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text).group(1)


def prompt(family: str, mode: str | None, prefix: str, *, seed: int = 0, actions: str | None = None) -> dict:
    """model [-> drift] [-> ProCache] -> KSampler (4 euler steps, CFG 2) -> SaveLatent (+ Stats)."""
    model, (dim, pooled), latent, _ = MODELS[family]
    p: dict = {
        "model": copy.deepcopy(model),
        **text_conditioning(dim, pooled),
        "latent": copy.deepcopy(latent),
    }
    last = "model"
    if mode is not None:
        p["drift"] = {"class_type": "ProCacheTestDriftModel", "inputs": {"model": ["model", 0], "mode": mode}}
        last = "drift"
    if actions is not None:
        add_procache(p, last, {"actions": actions})
        last = "apply"
    p.update(sample_and_save(last, prefix=prefix, seed=seed))
    if actions is not None:
        p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply", 0]}}
    return p


def run(client, p) -> tuple[torch.Tensor, str | None]:
    entry = client.run(p, timeout=900)
    files = client.output_files(entry, "latents")
    assert len(files) == 1, entry.get("outputs")
    texts = [str(t) for o in entry["outputs"].values() for t in (o.get("text") or []) if str(t).startswith("ProCache [")]
    return load_latent(files[0]), (texts[0] if texts else None)


def warnings_for(log: str, block_class: str) -> list[str]:
    return [ln for ln in log.splitlines() if "block adapter does not match ComfyUI" in ln and block_class in ln]


@pytest.mark.parametrize("family,mode", [("pixart", "scale"), ("pixart", "rename"), ("sd3", "scale"), ("sd3", "rename")])
def test_drifted_host_block_falls_back(comfy_server, family, mode):
    block_class = f"Drift{mode.title()}{MODELS[family][3]}"
    tag = f"drift_{family}_{mode}"
    plain0, _ = run(comfy_server, prompt(family, mode, f"{tag}_plain0", seed=0))
    plain1, _ = run(comfy_server, prompt(family, mode, f"{tag}_plain1", seed=1))
    assert torch.isfinite(plain0).all() and not torch.equal(plain0, plain1)

    # 1. first run: the check finds the drift, warns once, and the image is the host's own
    full0, text = run(comfy_server, prompt(family, mode, f"{tag}_full0", seed=0, actions="FFFF"))
    assert torch.equal(full0, plain0), f"max {(full0 - plain0).abs().max().item()}"
    log = comfy_server.server.log()
    lines = warnings_for(log, block_class)
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"the {family} block adapter" in line and f"ComfyUI {host_version()}" in line, line
    if mode == "scale":
        m = re.search(r"relative difference ([\d.e+-]+) \(limit 1e-05\)", line)
        assert m and float(m.group(1)) > 1e-3, line
    else:
        attr = "scale_shift_table" if family == "pixart" else "x_block"
        assert "AttributeError in the adapter" in line and attr in line, line
    assert text is not None and f"ProCache [{family}] run: 4 steps" in text and "failed verification" in text, text

    # 2. the next run of the same patched MODEL: the model-level fallback, exact when all-FULL
    full1, text = run(comfy_server, prompt(family, mode, f"{tag}_full1", seed=1, actions="FFFF"))
    assert torch.equal(full1, plain1), f"max {(full1 - plain1).abs().max().item()}"
    assert text is not None and text.startswith("ProCache [generic] run: 4 steps") and \
        "model-level fallback" in text, text

    # 3. a caching schedule on a new Apply: the fallback from the start (Apply consults the record)
    cached, text = run(comfy_server, prompt(family, mode, f"{tag}_cached", seed=0, actions="FCFC"))
    assert text is not None and text.startswith("ProCache [generic] run: 4 steps (2 full / 0 selective / 2 cached)"), text
    err = float((cached.double() - plain0.double()).norm() / plain0.double().norm())
    assert torch.isfinite(cached).all() and 0.0 < err < 1.0, err
    log = comfy_server.server.log()
    assert "model-level fallback because the %s block adapter failed verification" % family in log
    assert len(warnings_for(log, block_class)) == 1   # one warning per process and host code


def test_unchanged_host_block_verifies(comfy_server):
    """Control: the same graph without the drift verifies, keeps the block adapter and stays exact."""
    plain, _ = run(comfy_server, prompt("pixart", None, "undrifted_plain"))
    full, text = run(comfy_server, prompt("pixart", None, "undrifted_full", actions="FFFF"))
    assert torch.equal(full, plain)
    assert text is not None and text.startswith("ProCache [pixart] run: 4 steps") and "verification" not in text, text
    log = comfy_server.server.log()
    assert "ProCache: pixart block adapter verified against ComfyUI" in log
    assert not [ln for ln in log.splitlines() if "block adapter does not match" in ln and "Drift" not in ln]
