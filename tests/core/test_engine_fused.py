"""Fused residual branches: the engine adds them with ``torch.addcmul(x, gate, out)`` on every path.

Hosts that write a gated residual as one fused multiply-add (Qwen-Image, LTX-Video, Cosmos Predict2 on
newer hosts, Wan) round once where ``x + gate * out`` rounds twice; a ``Branch(fused=True)`` makes the
engine follow them on computed, cached and selective steps alike. Pure torch, CPU.
"""
from __future__ import annotations

import torch

from procache_core.engine import Branch, CacheRun
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings

B, N, C = 2, 32, 24


def _data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=gen)
    ga, gm = torch.randn(B, 1, C, generator=gen), torch.randn(B, 1, C, generator=gen)
    return x, ga, gm


MIX = torch.randn(N, N, generator=torch.Generator().manual_seed(7)).softmax(-1)


def attn(h: torch.Tensor) -> torch.Tensor:
    """Mixes tokens (not token-local)."""
    return MIX @ h


def mlp(h: torch.Tensor) -> torch.Tensor:
    """Elementwise, so a row recomputed alone is bitwise the row of the full computation."""
    return torch.tanh(h) * 1.5 + h * h


def branches(ga: torch.Tensor, gm: torch.Tensor, fused: bool = True) -> list[Branch]:
    return [Branch("attn", attn, ga, False, fused=fused), Branch("mlp", mlp, gm, True, fused=fused)]


def fused_ref(x: torch.Tensor, ga: torch.Tensor, gm: torch.Tensor) -> torch.Tensor:
    x = torch.addcmul(x, ga, attn(x))
    return torch.addcmul(x, gm, mlp(x))


def unfused_ref(x: torch.Tensor, ga: torch.Tensor, gm: torch.Tensor) -> torch.Tensor:
    x = x + ga * attn(x)
    return x + gm * mlp(x)


def test_addcmul_rounds_differently_from_the_unfused_form():
    """The premise: on random fp32 data the fused multiply-add is not ``x + gate * out`` bitwise."""
    x, g, _ = _data(0)
    out = torch.randn(B, N, C, generator=torch.Generator().manual_seed(1))
    fused, plain = torch.addcmul(x, g, out), x + g * out
    assert not torch.equal(fused, plain)
    torch.testing.assert_close(fused, plain)                  # one rounding apart, no more
    y = x.clone()
    assert torch.equal(y.addcmul_(out, g), fused)             # in place, factors swapped: the same bits


def test_fused_branch_on_full_step_is_the_fused_arithmetic():
    x, ga, gm = _data(2)
    run = CacheRun(Schedule.from_string("F"), SelectiveSettings(), num_blocks=1)
    run.begin_step(0)
    run.set_stream("s")
    out = run.run_block(0, x, branches(ga, gm))
    assert torch.equal(out, fused_ref(x, ga, gm))
    assert not torch.equal(out, unfused_ref(x, ga, gm))
    # an unfused branch keeps the engine's old expression
    run2 = CacheRun(Schedule.from_string("F"), SelectiveSettings(), num_blocks=1)
    run2.begin_step(0)
    run2.set_stream("s")
    assert torch.equal(run2.run_block(0, x, branches(ga, gm, fused=False)), unfused_ref(x, ga, gm))


def test_fused_branch_without_gate_is_a_plain_add():
    x, _, _ = _data(3)
    run = CacheRun(Schedule.from_string("F"), SelectiveSettings(), num_blocks=1)
    run.begin_step(0)
    run.set_stream("s")
    assert torch.equal(run.run_block(0, x, [Branch("cross", mlp, None, True, fused=True)]), x + mlp(x))


def _full_then(schedule: str, settings: SelectiveSettings, x0, ga0, gm0, x1, ga1, gm1):
    """Step 0 FULL on (x0, gates 0), step 1 as ``schedule[1]`` on (x1, gates 1); the run, step 1's output and
    the branch outputs step 0 cached (attention, MLP)."""
    run = CacheRun(Schedule.from_string(schedule), settings, num_blocks=1)
    run.begin_step(0)
    run.set_stream("s")
    run.run_block(0, x0, branches(ga0, gm0))
    a0 = attn(x0)
    m0 = mlp(torch.addcmul(x0, ga0, a0))
    run.begin_step(1)
    run.set_stream("s")
    return run, run.run_block(0, x1, branches(ga1, gm1)), a0, m0


def test_fused_branch_on_cached_step_reapplies_the_cached_output_fused():
    x0, ga0, gm0 = _data(4)
    x1, ga1, gm1 = _data(5)
    run, out, a0, m0 = _full_then("FC", SelectiveSettings(enabled=False), x0, ga0, gm0, x1, ga1, gm1)
    assert run.stats.tokens_recomputed == 0
    assert torch.equal(out, torch.addcmul(torch.addcmul(x1, ga1, a0), gm1, m0))
    assert not torch.equal(out, x1 + ga1 * a0 + gm1 * m0)


def _selective_step(ratio: float):
    x0, ga0, gm0 = _data(6)
    x1, ga1, gm1 = _data(8)
    x1 = x0 + 0.3 * x1  # close to step 0, as between solver steps
    run, out, a0, m0 = _full_then("FS", SelectiveSettings(ratio=ratio, start_block=0), x0, ga0, gm0, x1, ga1, gm1)
    h = torch.addcmul(x1, ga1, a0)  # attention (not token-local): reused, re-applied fused
    return run, out, h, gm1, m0


def test_fused_branch_on_selective_step_every_token():
    """Every token recomputed (ratio 1): the MLP is computed on the stream, added fused."""
    run, out, h, gm1, _ = _selective_step(1.0)
    assert torch.equal(out, torch.addcmul(h, gm1, mlp(h)))
    assert not torch.equal(out, h + gm1 * mlp(h))


def test_fused_branch_on_selective_step_some_tokens():
    """Part of the tokens recomputed: each row is the fused update with the fresh or the cached MLP row."""
    run, out, h, gm1, m0 = _selective_step(0.25)
    fresh, stale = torch.addcmul(h, gm1, mlp(h)), torch.addcmul(h, gm1, m0)
    is_fresh = (out == fresh).all(-1)
    is_stale = (out == stale).all(-1)
    assert (is_fresh | is_stale).all()
    assert is_fresh.sum(-1).tolist() == [N // 4, N // 4] and (is_stale & ~is_fresh).any()
    assert run.stats.tokens_recomputed == B * N // 4
    unfused = torch.where((out == fresh).all(-1, keepdim=True), h + gm1 * mlp(h), h + gm1 * m0)
    assert not torch.equal(out, unfused)
