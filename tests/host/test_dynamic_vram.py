"""Cache placement, the loader hint and the lazy adaLN under the host's memory managers, in process on CPU.

Dynamic VRAM (ComfyUI 0.16+, comfy-aimdo) runs on CUDA only; here its code paths are exercised at the
level of the host's own functions: ``ModelPatcher.get_free_memory`` (free + evictable) with only the
device queries answered (``model_management.get_free_memory`` and aimdo's ``vbars_analyze``, plus the
``aimdo_enabled`` switch main.py sets), the host's real ``prepare_sampling`` -> ``load_models_gpu`` for the
hint, and layers the host's own low-VRAM loader marks cast-on-the-fly (``ModelPatcher.load`` with a
weight budget) for the adaLN slicing. What only CUDA shows is in benchmarks/gpu_checks.py.
"""
from __future__ import annotations

import importlib
import logging

import pytest
import torch

from _inprocess import load_pack

load_pack()
from procache_pack.nodes import memory_bridge as MB  # noqa: E402
from procache_pack.nodes import runtime_bridge as RB  # noqa: E402
from procache_pack.nodes.adapters import modulation as MOD  # noqa: E402
from procache_pack.procache_core import modulation as CORE_MOD  # noqa: E402
from procache_pack.procache_core.memory import room_beside_weights  # noqa: E402

from _families import patched_run  # noqa: E402
from test_multigpu_split import _apply, _host_version, _sample, tiny_flux_patcher  # noqa: E402

MiB = 2 ** 20


