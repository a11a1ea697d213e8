"""Flux.2 klein, Qwen-Image layered and Chroma Radiance in process, on the tiny networks the server test
uses (tests/host_nodes/tiny_family_variants.py): detected as their family, all-FULL through the adapter equals
the unpatched network bit for bit, and the cache size estimate equals the bytes the cache then holds,
exactly (the server test compares them at the log's 0.1 MiB), full and light cache, on the inputs where
a layout could go wrong: klein's prompt padded to 512 tokens, layered's layer axis and 5-D reference
latents, Radiance's pixel sizes past a multiple of its 16-pixel patch. A variant the host lacks is skipped.
"""
from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch

from _families import patched_run
from _inprocess import load_pack

load_pack()
from procache_pack.nodes import memory_bridge as MB  # noqa: E402
from procache_pack.procache_core.memory import CacheMemory  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "procache_test_nodes_families_variants", Path(__file__).resolve().parents[1] / "host_nodes" / "nodes_tiny_families.py")
NF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(NF)

FAMILY = {"flux2_klein": "flux2", "qwen_image_layered": "qwen_image", "chroma_radiance": "chroma"}
LABEL = {"flux2_klein": "Flux.2 klein (klein text encoder: ComfyUI 0.29)",
         "qwen_image_layered": "Qwen-Image layered (use_additional_t_cond: ComfyUI 0.8 and later)",
         "chroma_radiance": "Chroma Radiance"}
CTX = 6   # prompt tokens of the seeded inputs

# variant -> input shapes (batch 2: the two CFG halves of one stream) and reference latents
CASES = [
    ("flux2_klein", (2, 128, 8, 8), None),
    ("flux2_klein", (2, 128, 6, 12), None),
    ("qwen_image_layered", (2, 16, 4, 8, 8), (2, 16, 1, 6, 10)),   # 3 layers + the composite
    ("qwen_image_layered", (2, 16, 2, 7, 10), (2, 16, 1, 12, 6)),  # odd height: padded to 8
    ("chroma_radiance", (2, 3, 64, 64), None),
    ("chroma_radiance", (2, 3, 38, 70), None),   # padded to 48 x 80: 3 x 5 tokens
]


def _host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "?"


def _call(shape: tuple, ref: tuple | None):
    def call(variant: str, dm, to: dict):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(*shape, generator=g)
        t = torch.full((shape[0],), 0.5)
        ctx = torch.randn(shape[0], CTX, 48, generator=g)
        with torch.no_grad():
            if variant == "flux2_klein":  # padded in front to 512 tokens, as the host's model_base.Flux2 does
                return dm(x, t, torch.nn.functional.pad(ctx, (0, 0, 512 - CTX, 0)), transformer_options=to)
            if variant == "qwen_image_layered":
                return dm(x, t, ctx, ref_latents=[torch.randn(*ref, generator=g)], transformer_options=to)
            return dm(x, t, ctx, guidance=torch.zeros(shape[0]), transformer_options=to)
    return call


def _estimate(adapter, run, shape: tuple, variant: str, ref: tuple | None):
    """memory_bridge.estimate as the sampler sees it: the conditioning's prompt (before the host's padding)
    and reference latents, one CFG stream, float32."""
    cond = {"cross_attn": torch.zeros(1, CTX, 48)}
    if ref is not None:
        cond["reference_latents"] = [torch.zeros(1, *ref[1:])]
    state = types.SimpleNamespace(config=types.SimpleNamespace(adapter=adapter, memory_request=MB.MemoryRequest()),
                                  run=run, memory_estimate=None, model_patcher=None)
    model = types.SimpleNamespace(manual_cast_dtype=None, get_dtype=lambda: torch.float32)
    guider = types.SimpleNamespace(conds={"positive": [cond]}, cfg=1.0, model_patcher=types.SimpleNamespace(model=model))
    return MB.estimate(state, guider, shape)


@pytest.mark.parametrize("variant,shape,ref", CASES, ids=[f"{v}-{'x'.join(map(str, s[2:]))}" for v, s, _ in CASES])
def test_variant_exact_and_estimate(variant, shape, ref):
    if variant not in NF.TINY:
        pytest.skip(f"ComfyUI {_host_version()} has no {LABEL[variant]}")
    dm = NF.TINY[variant][1](seed=1)[0].eval()
    call = _call(shape, ref)
    plain = call(variant, dm, {})
    outs, _ = patched_run(variant, dm, "FF", call, expect=FAMILY[variant])
    assert torch.equal(outs[0], plain) and torch.equal(outs[1], plain)
    held = {}
    for light in (False, True):
        outs, run = patched_run(variant, dm, "FCSC", call, depth_fraction=0.5, memory=CacheMemory(light=light),
                                expect=FAMILY[variant])
        assert run.stats.steps_selective == 1 and all(o.isfinite().all() for o in outs)
        est = _estimate(run.adapter, run, shape, variant, ref)
        held[light] = run.stats.peak_cache_bytes
        assert (est.light_bytes if light else est.full_bytes) == held[light] > 0, (variant, light, est, held)
    assert held[True] < held[False]
