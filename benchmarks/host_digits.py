"""Workflows and read-back for the digits demo models running in the real ComfyUI server.

Shared by the in-host quality bench (benchmarks/host_quality.py), `make demo` (scripts/run_demo.py) and
the host test (tests/host/test_demo_digits.py): API-format prompts built from the pack's demo nodes, the
host's KSampler and, per method, ProCache / EasyCache / LazyCache nodes; latents come back through the
host's SaveLatent node and are decoded with the demo's fixed linear map.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch

from .common import digits_module

ROOT = Path(__file__).resolve().parents[1]
MODEL_CHOICE = {"flux": "flux (double + single blocks)", "pixart": "pixart-alpha (cross-attention)"}
PAPER_PRESET = {"flux": "flux-dev-50-paper", "pixart": "pixart-alpha-dpm20-paper"}
CFG = 3.0


def digits_prompt(family: str, *, digits: str = "0123456789", repeat: int = 1, steps: int = 20, cfg: float = CFG,
                  sampler: str = "euler", scheduler: str = "normal", seed: int = 0, denoise: float = 1.0,
                  init_image: str | None = None, procache: dict[str, Any] | None = None,
                  search: dict[str, Any] | None = None, hostcache: tuple[str, float] | None = None,
                  prefix: str = "digits", images: bool = False) -> dict:
    """Text-to-image (or img2img from `init_image`, a file in the server's input folder) with the demo
    digits model, ending in SaveLatent (and, with `images`, Digits Decode + SaveImage).

    procache: {"actions": "FCC..."} or {"preset": name}, optional "selective": {inputs of Selective Compute
    Settings} and "apply": {more inputs of ProCache Apply, e.g. "reuse"}; search: inputs of ProCache Schedule Search (its schedule then feeds ProCache Apply);
    hostcache: ("EasyCache" | "LazyCache", reuse_threshold[, copy_input]); copy_input puts the test node
    ProCacheTestCopyModelInput before the cache node (tests/host_nodes/nodes_copy_model_input.py says why)."""
    batch = len(digits) * repeat
    p: dict[str, dict] = {
        "model": {"class_type": "ProCacheDemoDigitsModel", "inputs": {"model": MODEL_CHOICE[family]}},
        "pos": {"class_type": "ProCacheDemoDigitPrompt", "inputs": {"digits": digits, "repeat": repeat}},
        "neg": {"class_type": "ProCacheDemoDigitPrompt", "inputs": {"digits": "-", "repeat": 1}},
    }
    if init_image is None:
        p["latent"] = {"class_type": "ProCacheDemoEmptyLatent",
                       "inputs": {"model": MODEL_CHOICE[family], "batch_size": batch}}
    else:
        p["load"] = {"class_type": "LoadImage", "inputs": {"image": init_image}}
        p["latent"] = {"class_type": "ProCacheDemoDigitsEncode",
                       "inputs": {"images": ["load", 0], "model": MODEL_CHOICE[family]}}
    model_ref = ["model", 0]
    if procache is not None or search is not None:
        if search is not None:
            p["schedule"] = {"class_type": "ProCacheScheduleSearch", "inputs": {
                "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
                "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
                "target_speedup": 2.0, "budget": 0, "vmin": 1, "vmax": 4, "k": 5, "search_seed": 0,
                "metric": "rel_l2", **search}}
        else:
            p["schedule"] = {"class_type": "ProCacheScheduleLoader", "inputs": {
                "preset": procache.get("preset", PAPER_PRESET[family]), "schedule_text": procache.get("actions", "")}}
        apply_inputs: dict[str, Any] = {"model": ["model", 0], "schedule": ["schedule", 0]}
        sel = (procache or {}).get("selective")
        if sel is not None:
            p["selective"] = {"class_type": "ProCacheSelectiveSettings", "inputs": sel}
            apply_inputs["selective"] = ["selective", 0]
        apply_inputs.update((procache or {}).get("apply", {}))  # e.g. {"reuse": "step"}
        p["apply"] = {"class_type": "ProCacheApply", "inputs": apply_inputs}
        model_ref = ["apply", 0]
    elif hostcache is not None:
        kind, thr = hostcache[:2]
        src = ["model", 0]
        if len(hostcache) > 2 and hostcache[2]:
            p["copy_input"] = {"class_type": "ProCacheTestCopyModelInput", "inputs": {"model": src}}
            src = ["copy_input", 0]
        p["cache"] = {"class_type": kind, "inputs": {"model": src, "reuse_threshold": float(thr),
                                                     "start_percent": 0.15, "end_percent": 0.95, "verbose": False}}
        model_ref = ["cache", 0]
    p["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": model_ref, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
        "denoise": denoise}}
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}}
    if model_ref == ["apply", 0]:
        p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply", 0]}}
    if images:
        p["decode"] = {"class_type": "ProCacheDemoDigitsDecode", "inputs": {"samples": ["sampler", 0], "scale": 4}}
        p["image"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return p


def labels_of(digits: str, repeat: int) -> torch.Tensor:
    return torch.tensor([int(c) for c in digits] * repeat)


def decode_latent_file(path: Path) -> torch.Tensor:
    """(B,1,32,32) images in [-1,1] from a SaveLatent file of a digits-model run."""
    from safetensors.torch import load_file

    ensure_host()
    z = load_file(str(path))["latent_tensor"].float()
    return digits_module().decode(z).clamp(-1, 1)


def ensure_host() -> None:
    """The host's comfy package in this process (the linear map's latent format constants live there)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host()