def _state_for(mp, full_mib: int, placement: str = "auto"):
    """A run state of a ProCache-applied tiny Flux with a cache estimate of ``full_mib``."""
    import types

    from procache_pack.procache_core.engine import CacheRun
    from procache_pack.procache_core.schedule import Schedule

    config = types.SimpleNamespace(memory_request=MB.MemoryRequest(placement, "full", None))
    est = MB.Estimate(full_mib * MiB, full_mib * MiB // 4, MiB, 2, torch.float32)
    return types.SimpleNamespace(config=config, run=CacheRun(Schedule.from_string("FC"), None, num_blocks=2),
                                 memory_estimate=est, model_patcher=mp)


@pytest.fixture
def device_queries(monkeypatch):
    """Answers the two device queries: plain free memory (``model_management.get_free_memory``) and the
    memory aimdo could evict (``comfy_aimdo.model_vbar.vbars_analyze``, on hosts that have it)."""
    import comfy.model_management as mm

    answers = {"free": 0, "evictable": 0}
    real = mm.get_free_memory

    def free(dev=None, torch_free_too=False):
        if dev is not None and getattr(dev, "type", None) == "cpu":
            return real(dev, torch_free_too)
        return (answers["free"], answers["free"]) if torch_free_too else answers["free"]

    monkeypatch.setattr(mm, "get_free_memory", free)
    try:
        import comfy.memory_management
        import comfy_aimdo.model_vbar as vbar

        monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", True)  # what main.py sets on CUDA
        monkeypatch.setattr(vbar, "vbars_analyze", lambda device=None, *a: answers["evictable"])
        answers["aimdo"] = True
    except (ImportError, AttributeError):
        answers["aimdo"] = False
    return answers


def _host_counts_evictable(mp) -> bool:
    return hasattr(mp, "get_free_memory")


def test_auto_counts_evictable_memory_as_free(device_queries, caplog):
    mp = tiny_flux_patcher()
    device_queries.update(free=300 * MiB, evictable=700 * MiB)
    state = _state_for(mp, 600)   # does not fit in 0.9 x 300 MiB; fits in 0.9 x (300 + 700) MiB
    with caplog.at_level(logging.INFO, logger="ProCache"):
        MB.decide(state, torch.empty(2, 16, 16, 16, device="meta"))
    if _host_counts_evictable(mp) and device_queries["aimdo"]:
        assert MB.free_device_memory(state, torch.device("meta")) == (1000 * MiB, 700 * MiB)
        assert state.run.memory.placement == "device"
        assert "evicts on demand" in caplog.text
    else:  # ComfyUI 0.3.75 / 0.8.1: no dynamic VRAM, the plain figure as before
        assert not _host_counts_evictable(mp), f"ComfyUI {_host_version()}"
        assert MB.free_device_memory(state, torch.device("meta")) == (300 * MiB, 0)
        assert state.run.memory.placement == "cpu"


def test_auto_still_moves_a_cache_that_fits_nowhere_on_the_device(device_queries):
    mp = tiny_flux_patcher()
    device_queries.update(free=300 * MiB, evictable=200 * MiB)
    state = _state_for(mp, 600)   # above 0.9 x (free + evictable): CPU memory, the run does not run out
    MB.decide(state, torch.empty(2, 16, 16, 16, device="meta"))
    assert state.run.memory.placement == "cpu"


def test_without_aimdo_the_host_figure_is_the_plain_one(device_queries, monkeypatch):
    mp = tiny_flux_patcher()
    if not _host_counts_evictable(mp):
        pytest.skip(f"ComfyUI {_host_version()} has no ModelPatcher.get_free_memory (no dynamic VRAM)")
    import comfy.memory_management

    monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", False)   # dynamic VRAM off (--disable-dynamic-vram)
    device_queries.update(free=300 * MiB, evictable=700 * MiB)
    state = _state_for(mp, 600)
    assert MB.free_device_memory(state, torch.device("meta")) == (300 * MiB, 0)
    MB.decide(state, torch.empty(2, 16, 16, 16, device="meta"))
    assert state.run.memory.placement == "cpu"


def test_room_beside_weights_of_a_dynamic_loader():
    assert room_beside_weights(24 * 1024, 20 * 1024, dynamic=False) == 4 * 1024
    assert room_beside_weights(24 * 1024, 30 * 1024, dynamic=False) < 0     # weights alone do not fit
    assert room_beside_weights(24 * 1024, 30 * 1024, dynamic=True) == 24 * 1024  # streamed on demand


def test_the_hosts_loader_receives_the_hint(monkeypatch):
    """The host's own prepare_sampling -> estimate_memory -> load_models_gpu carries the cache bytes in
    ``memory_required`` / ``minimum_memory_required`` (the figures the loader frees memory for; on 0.29
    a dynamic loader unloads non-dynamic models for them and aimdo evicts the rest on demand)."""
    import comfy.model_management as mm

    seen: list = []
    real = mm.load_models_gpu

    def spy(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, **kw):
        seen.append((memory_required, minimum_memory_required))
        return real(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                    minimum_memory_required=minimum_memory_required, **kw)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    base = tiny_flux_patcher()
    _sample(base, steps=2)
    patched = _apply(base, "FF", cache_device="model device", cache_mode="full")
    assert RB.config_of(patched).memory_request == MB.MemoryRequest("device", "full", None)
    est: list = []
    real_estimate = MB.estimate

    def estimate(*a, **k):
        est.append(real_estimate(*a, **k))
        return est[-1]

    monkeypatch.setattr(MB, "estimate", estimate)
    _sample(patched, steps=2)
    assert len(seen) == 2 and est[0] is not None and est[0].full_bytes > 0
    (req0, min0), (req1, min1) = seen
    assert req1 - req0 == pytest.approx(est[0].full_bytes) and min1 - min0 == pytest.approx(est[0].full_bytes)
    mm.unload_all_models()


def _flux_inputs():
    g = torch.Generator().manual_seed(7)
    return dict(x=torch.randn(2, 16, 16, 16, generator=g), timestep=torch.tensor([0.6, 0.6]),
                context=torch.randn(2, 8, 64, generator=g), y=torch.randn(2, 768, generator=g),
                guidance=torch.tensor([3.5, 3.5]))


def _call(family, dm, to):
    with torch.no_grad():
        return dm(transformer_options=to, **_flux_inputs())


def _count_rows(monkeypatch) -> list:
    n = [0]
    real = CORE_MOD.linear_rows

    def rows(*a, **k):
        n[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(MOD, "linear_rows", rows)
    return n


@pytest.mark.parametrize("how", ["plain", "lowvram", "aimdo"])
def test_lazy_adaln_works_or_steps_aside(how, monkeypatch):
    """plain weights: reused steps slice the gate rows. Layers the host casts per call (its low-VRAM
    loader's ``comfy_cast_weights``; aimdo's ``_v`` allocation, which on a CPU device takes the host's own
    copy path in ``cast_bias_weight``): the full linear through the host's forward, never the rows."""
    mp = tiny_flux_patcher()
    dm = mp.model.diffusion_model
    if how == "lowvram":   # the host's own partial load: layers left to cast on the fly
        mp.load(torch.device("cpu"), lowvram_model_memory=1, force_patch_weights=False, full_load=False)
    lins = [m.lin for b in dm.double_blocks for m in (b.img_mod, b.txt_mod)] + \
        [b.modulation.lin for b in dm.single_blocks]
    if how == "aimdo":
        if "_v" not in __import__("inspect").getsource(__import__("comfy.ops").ops.cast_bias_weight):
            pytest.skip(f"ComfyUI {_host_version()} has no dynamic VRAM layers (comfy-aimdo)")
        for lin in lins:   # what ModelPatcherDynamic.load sets on a layer it stages in aimdo's vbar
            lin.comfy_cast_weights = True
            lin._v = object()
    host = _call("flux", dm, {})
    n = _count_rows(monkeypatch)
    outs, run = patched_run("flux", dm, "FC", _call, ratio=0.0)
    assert torch.equal(outs[0], host)       # computed step: the host's own arithmetic, bit for bit
    reasons = {MOD.why_unsliced(lin) for lin in lins}
    if how == "plain":
        assert n[0] > 0 and reasons == {None}
    else:
        assert n[0] == 0 and None not in reasons
        assert any(("dynamic VRAM" if how == "aimdo" else "cast on the fly") in r for r in reasons)
        ref_mp = tiny_flux_patcher()
        ref, _ = patched_run("flux", ref_mp.model.diffusion_model, "FC", _call, ratio=0.0)
        torch.testing.assert_close(outs[1], ref[1], rtol=1e-5, atol=1e-5)   # same reuse, gates unsliced
    if how == "lowvram":
        mp.detach()
