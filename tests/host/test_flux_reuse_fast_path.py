"""The host's tiny Flux in process: reused blocks take the adapter's early exit (gate rows only, no
branches) and give bitwise what the branch path gives; stack reuse; the ``reuse`` input's validation."""
from __future__ import annotations

import pytest
import torch

from _families import patched_run
from test_adapters_pixart_flux_sd3_wan import call, tiny_flux

from procache_pack.nodes.adapters import flux as F  # noqa: E402
from procache_pack.nodes.memory_bridge import REUSE_CHOICES, request_from_inputs  # noqa: E402
from procache_pack.procache_core.engine import CacheRun  # noqa: E402
from procache_pack.procache_core.errors import ProCacheError  # noqa: E402
from procache_pack.procache_core.memory import CacheMemory  # noqa: E402

SCHEDULE = "FFCCSCFC"


def _caller():
    """The Flux call of the adapter tests, with a timestep that moves every step (so gates change)."""
    n = {"step": 0}

    def call(family, dm, to):
        g = torch.Generator().manual_seed(7)
        t = 0.9 - 0.1 * n["step"]
        n["step"] += 1
        with torch.no_grad():
            x = torch.randn(2, 4, 16, 16, generator=g)
            return dm(x, torch.tensor([t, t]), torch.randn(2, 6, 32, generator=g), y=torch.randn(2, 16, generator=g),
                      transformer_options=to)
    return call


def _run(dm, memory=None, fast: bool = True, monkeypatch=None):
    computed = {"n": 0}
    orig = F.FluxDoubleBlock._computed

    def counting(self, *a, **k):
        computed["n"] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(F.FluxDoubleBlock, "_computed", counting)
    if not fast:
        monkeypatch.setattr(CacheRun, "reuse_block", lambda self, *a, **k: None)
    outs, run = patched_run("flux", dm, SCHEDULE, _caller(), ratio=0.5, memory=memory)
    monkeypatch.undo()
    return outs, run.stats, computed["n"]


@pytest.mark.parametrize("memory", [None, CacheMemory(light=True), CacheMemory(stack=True)],
                         ids=["blocks", "light", "stack"])
def test_early_exit_is_bitwise_the_branch_path(memory, monkeypatch):
    dm = tiny_flux()
    slow, s_stats, s_computed = _run(dm, memory, fast=False, monkeypatch=monkeypatch)
    fast, f_stats, f_computed = _run(dm, memory, fast=True, monkeypatch=monkeypatch)
    for a, b in zip(slow, fast):
        assert torch.equal(a, b)
    assert f_stats.block_evals_done == s_stats.block_evals_done and f_stats.flops_done == s_stats.flops_done
    # the slow path builds the branches of every double block on every step; the early exit only on the
    # computed and selective steps (2 double blocks each)
    assert s_computed == 2 * len(SCHEDULE)
    assert f_computed == 2 * sum(a in "FS" for a in SCHEDULE)


def test_stack_reuse_is_another_result_and_exact_when_all_full(monkeypatch):
    dm = tiny_flux()
    blocks, _, _ = _run(dm, None, monkeypatch=monkeypatch)
    stack, stats, _ = _run(dm, CacheMemory(stack=True), monkeypatch=monkeypatch)
    full = [o for o, a in zip(blocks, SCHEDULE) if a == "F"]
    assert all(torch.equal(a, b) for a, b, c in zip(blocks, stack, SCHEDULE) if c == "F")  # computed steps alike
    assert not torch.equal(blocks[2], stack[2])      # old gates for the whole stretch on a cached step
    assert full and stats.steps_cached == SCHEDULE.count("C") and all(torch.isfinite(o).all() for o in stack)
    # on the same inputs and timestep every step, the residual reproduces the computed step (rounding only)
    same, _ = patched_run("flux", dm, "FC", call, memory=CacheMemory(stack=True))
    assert torch.allclose(same[1], same[0], atol=1e-5, rtol=1e-4)


def test_reuse_input_is_validated():
    assert request_from_inputs(reuse="stack").reuse == "stack"
    assert request_from_inputs(reuse="step").reuse == "step"
    assert request_from_inputs().reuse == "blocks" and REUSE_CHOICES == ("blocks", "stack", "step")
    with pytest.raises(ProCacheError) as e:
        request_from_inputs(reuse="residual")
    assert e.value.field == "reuse" and "stack" in str(e.value)
