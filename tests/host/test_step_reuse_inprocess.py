"""ProCache Apply's ``reuse: step`` on the trained digits Flux and PixArt-α, sampled in process by the host's own
``comfy.sample.sample``: cached steps never call the diffusion model (counted on the host's class), computed
steps run as with block reuse, the run repeats bit for bit, forecasting changes it, and Stats says so."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.step_cost import Workload  # noqa: E402

SCHEDULE = "FCCCFCCSFC"


@pytest.fixture(scope="module", params=["flux", "pixart"])
def workload(request):
    return Workload(request.param)


def _counted(wl: Workload, model, steps: int = len(SCHEDULE)):
    cls = type(wl.mp.model.diffusion_model)
    calls = {"n": 0}
    orig = cls.forward

    def forward(self, *a, **k):
        calls["n"] += 1
        return orig(self, *a, **k)

    cls.forward = forward
    try:
        out = wl.sample(model, steps)
    finally:
        cls.forward = orig
    return out, calls["n"]


def test_cached_steps_do_not_call_the_model(workload):
    wl = workload
    step, n_step = _counted(wl, wl.patched(SCHEDULE, selective=True, reuse="step"))
    blocks, n_blocks = _counted(wl, wl.patched(SCHEDULE, selective=True))
    assert n_blocks == len(SCHEDULE)                       # one batched cond+uncond call per euler step
    assert n_step == sum(a != "C" for a in SCHEDULE)       # F and S steps only
    assert torch.isfinite(step).all() and not torch.equal(step, blocks)
    again, _ = _counted(wl, wl.patched(SCHEDULE, selective=True, reuse="step"))
    assert torch.equal(step, again)


def test_all_full_with_step_reuse_is_the_unpatched_model(workload):
    wl = workload
    full, n = _counted(wl, wl.patched("F" * 4, reuse="step"), steps=4)
    plain, _ = _counted(wl, wl.mp, steps=4)
    assert n == 4 and torch.equal(full, plain)


def test_forecast_extrapolates_the_reused_output_and_stats_say_step_reuse(workload):
    from procache_pack.nodes.runtime_bridge import config_of

    wl = workload
    copy, _ = _counted(wl, wl.patched(SCHEDULE, reuse="step"))
    model = wl.patched(SCHEDULE, forecast=1, reuse="step")
    fc, n = _counted(wl, model)
    # selective compute off: S steps are reused steps too
    assert n == SCHEDULE.count("F") and torch.isfinite(fc).all() and not torch.equal(fc, copy)
    last = config_of(model).log.last_stats
    assert last is not None and "step reuse" in last["cache_placement"] and last["forecast"].startswith("light")
    assert "step reuse" in config_of(model).log.last_line
    # no selective step to serve: only the model output per stream and its one difference are kept
    per_stream = wl.latent.numel() * wl.latent.element_size()
    assert 0 < last["peak_cache_bytes"] <= 2 * 2 * per_stream    # cond + uncond, output + difference


def test_computed_steps_after_the_first_run_the_hosts_own_blocks(workload):
    """Without selective steps no block output is read back: the first computed evaluation runs through the
    adapter's blocks (counting them), the later ones call the host's blocks as they are (``native_eval``), and
    Stats counts the same blocks either way."""
    from procache_pack.nodes.runtime_bridge import config_of
    from procache_pack.procache_core.engine import CacheRun

    wl = workload
    counts = {"engine": 0, "native": 0}
    keep_step, keep_native = CacheRun.keep_step, CacheRun.keep_native

    def counted_step(self, out):
        counts["engine"] += 1
        return keep_step(self, out)

    def counted_native(self, out):
        counts["native"] += 1
        return keep_native(self, out)

    schedule = "FCFCFFCF"
    CacheRun.keep_step, CacheRun.keep_native = counted_step, counted_native
    try:
        model = wl.patched(schedule, reuse="step")
        out, n = _counted(wl, model, steps=len(schedule))
    finally:
        CacheRun.keep_step, CacheRun.keep_native = keep_step, keep_native
    assert n == schedule.count("F") and counts == {"engine": 1, "native": schedule.count("F") - 1}
    last = config_of(model).log.last_stats
    assert abs(last["block_eval_fraction"] - schedule.count("F") / len(schedule)) < 1e-9
    plain, _ = _counted(wl, wl.patched(schedule, reuse="step"), steps=len(schedule))
    assert torch.equal(out, plain)                         # the same run again: bit for bit
