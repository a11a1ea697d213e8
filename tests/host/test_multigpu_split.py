"""ProCache under the host's multi-GPU CFG split (ComfyUI 0.29 ``MultiGPU_WorkUnits``), in process on CPU.

The host's own path end to end: ``comfy.multigpu.create_multigpu_deepclones`` (what the node runs: a deep
clone from the loader factory, ``ModelPatcher.deepclone_multigpu``, its callbacks), then
``comfy.sample.sample`` with the host's thread pool evaluating cond and uncond at once in two worker
threads, each on its device's model. The host picks the extra devices from
``model_management.get_all_torch_devices``; on a CPU machine that is one device, so that device query
(only it) is answered with two CPU devices (``cpu`` and ``cpu:0``, distinct keys for the host's pool).

Hosts without the split (0.3.75, 0.8.1) skip, except the per-thread host-call test, which runs everywhere.
"""
from __future__ import annotations

import importlib.util
import threading
import types
from pathlib import Path

import pytest
import torch

from _inprocess import FakePatcher, load_pack

load_pack()
from procache_pack.nodes import adapters as A  # noqa: E402
from procache_pack.nodes import run_context as RC  # noqa: E402
from procache_pack.nodes import runtime_bridge as RB  # noqa: E402
from procache_pack.nodes.apply import ProCacheApply  # noqa: E402
from procache_pack.procache_core.engine import CacheRun  # noqa: E402
from procache_pack.procache_core.presets import Preset  # noqa: E402
from procache_pack.procache_core.schedule import Schedule  # noqa: E402
from procache_pack.procache_core.settings import SelectiveSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except Exception:
        return "?"


def _need_split():
    try:
        import comfy.multigpu  # noqa: F401
        import comfy.model_patcher as mp
    except ImportError:
        pytest.skip(f"ComfyUI {_host_version()} has no multi-GPU CFG split (comfy.multigpu)")
    if not hasattr(mp.ModelPatcher, "deepclone_multigpu"):
        pytest.skip(f"ComfyUI {_host_version()} has no ModelPatcher.deepclone_multigpu")


