"""The host-side memory logic without a server: auto placement when the cache does not fit, and the
memory hint the host's model loader sees during prepare_sampling."""
from __future__ import annotations

import importlib
import logging
import types

import torch

from _inprocess import load_pack


def _state(pack, mode: str = "auto", placement: str = "auto"):
    mb = importlib.import_module("procache_pack.nodes.memory_bridge")
    CacheRun = importlib.import_module("procache_pack.procache_core.engine").CacheRun
    single_stream_layout = importlib.import_module("procache_pack.procache_core.memory").single_stream_layout
    Schedule = importlib.import_module("procache_pack.procache_core.schedule").Schedule

    adapter = types.SimpleNamespace(cache_layout=lambda shape, ctx: single_stream_layout(4, 64, 32, 2),
                                    num_blocks=4)
    config = types.SimpleNamespace(adapter=adapter, memory_request=mb.MemoryRequest(placement, mode, None))
    state = types.SimpleNamespace(config=config, run=CacheRun(Schedule.from_string("FCFC"), None, num_blocks=4),
                                  memory_estimate=None, model_patcher=None)
    base = types.SimpleNamespace(manual_cast_dtype=None, get_dtype=lambda: torch.float16)
    guider = types.SimpleNamespace(conds={"positive": [{}], "negative": [{}]}, cfg=3.0,
                                   model_patcher=types.SimpleNamespace(model=base))
    est = mb.estimate(state, guider, (1, 4, 16, 16))
    return mb, state, est


def test_auto_moves_a_cache_that_does_not_fit_to_cpu(monkeypatch, caplog):
    pack = load_pack()
    mb, state, est = _state(pack)
    assert est.rows == 2 and est.full_bytes == 4 * 2 * 64 * 32 * 2 * 2  # 4 blocks, 2 branches, fp16, CFG
    monkeypatch.setattr(mb, "_free", lambda dev: 1000 if dev.type != "cpu" else 10 ** 12)
    with caplog.at_level(logging.INFO, logger="ProCache"):
        mb.decide(state, torch.empty(2, 4, 16, 16, device="meta"))
    assert state.run.memory.placement == "cpu" and not state.run.memory.light
    assert "moved to CPU memory" in caplog.text and "cache estimate" in caplog.text
    # fits: stays on the device
    mb, state, _ = _state(pack)
    monkeypatch.setattr(mb, "_free", lambda dev: 10 ** 12)
    mb.decide(state, torch.empty(2, 4, 16, 16, device="meta"))
    assert state.run.memory.placement == "device"


def test_loader_sees_the_cache_during_prepare_sampling():
    pack = load_pack()
    mb, state, est = _state(pack, placement="device")
    base = types.SimpleNamespace()
    base.memory_required = lambda input_shape, cond_shapes={}: 1000
    model = types.SimpleNamespace(model=base)
    seen = []

    def executor(model, noise_shape, conds, model_options=None):
        seen.append((model.model.memory_required([2, 4, 16, 16]), model.model.memory_required([1, 4, 16, 16])))

    opts = {"transformer_options": {"procache_run": state}}
    mb.prepare_sampling_wrapper(executor, model, (1, 4, 16, 16), {}, model_options=opts)
    assert seen == [(1000 + est.full_bytes, 1000 + est.full_bytes)]   # "model device": minimum too
    assert model.model.memory_required([2]) == 1000                     # restored afterwards
    state.config.memory_request = mb.MemoryRequest("auto", "auto", None)
    seen.clear()
    mb.prepare_sampling_wrapper(executor, model, (1, 4, 16, 16), {}, model_options=opts)
    assert seen == [(1000 + est.full_bytes, 1000)]                      # auto: other models make room


