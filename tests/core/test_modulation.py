"""LazyModulation: reused steps evaluate only the adaLN gate rows; computed steps the host expression."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import procache_core.reference_dit as rdit
from procache_core.engine import CacheRun
from procache_core.modulation import LazyModulation, linear_rows
from procache_core.reference_dit import tiny_dit
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings


def test_linear_rows_matches_a_slice_of_the_full_linear():
    gen = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(24, 8, generator=gen), torch.randn(24, generator=gen), torch.randn(3, 8, generator=gen)
    full = F.linear(x, w, b)
    torch.testing.assert_close(linear_rows(x, w, b, 8, 16), full[:, 8:16])
    torch.testing.assert_close(linear_rows(x, w, None, 16, 24), F.linear(x, w)[:, 16:24])


def test_lazy_modulation_computes_full_once_and_gates_alone_before_it():
    calls = {"full": 0, "chunk": []}
    parts = [torch.full((2,), float(i)) for i in range(6)]

    def full():
        calls["full"] += 1
        return parts

    def chunk(i):
        calls["chunk"].append(i)
        return parts[i] + 100  # distinguishable from the full result

    mod = LazyModulation(full, chunk)
    assert not mod.computed
    assert torch.equal(mod.gate(2), parts[2] + 100) and mod.partial_evals == 1
    assert torch.equal(mod.gate(2), parts[2] + 100) and mod.partial_evals == 1  # cached, not recomputed
    assert calls["full"] == 0
    assert torch.equal(mod[0], parts[0]) and mod.computed and calls["full"] == 1
    assert torch.equal(mod.gate(5), parts[5])  # after the full evaluation: its chunk, exact
    assert torch.equal(mod[4], parts[4]) and calls["full"] == 1
    assert calls["chunk"] == [2]
    assert torch.equal(mod.lazy_gate(5, lambda t: t * 2)(), parts[5] * 2)


def test_lazy_modulation_without_chunk_function_falls_back_to_full():
    mod = LazyModulation(lambda: (torch.zeros(1), torch.ones(1)))
    assert torch.equal(mod.gate(1), torch.ones(1)) and mod.computed and mod.partial_evals == 0


def _count_full_adaln(model) -> tuple[dict, list]:
    counts = {"n": 0}
    hooks = [blk.adaLN_modulation.register_forward_hook(lambda *a: counts.__setitem__("n", counts["n"] + 1))
             for blk in model.blocks]
    return counts, hooks


@pytest.mark.parametrize("action,expected", [("F", 4), ("C", 0), ("S", 1)])
def test_reference_dit_evaluates_full_adaln_only_where_a_branch_is_computed(action, expected):
    torch.manual_seed(0)
    model = tiny_dit(seed=0)  # 4 blocks; depth_fraction 0.25 -> the last block recomputes on S steps
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([1, 3])
    t = torch.full((2,), 500.0)
    run = CacheRun(Schedule.from_string("F" + action), SelectiveSettings(), num_blocks=model.depth)
    counts, hooks = _count_full_adaln(model)
    try:
        with torch.no_grad():
            run.begin_step(0)
            model(x, t, y, cache_run=run)
            assert counts["n"] == model.depth
            counts["n"] = 0
            run.begin_step(1)
            model(x, t * 0.9, y, cache_run=run)
    finally:
        for h in hooks:
            h.remove()
    assert counts["n"] == expected


def test_reused_steps_with_gate_rows_match_full_gates(monkeypatch):
    """The gate-rows path is the same arithmetic up to summation order: compare with full-linear gates."""
    model = tiny_dit(seed=0)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([1, 3])
    sched = "FCSC"

    def sample():
        run = CacheRun(Schedule.from_string(sched), SelectiveSettings(), num_blocks=model.depth)
        outs = []
        with torch.no_grad():
            for i in range(len(sched)):
                run.begin_step(i)
                outs.append(model(x, torch.full((2,), 900.0 - 200 * i), y, cache_run=run))
        return outs

    lazy = sample()
    monkeypatch.setattr(rdit, "linear_rows", lambda a, w, b, s, e: F.linear(a, w, b)[..., s:e])
    exact = sample()
    assert torch.equal(lazy[0], exact[0])  # the F step does not use gate rows at all
    for a, b in zip(lazy[1:], exact[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