def _host_params():
    spec = importlib.util.spec_from_file_location("procache_test_tiny_models",
                                                  ROOT / "tests" / "host_nodes" / "tiny_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.host_params


def tiny_flux_patcher(seed: int = 3, disable_dynamic: bool = False):
    """A seeded tiny Flux.1 MODEL as the host's loader builds it (model_base.Flux + ModelPatcher), with the
    loader factory the multi-GPU deep clone rebuilds it from (``cached_patcher_init``)."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    from comfy.ldm.flux.model import Flux, FluxParams

    unet_config = {"image_model": "flux", "guidance_embed": True, "axes_dim": [16, 56, 56], "num_heads": 2,
                   "mlp_ratio": 4.0, "theta": 10000, "out_channels": 16, "qkv_bias": True, "in_channels": 16,
                   "hidden_size": 256, "context_in_dim": 64, "patch_size": 2, "vec_in_dim": 768,
                   "depth": 2, "depth_single_blocks": 2}
    unet_config = _host_params()(FluxParams, unet_config)
    net = Flux(operations=torch.nn, **unet_config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, prm in sorted(net.named_parameters()):
            prm.copy_(torch.randn(prm.shape, generator=gen) / (prm[0].numel() ** 0.5 if prm.ndim >= 2 else 50.0))
    sd = {"model.diffusion_model." + k: v for k, v in net.state_dict().items()}
    config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model(sd, "model.diffusion_model.")
    model.load_model_weights(sd, "model.diffusion_model.")
    mp = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                          offload_device=mm.unet_offload_device())
    mp.cached_patcher_init = (tiny_flux_patcher, (seed,))
    return mp


def _conds(dim: int = 64):
    g = torch.Generator().manual_seed(11)
    pos = [[torch.randn(1, 8, dim, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]
    neg = [[torch.randn(1, 8, dim, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]
    return pos, neg


def _sample(model, steps: int = 6):
    import comfy.sample

    pos, neg = _conds(64 if type(model.model).__name__ == "Flux" else 48)
    latent = torch.zeros(1, 16, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    return comfy.sample.sample(model, noise, steps, 3.0, "euler", "simple", pos, neg, latent, seed=5,
                               disable_pbar=True)


def _apply(model, actions: str, **inputs):
    preset = Preset(name="mgpu-test", schedule=Schedule.from_string(actions), family="any",
                    selective=SelectiveSettings(enabled=False))
    return ProCacheApply.execute(model, schedule=preset, short_run_floor=0, **inputs).args[0]


@pytest.fixture
def two_cpu_devices(monkeypatch):
    """The host's device list answered with two CPU devices (the only input patched)."""
    _need_split()
    import comfy.model_management as mm

    devices = [torch.device("cpu"), torch.device("cpu", 0)]
    monkeypatch.setattr(mm, "get_all_torch_devices", lambda exclude_current=False: list(devices))
    yield devices
    mm.unload_all_models()


def _split(model):
    import comfy.multigpu

    out = comfy.multigpu.create_multigpu_deepclones(model, 2, reuse_loaded=True)
    clones = out.get_additional_models_with_key("multigpu")
    assert [c.load_device for c in clones] == [torch.device("cpu", 0)]
    return out


def _spy_workers(monkeypatch) -> list:
    seen: list = []
    orig = RB.RunState.worker

    def worker(self, device, base_model):
        sub = orig(self, device, base_model)
        if all(s is not sub for s in seen):
            seen.append(sub)
        return sub

    monkeypatch.setattr(RB.RunState, "worker", worker)
    return seen


def _sample_recording_threads(model, model_patchers) -> tuple[torch.Tensor, dict]:
    """``_sample(model)`` with forward hooks on every Linear of each of ``model_patchers``' networks: the
    latent and which threads ran which model's modules (``id(diffusion_model) -> {thread ids}``)."""
    calls: dict = {}
    handles = []
    for mp in model_patchers:
        dm = mp.model.diffusion_model
        for mod in dm.modules():
            if isinstance(mod, torch.nn.Linear):
                def hook(m, inp, out, dm=dm):
                    calls.setdefault(id(dm), set()).add(threading.get_ident())
                handles.append(mod.register_forward_hook(hook))
    try:
        return _sample(model), calls
    finally:
        for h in handles:
            h.remove()


_NF = None


def tiny_z_image_patcher(seed: int = 4, disable_dynamic: bool = False):
    """A seeded tiny Z-Image MODEL (host NextDiT, model_base via supported_models.ZImage): its blocks are
    patched with ``forward`` object patches, which the split's clone must get bound to its own blocks."""
    global _NF
    if _NF is None:
        spec = importlib.util.spec_from_file_location("procache_test_nodes_families_mgpu",
                                                      ROOT / "tests" / "host_nodes" / "nodes_tiny_families.py")
        _NF = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_NF)
    import comfy.supported_models

    name, build = _NF.TINY["z_image"]
    net, cfg = build(seed=seed, context_dim=48)
    mp = _NF.patcher_from_config(getattr(comfy.supported_models, name)(dict(cfg)), net.state_dict())
    mp.cached_patcher_init = (tiny_z_image_patcher, (seed,))
    return mp


def test_all_full_under_the_split_equals_the_host(two_cpu_devices, monkeypatch):
    base = tiny_flux_patcher()
    ref = _sample(_split(base.clone()))                    # the host's split, no ProCache
    workers = _spy_workers(monkeypatch)
    out = _sample(_split(_apply(base, "FFFFFF")))
    assert torch.equal(out, ref)
    assert sorted(str(w.device) for w in workers) == ["cpu", "cpu:0"]
    assert all(w.check is None or not w.check.pending or w.verify_failure is None for w in workers)


def test_cached_split_keeps_one_cache_per_device_on_its_own_modules(two_cpu_devices, monkeypatch):
    base = tiny_flux_patcher()
    single = _sample(_apply(base, "FCFCFC"))                # one device: cond+uncond batched, one cache
    patched = _apply(base, "FCFCFC")
    split = _split(patched)
    clone = split.get_additional_models_with_key("multigpu")[0]
    assert clone.model is not base.model
    workers = _spy_workers(monkeypatch)
    streams: dict = {}
    orig_set_stream = CacheRun.set_stream

    def set_stream(self, key, chunks=1, grid_hw=None, **kw):
        streams.setdefault(id(self), set()).add((key, threading.get_ident()))
        return orig_set_stream(self, key, chunks, grid_hw, **kw)

    monkeypatch.setattr(CacheRun, "set_stream", set_stream)
    out, calls = _sample_recording_threads(split, [split, clone])
    cfg = RB.config_of(patched)
    stats = cfg.log.last_stats
    # one worker state per device, each with its own CacheRun on its own model's modules
    assert sorted(str(w.device) for w in workers) == ["cpu", "cpu:0"]
    runs = {id(w.run) for w in workers}
    assert len(runs) == 2 and set(streams) <= runs and len(streams) == 2
    threads = {}
    for w in workers:
        assert w.dm is (base.model.diffusion_model if str(w.device) == "cpu" else clone.model.diffusion_model)
        keys = {k for k, _ in streams[id(w.run)]}
        threads[str(w.device)] = {t for _, t in streams[id(w.run)]}
        assert len(threads[str(w.device)]) == 1     # one thread per device's cache
        assert len(keys) == 1                         # one CFG stream each (cond on one device, uncond on the other)
    assert threads["cpu"] != threads["cpu:0"]
    # the patched blocks ran each model's own modules, on that device's thread only
    assert calls[id(base.model.diffusion_model)] == threads["cpu"]
    assert calls[id(clone.model.diffusion_model)] == threads["cpu:0"]
    # the cached steps reused: block evaluations saved on both devices, merged in the run's stats
    assert sorted(stats["devices"]) == ["cpu", "cpu:0"] and "one cache per device" in stats["line"]
    assert stats["steps_cached"] == 6 and stats["steps_full"] == 6    # 3 C + 3 F per device
    assert stats["block_evals_saved"] > 0 and stats["forced_full_evals"] == 0
    for w in workers:   # each device's own cache was reused on its cached steps
        assert w.run.stats.steps_cached == 3 and w.run.stats.block_evals_done < w.run.stats.block_evals_full
    # same maths as the single-device run (cond and uncond batched there): float rounding apart
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-4)