def test_hint_steps_aside_for_a_later_object_patch_of_memory_required():
    """Loading the model inside prepare_sampling applies its object patches; one may replace
    ``memory_required`` and keep ours as its backup (comfy.utils.get_attr/set_attr, as ModelPatcher
    does). That patch stays in place after the wrapper returns, and ours, still reachable as its
    backup, adds nothing any more; the host's unpatch then restores a plain pass-through."""
    import comfy.utils

    pack = load_pack()
    mb, state, est = _state(pack, placement="device")

    class Base:
        def memory_required(self, input_shape, cond_shapes={}):
            return 1000

    base = Base()
    model = types.SimpleNamespace(model=base)
    backup = {}

    def other(input_shape, cond_shapes={}):   # another pack's object patch: 7 bytes on top of what it wraps
        return backup["memory_required"](input_shape, cond_shapes) + 7

    seen = []

    def executor(model, noise_shape, conds, model_options=None):
        seen.append(base.memory_required([2, 4, 16, 16]))
        backup["memory_required"] = comfy.utils.get_attr(base, "memory_required")   # ModelPatcher.patch_model
        comfy.utils.set_attr(base, "memory_required", other)
        seen.append(base.memory_required([2, 4, 16, 16]))

    mb.prepare_sampling_wrapper(executor, model, (1, 4, 16, 16), {},
                                model_options={"transformer_options": {"procache_run": state}})
    assert seen == [1000 + est.full_bytes, 1000 + est.full_bytes + 7]
    assert base.memory_required is other and base.memory_required([2, 4, 16, 16]) == 1007   # kept, ours inert
    comfy.utils.set_attr(base, "memory_required", backup["memory_required"])              # the host's unpatch
    assert base.memory_required([2, 4, 16, 16]) == 1000


def test_auto_drops_the_forecast_history_before_moving_the_cache_to_cpu(monkeypatch, caplog):
    """A forecasting run whose cache fits on the device only without its history: the cache stays on the
    device and reused steps copy (Stats says why); with room for both, both stay."""
    pack = load_pack()
    SelectiveSettings = importlib.import_module("procache_pack.procache_core.settings").SelectiveSettings
    CacheRun = importlib.import_module("procache_pack.procache_core.engine").CacheRun
    Schedule = importlib.import_module("procache_pack.procache_core.schedule").Schedule
    mb, state, _ = _state(pack)
    state.run = CacheRun(Schedule.from_string("FCFC"), SelectiveSettings(forecast=1), num_blocks=4)
    base = types.SimpleNamespace(manual_cast_dtype=None, get_dtype=lambda: torch.float16)
    guider = types.SimpleNamespace(conds={"positive": [{}], "negative": [{}]}, cfg=3.0,
                                   model_patcher=types.SimpleNamespace(model=base))
    est = mb.estimate(state, guider, (1, 4, 16, 16))
    plain = 4 * 2 * 64 * 32 * 2 * 2
    assert est.full_bytes == 2 * plain and est.copy_full_bytes == plain  # order 1: one difference per output
    room = int(1.5 * plain / 0.9)   # the plain cache fits in 90 % of it, the one with history does not
    monkeypatch.setattr(mb, "_free", lambda dev: room if dev.type != "cpu" else 10 ** 12)
    with caplog.at_level(logging.INFO, logger="ProCache"):
        mb.decide(state, torch.empty(2, 4, 16, 16, device="meta"))
    assert state.run.memory.placement == "device"
    assert state.run.stats.forecast.startswith("off (copy): the cache with its forecast history would not fit")
    assert state.run.forecast_order(torch.empty(1, dtype=torch.float16)) == 0
    assert "without the forecast history" in caplog.text
    # room for both: the forecast stays
    mb, state, _ = _state(pack)
    state.run = CacheRun(Schedule.from_string("FCFC"), SelectiveSettings(forecast=1), num_blocks=4)
    mb.estimate(state, guider, (1, 4, 16, 16))
    monkeypatch.setattr(mb, "_free", lambda dev: 10 ** 12)
    mb.decide(state, torch.empty(2, 4, 16, 16, device="meta"))
    assert state.run.memory.placement == "device" and state.run.stats.forecast == "light (order 1)"
