"""The run context in process: a run never writes to its config (immutable, shared by every clone),
what runs did goes to the config's run log, the model-level fallback after a failed verification is
made once per Apply, and the host's compile settings are per run state, not on the shared adapter."""
from __future__ import annotations

import copy
import dataclasses
import logging
import types

import pytest
import torch

from _inprocess import load_pack

load_pack()
from procache_pack.nodes import run_context as RC  # noqa: E402
from procache_pack.nodes import runtime_bridge as RB  # noqa: E402
from procache_pack.nodes.adapters import FamilyAdapter, verify  # noqa: E402
from procache_pack.procache_core.schedule import Schedule  # noqa: E402
from procache_pack.procache_core.settings import SelectiveSettings  # noqa: E402


class _ToyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


def _config(dm=None, family: str = "toy") -> RC.ProCacheConfig:
    adapter = FamilyAdapter(dm)
    adapter.num_blocks, adapter.family = 2, family
    return RC.ProCacheConfig(preset=None, schedule=Schedule.from_string("FCFS"),
                             selective=SelectiveSettings(enabled=True), inject_selective=True,
                             start_percent=0.0, end_percent=1.0, adapter=adapter, short_run_floor=0)


def _fields(cfg: RC.ProCacheConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def test_config_is_immutable_and_shared_by_clones():
    cfg = _config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.adapter = None
    opts = {"transformer_options": {RC.CONFIG_KEY: cfg}}
    clone = copy.deepcopy(opts)   # what ModelPatcher.clone does to model options
    assert clone["transformer_options"][RC.CONFIG_KEY] is cfg and copy.copy(cfg.log) is cfg.log


def test_a_run_writes_its_log_not_its_config():
    cfg = _config()
    before = _fields(cfg)
    for k in range(2):
        state = RB.start_run(cfg, torch.linspace(1.0, 0.0, 5), types.SimpleNamespace(load_device=None))
        assert state.config is cfg
        RB.finish_run(state, interrupted=False, output=torch.full((1, 4), float(k)))
    assert _fields(cfg) == before
    assert cfg.log.runs == 2 and cfg.log.last_stats["run_index"] == 2 and len(cfg.log.history) == 2
    assert cfg.log.last_line == cfg.log.last_stats["line"] and cfg.log.last_line.startswith("ProCache [toy] run:")


def test_fallback_after_a_failed_verification_is_made_once(caplog):
    cfg = _config(_ToyNet(), family="toy-fallback-test")
    key = verify.adapter_key(cfg.adapter)
    before = _fields(cfg)
    verify.record(key, "toy failure")
    try:
        with caplog.at_level(logging.INFO, logger="ProCache"):
            s1 = RB.start_run(cfg, torch.linspace(1.0, 0.0, 5), types.SimpleNamespace(load_device=None))
            s2 = RB.start_run(cfg, torch.linspace(1.0, 0.0, 5), types.SimpleNamespace(load_device=None))
        for s in (s1, s2):
            s.run.close()
        fb = s1.config
        assert s2.config is fb and cfg.log.fallback is fb and fb.log is cfg.log
        assert fb.adapter.schedule_only and fb.block_adapter is cfg.adapter and fb.owner is cfg
        assert not fb.selective.enabled and not fb.inject_selective
        assert s1.model_level and s1.blocks_off and s1.check is None
        assert "S" not in s1.schedule.to_string()
        assert caplog.text.count("model-level fallback because the toy-fallback-test block adapter") == 1
        assert _fields(cfg) == before                      # Apply's config untouched
        assert RC.adapter_dm(fb) is cfg.adapter.dm          # its patches still belong to the Apply config
    finally:
        with verify._LOCK:
            verify._RECORD.pop(key, None)


def test_block_compile_is_per_run_state():
    owner = _config()
    compiled = types.SimpleNamespace(config=owner, run=None, closed=False, block_compile={"backend": "inductor"})
    eager = types.SimpleNamespace(config=owner, run=None, closed=False, block_compile=None)
    assert RC.block_compile(owner) is None               # no run in progress
    RC.push_active(compiled)
    try:
        assert RC.block_compile(owner) == {"backend": "inductor"}
        RC.push_active(eager)                            # another clone's run on this thread
        try:
            assert RC.block_compile(owner) is None
        finally:
            RC.pop_active()
        assert RC.block_compile(owner) == {"backend": "inductor"}
        assert RC.block_compile(_config()) is None       # another Apply's patches see no run
    finally:
        RC.pop_active()
    assert not hasattr(owner.adapter, "block_compile")