def exec_seconds(entry: dict) -> float:
    """Execution time as the host reports it (execution_start -> execution_success timestamps, ms)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def stats_text(entry: dict) -> str | None:
    for out in entry.get("outputs", {}).values():
        for t in out.get("text", []) or []:
            if isinstance(t, str) and t.startswith("ProCache ["):
                return t
    return None


def parse_stats(line: str) -> dict:
    """Numbers of a ProCache Stats line: steps per action, model evals, block-evaluation fraction."""
    m = re.search(r"(\d+) steps \((\d+) full / (\d+) selective / (\d+) cached\), (\d+) model evals; "
                  r"blocks computed ([\d.]+)% of full", line)
    if not m:
        raise ValueError(f"unexpected ProCache stats line: {line!r}")
    steps, f, s, c, evals, pct = m.groups()
    return {"steps": int(steps), "full": int(f), "selective": int(s), "cached": int(c), "model_evals": int(evals),
            "block_eval_fraction": float(pct) / 100.0}


def hostcache_skipped(log_text: str, kind: str) -> list[int]:
    """Skipped model calls of every EasyCache / LazyCache run in a server log, in order."""
    return [int(x) for x in re.findall(rf"{kind} - skipped (\d+)/\d+ steps", log_text)]


def sample_metrics(featnet, labels: torch.Tensor, x: torch.Tensor, x_full: torch.Tensor, f_full,
                   f_real) -> dict[str, float]:
    """Decoded samples ``x`` against full compute (PSNR capped at 100 dB, SSIM, Fréchet distance in the
    feature net's space to the full-compute and to the real digits) and the feature net's label accuracy;
    ``f_full`` / ``f_real``: the features of ``x_full`` and of real digits (numpy)."""
    from . import metrics
    from .data import features

    f = features(featnet, x)
    with torch.no_grad():
        acc = (featnet.head(f).argmax(1) == labels).float().mean().item()
    return {"psnr": float(metrics.psnr(x, x_full).clamp(max=100).mean()),
            "ssim": float(metrics.ssim(x, x_full).mean()),
            "fd_full": metrics.frechet_distance(f.numpy(), f_full),
            "fd_real": metrics.frechet_distance(f.numpy(), f_real), "label_acc": acc}