def test_split_after_apply_and_apply_after_split_agree(two_cpu_devices):
    base = tiny_flux_patcher()
    a = _sample(_split(_apply(base, "FCFCFC")))
    b = _sample(_apply(_split(base.clone()), "FCFCFC"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_host_block_call_is_per_thread():
    """Two threads in one shared Flux patch object at once each call their own host block (the host's
    block_wrap of their call), never the other thread's: the patch keeps it per thread and per call."""
    from test_adapters_pixart_flux_sd3_wan import tiny_flux

    dm = tiny_flux()
    fp = FakePatcher(dm)
    adapter = A.adapter_for(fp)
    owner = types.SimpleNamespace()
    adapter.install(fp, owner)
    patch = fp.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    barrier = threading.Barrier(2, timeout=20)
    adapter.note_host_block = lambda why: barrier.wait()   # both threads inside the patch at once
    c = 64
    results: dict = {}
    errors: list = []

    def worker(name: str):
        try:
            run = CacheRun(Schedule.from_string("F"), None, num_blocks=adapter.num_blocks)
            run.begin_step(0)
            run.set_stream((0,), 1)
            RC.push_active(types.SimpleNamespace(config=owner, run=run, closed=False, dm=None))
            args = {"img": torch.zeros(1, 4, c), "txt": torch.zeros(1, 2, c),
                    "vec": torch.zeros(1, 2, c),   # two modulation rows and no ranges: the host's block
                    "pe": None, "attn_mask": None, "transformer_options": {}}

            def own_block(a, name=name):
                return {"img": a["img"], "txt": a["txt"], "who": name}

            results[name] = patch(args, {"original_block": own_block})["who"]
        except Exception as e:  # reported below
            errors.append(e)
        finally:
            RC._ACTIVE.stack = []

    ts = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors
    assert results == {"a": "a", "b": "b"}
    assert patch.host_call is None   # nothing left behind after the calls


def test_object_patched_family_binds_the_clones_blocks(two_cpu_devices, monkeypatch):
    """Z-Image's blocks carry ``forward`` object patches: the host's clone callbacks bind ProCache's to the
    clone's own blocks, so each device caches on its own modules; all-FULL equals the host's split."""
    base = tiny_z_image_patcher()
    ref = _sample(_split(base.clone()))
    assert torch.equal(_sample(_split(_apply(base, "FFFFFF"))), ref)
    single = _sample(_apply(base, "FCFCFC"))
    split = _split(_apply(base, "FCFCFC"))
    clone = split.get_additional_models_with_key("multigpu")[0]
    ours = [p for p in clone.object_patches.values() if isinstance(p, A.ChainedForward)]
    assert ours and all(p.block is clone.model.get_submodule(k.rsplit(".", 1)[0])
                        for k, p in clone.object_patches.items() if isinstance(p, A.ChainedForward))
    workers = _spy_workers(monkeypatch)
    out, calls = _sample_recording_threads(split, [split, clone])
    assert sorted(str(w.device) for w in workers) == ["cpu", "cpu:0"]
    for w in workers:
        assert w.run.stats.steps_cached == 3 and w.run.stats.block_evals_done < w.run.stats.block_evals_full
    assert len(calls[id(base.model.diffusion_model)]) == 1 and len(calls[id(clone.model.diffusion_model)]) == 1
    assert calls[id(base.model.diffusion_model)] != calls[id(clone.model.diffusion_model)]
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-4)
