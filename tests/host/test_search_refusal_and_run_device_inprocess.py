"""Small fixes, in process: Schedule Search refuses a ProCache-patched MODEL; finish_run's CUDA
synchronise is keyed on the model's device (ComfyUI keeps the sigmas on the CPU)."""
from __future__ import annotations

import types

import pytest
import torch

from _inprocess import FakePatcher, load_pack

pack = load_pack()
from procache_pack.nodes import runtime_bridge as RB  # noqa: E402
from procache_pack.nodes.adapters import FamilyAdapter  # noqa: E402
from procache_pack.nodes.calibrate import ProCacheScheduleSearch  # noqa: E402
from procache_pack.procache_core.errors import ProCacheError  # noqa: E402
from procache_pack.procache_core.schedule import Schedule  # noqa: E402
from procache_pack.procache_core.settings import SelectiveSettings  # noqa: E402


def _config() -> RB.ProCacheConfig:
    adapter = FamilyAdapter(None)
    adapter.num_blocks, adapter.family = 2, "toy"
    return RB.ProCacheConfig(preset=None, schedule=Schedule.from_string("FCFC"), selective=SelectiveSettings(),
                             inject_selective=False, start_percent=0.0, end_percent=1.0, adapter=adapter)


def test_schedule_search_refuses_a_patched_model():
    patched = FakePatcher(torch.nn.Identity())
    patched.model_options["transformer_options"][RB.CONFIG_KEY] = _config()
    with pytest.raises(ProCacheError) as err:
        ProCacheScheduleSearch.execute(patched, None, None, {"samples": torch.zeros(1, 4, 8, 8)}, 0, 4, 1.0,
                                       "euler", "simple", 2.0, 2, 1, 4, 2, 0, "psnr")
    assert err.value.field == "model" and "ProCache Apply" in str(err.value)


def test_run_state_device_is_the_models_not_the_sigmas():
    patcher = types.SimpleNamespace(load_device=torch.device("cuda", 0))
    state = RB.start_run(_config(), torch.linspace(1.0, 0.0, 5), patcher)
    try:
        assert state.device == torch.device("cuda", 0)  # sigmas are on the CPU
    finally:
        state.run.close()
