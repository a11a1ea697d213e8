"""Exactness and bookkeeping of CacheRun on a toy transformer (pure torch, CPU; CUDA parts skip)."""
from __future__ import annotations

import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from procache_core.engine import Branch, CacheRun
from procache_core.schedule import Action, Schedule
from procache_core.settings import ScoreWeights, SelectiveSettings


C = 16
DEPTH = 4


class ToyBlock:
    """Attention (mixes tokens) + MLP (token-local), adaLN-style gates from a conditioning vector."""

    def __init__(self, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> None:
        def w(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=gen) / math.sqrt(shape[0])).to(dtype)

        self.wq, self.wo, self.w1, self.w2, self.wg = w(C, C), w(C, C), w(C, 4 * C), w(4 * C, C), w(C, 2 * C)

    def attn(self, h: torch.Tensor) -> torch.Tensor:
        q = h @ self.wq
        return F.scaled_dot_product_attention(q, h, h) @ self.wo

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h @ self.w1) @ self.w2

    def gates(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ga, gm = (cond @ self.wg).chunk(2, dim=-1)
        return ga.unsqueeze(1), gm.unsqueeze(1)

    def branches(self, cond: torch.Tensor) -> list[Branch]:
        ga, gm = self.gates(cond)
        return [Branch("attn", self.attn, ga, token_local=False), Branch("mlp", self.mlp, gm, token_local=True)]

    def plain(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ga, gm = self.gates(cond)
        x = x + ga * self.attn(x)
        return x + gm * self.mlp(x)


class Toy:
    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.blocks = [ToyBlock(gen, dtype) for _ in range(DEPTH)]
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, cond: torch.Tensor, run: CacheRun | None = None) -> torch.Tensor:
        for i, blk in enumerate(self.blocks):
            x = blk.plain(x, cond) if run is None else run.run_block(i, x, blk.branches(cond))
        return x


def inputs(b: int = 2, n: int = 64, seed: int = 1, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, C, generator=gen).to(dtype), torch.randn(b, C, generator=gen).to(dtype)


def make_run(schedule: str, **selective) -> CacheRun:
    return CacheRun(Schedule.from_string(schedule), SelectiveSettings(**selective), num_blocks=DEPTH, grid_hw=(8, 8))


def drive(model: Toy, run: CacheRun, xs, conds, chunks: int = 1):
    outs = []
    for step, (x, cond) in enumerate(zip(xs, conds)):
        run.begin_step(step)
        run.set_stream("s", chunks=chunks)
        outs.append(model(x, cond, run))
    return outs


def trajectory(steps: int, b: int = 2, n: int = 64, dtype=torch.float32):
    """Slowly drifting inputs and conditionings, like consecutive denoising steps."""
    x0, c0 = inputs(b, n, dtype=dtype)
    x1, c1 = inputs(b, n, seed=7, dtype=dtype)
    xs = [x0 + 0.05 * i * x1 for i in range(steps)]
    cs = [c0 + 0.05 * i * c1 for i in range(steps)]
    return xs, cs


def test_all_full_is_bitwise_equal_to_unpatched():
    model = Toy()
    xs, cs = trajectory(5)
    run = make_run("FFFFF")
    outs = drive(model, run, xs, cs)
    for out, x, c in zip(outs, xs, cs):
        assert torch.equal(out, model(x, c))
    assert run.stats.flops_fraction == 1.0 and run.stats.block_eval_fraction == 1.0
    assert run.stats.flops_speedup == 1.0


def _step0_branch_outputs(model: Toy, xs, cs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pre-gate (attn, mlp) outputs of every block in a plain full step 0."""
    x, pre = xs[0], []
    for blk in model.blocks:
        ga, gm = blk.gates(cs[0])
        a = blk.attn(x)
        x = x + ga * a
        m = blk.mlp(x)
        x = x + gm * m
        pre.append((a, m))
    return pre


def test_cached_step_is_hand_computed_reuse_with_current_gates():
    model = Toy()
    xs, cs = trajectory(2)
    run = make_run("FC")
    drive(model, run, xs, cs)
    # hand-computed: pre-gate outputs of step 0, gates of step 1
    pre = _step0_branch_outputs(model, xs, cs)
    x = xs[1]
    for blk, (a, m) in zip(model.blocks, pre):
        ga, gm = blk.gates(cs[1])
        x = x + ga * a
        x = x + gm * m
    run2 = make_run("FC")
    out = drive(model, run2, xs, cs)[1]
    assert torch.equal(out, x)
    assert run2.stats.block_evals_done == DEPTH


def _selective_expected(model: Toy, xs, cs, deep_from: int):
    """Step 1 of "FS" with every token recomputed in deep blocks, attention reused everywhere."""
    pre = _step0_branch_outputs(model, xs, cs)
    x = xs[1]
    for i, (blk, (a, m)) in enumerate(zip(model.blocks, pre)):
        ga, gm = blk.gates(cs[1])
        x = x + ga * a
        x = x + gm * (blk.mlp(x) if i >= deep_from else m)
    return x


def test_selective_ratio_one_recomputes_every_token_exactly():
    model = Toy()
    xs, cs = trajectory(2)
    run = make_run("FS", ratio=1.0, depth_fraction=0.5)
    out = drive(model, run, xs, cs)[1]
    assert run.first_selective_block == 2
    assert torch.equal(out, _selective_expected(model, xs, cs, deep_from=2))


def test_selective_ratio_zero_equals_cached():
    model = Toy()
    xs, cs = trajectory(3)
    a = drive(model, make_run("FSS", ratio=0.0, depth_fraction=1.0), xs, cs)
    b = drive(model, make_run("FCC"), xs, cs)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_selective_disabled_equals_cached():
    model = Toy()
    xs, cs = trajectory(3)
    a = drive(model, make_run("FSS", enabled=False, ratio=0.5), xs, cs)
    b = drive(model, make_run("FCC"), xs, cs)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_shallow_blocks_act_cached_on_selective_steps():
    model = Toy()
    xs, cs = trajectory(2)
    run = make_run("FS", ratio=1.0, start_block=DEPTH)  # no block deep enough
    out = drive(model, run, xs, cs)[1]
    cached = drive(model, make_run("FC"), xs, cs)[1]
    assert torch.equal(out, cached)
    # and with only the last block deep, the first three are untouched by selection
    run = make_run("FS", ratio=1.0, start_block=-1)
    assert torch.equal(drive(model, run, xs, cs)[1], _selective_expected(model, xs, cs, deep_from=DEPTH - 1))


def test_partial_selective_scatters_only_chosen_tokens():
    model = Toy()
    xs, cs = trajectory(2)
    run = make_run("FS", ratio=0.25, start_block=-1)
    seen: list = []
    _spy_selector(run, seen)
    run.begin_step(0)
    model(xs[0], cs[0], run)
    before = run.cache.stream(None).blocks[DEPTH - 1]  # set_stream never called: the default stream
    old_mlp = before.outputs["mlp"].clone()
    run.begin_step(1)
    # x entering the last block on step 1 (earlier blocks are cached)
    x = xs[1]
    for i, blk in enumerate(model.blocks[:-1]):
        ga, gm = blk.gates(cs[1])
        ent = run.cache.stream(None).blocks[i]
        x = x + ga * ent.outputs["attn"]
        x = x + gm * ent.outputs["mlp"]
    out = model(xs[1], cs[1], run)
    assert len(seen) == 1
    idx = seen[0][1]
    assert idx.shape == (2, 16)
    blk = model.blocks[-1]
    ga, gm = blk.gates(cs[1])
    h = x + ga * before.outputs["attn"]
    expect_mlp = old_mlp.clone()
    rows = torch.arange(2)[:, None]
    expect_mlp[rows, idx] = blk.mlp(h)[rows, idx]
    new_mlp = before.outputs["mlp"]
    torch.testing.assert_close(new_mlp, expect_mlp, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(2, 64, dtype=torch.bool)
    untouched[rows, idx] = False
    assert torch.equal(new_mlp[untouched], old_mlp[untouched])
    torch.testing.assert_close(out, h + gm * new_mlp, rtol=0, atol=0)
    assert torch.equal(before.last_refresh[rows, idx], torch.ones(2, 16, dtype=torch.int32))
    assert run.stats.tokens_recomputed == 2 * 16


def _spy_selector(run: CacheRun, seen: list) -> None:
    rank = run.selector.rank

    def spy(**kw):
        order = rank(**kw)  # best first; record the chosen set in ascending order
        seen.append((kw["chunks"], torch.sort(order, dim=-1).values))
        return order

    run.selector.rank = spy  # type: ignore[method-assign]


def test_selection_is_shared_across_cfg_chunks():
    model = Toy()
    xs, cs = trajectory(3, b=4)
    cs = [torch.cat([c[:2], -c[:2]]) for c in cs]  # cond and uncond halves genuinely differ
    run = make_run("FSS", ratio=0.25, depth_fraction=0.5)
    seen: list = []
    _spy_selector(run, seen)
    drive(model, run, xs, cs, chunks=2)
    assert len(seen) == 2 * 2  # two selective steps x two deep blocks
    for chunks, idx in seen:
        assert chunks == 2 and idx.shape == (4, 16)
        assert torch.equal(idx[:2], idx[2:])
    # with chunks=1 every row chooses on its own, so the halves generally differ
    run1 = make_run("FSS", ratio=0.25, depth_fraction=0.5)
    seen.clear()
    _spy_selector(run1, seen)
    drive(model, run1, xs, cs, chunks=1)
    assert any(not torch.equal(idx[:2], idx[2:]) for _, idx in seen)


def test_stats_consistent():
    model = Toy()
    xs, cs = trajectory(4)
    run = make_run("FCCC")
    drive(model, run, xs, cs)
    s = run.stats
    assert (s.steps_full, s.steps_cached, s.steps_selective) == (1, 3, 0)
    assert s.block_evals_full == 4 * DEPTH
    assert s.block_evals_done == DEPTH
    assert s.block_eval_fraction == pytest.approx(0.25)
    assert s.flops_fraction == pytest.approx(0.25)
    assert s.flops_speedup == pytest.approx(4.0)
    # FS with the last block deep, half of the tokens: that block counts 0.5 (mlp) / 2 branches
    run = make_run("FS", ratio=0.5, start_block=-1)
    drive(model, run, xs[:2], cs[:2])
    s = run.stats
    assert s.block_evals_done == pytest.approx(DEPTH + 0.25)
    assert s.tokens_recomputed == 2 * 32
    assert 0.5 < s.flops_fraction < 1.0
    summary = s.summary()
    assert summary["steps_selective"] == 1 and summary["tokens_recomputed"] == 64
    line = s.format_line()
    assert "1 selective" in line and "speed-up" in line
    run.close()
    assert run.stats.wall_s is not None and run.stats.wall_s >= 0


def test_peak_memory_and_close_frees_cache():
    model = Toy()
    xs, cs = trajectory(3)
    run = make_run("FSC", ratio=0.5, start_block=-1)
    drive(model, run, xs, cs)
    b, n = 2, 64
    per_block = 2 * b * n * C * 4
    expected = DEPTH * per_block + (b * n * C * 4 + b * n * 4)  # deep block: input ref + int32 steps
    assert run.cache.nbytes() == expected
    run.begin_step(2)  # the peak is sampled at step boundaries
    assert run.stats.peak_cache_bytes == expected
    ref = weakref.ref(next(iter(run.cache._streams.values())).blocks[0].outputs["attn"])
    run.close()
    assert run.cache.nbytes() == 0 and len(run.cache) == 0
    assert ref() is None
    run.close()  # idempotent
    # after close the run passes blocks through unpatched
    assert torch.equal(model(xs[0], cs[0], run), model(xs[0], cs[0]))


def test_no_selective_steps_keeps_no_scoring_state():
    model = Toy()
    xs, cs = trajectory(2)
    run = make_run("FC")
    drive(model, run, xs, cs)
    assert run.cache.nbytes() == DEPTH * 2 * 2 * 64 * C * 4


def test_resolution_change_mid_run_recomputes_full():
    model = Toy()
    run = make_run("FCSCC", ratio=0.5, depth_fraction=0.5)
    x16, c = inputs(2, 16)
    x36, _ = inputs(2, 36)
    for step, x in enumerate([x16, x16, x36, x36, x16]):
        run.begin_step(step)
        run.set_stream("s", chunks=1)
        out = model(x, c, run)
        if step in (2, 4):  # new shape: no usable cache -> exact full compute
            assert torch.equal(out, model(x, c))
    assert run.stats.forced_full_evals == 2
    assert run.stats.block_evals_done == 3 * DEPTH


def test_new_stream_and_batch_change_run_full():
    model = Toy()
    run = make_run("FCC")
    x, c = inputs(2)
    run.begin_step(0)
    run.set_stream("cond", 1)
    model(x, c, run)
    run.begin_step(1)
    run.set_stream("uncond", 1)  # first call of this stream
    assert torch.equal(model(x, c, run), model(x, c))
    run.set_stream("cond", 1)
    x3, c3 = inputs(3)
    assert torch.equal(model(x3, c3, run), model(x3, c3))  # batch size changed
    assert run.stats.forced_full_evals == 2


def test_step_outside_schedule_runs_full():
    run = make_run("FC")
    assert run.begin_step(1) == Action.CACHED
    assert run.begin_step(5) == Action.FULL


def test_duplicate_branch_names_rejected():
    run = make_run("F")
    run.begin_step(0)
    x, _ = inputs()
    with pytest.raises(ValueError):
        run.run_block(0, x, [Branch("a", lambda h: h, None, False), Branch("a", lambda h: h, None, True)])


def test_gate_none_uses_plain_residual():
    run = make_run("FC")
    x, _ = inputs()
    mlp = Toy().blocks[0].mlp
    run.begin_step(0)
    y0 = run.run_block(0, x, [Branch("mlp", mlp, None, True)])
    assert torch.equal(y0, x + mlp(x))
    run.begin_step(1)
    assert torch.equal(run.run_block(0, x, [Branch("mlp", mlp, None, True)]), x + mlp(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_cpu(dtype):
    model = Toy(dtype=dtype)
    xs, cs = trajectory(4, dtype=dtype)
    full = drive(model, make_run("FFFF"), xs, cs)
    assert all(torch.equal(o, model(x, c)) for o, x, c in zip(full, xs, cs))
    run = make_run("FCSS", ratio=0.3, depth_fraction=0.5,
                   weights=ScoreWeights(staleness=1.0, input_change=1.0, output_norm=0.25, spatial=0.5))
    outs = drive(model, run, xs, cs)
    assert all(o.dtype == dtype and torch.isfinite(o).all() for o in outs)
    entry = next(iter(run.cache._streams.values())).blocks[DEPTH - 1]
    assert entry.outputs["mlp"].dtype == dtype and entry.input_ref.dtype == dtype
    # the exactness contract holds in low precision too (scores are computed in float32)
    one = drive(model, make_run("FS", ratio=1.0, depth_fraction=0.5), xs[:2], cs[:2])[1]
    assert torch.equal(one, _selective_expected(model, xs[:2], cs[:2], deep_from=2))


_SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


def test_selective_step_has_no_host_sync_cpu(monkeypatch):
    model = Toy()
    xs, cs = trajectory(3, b=4)
    run = make_run("FSS", ratio=0.3, depth_fraction=0.5)
    run.begin_step(0)
    run.set_stream("s", chunks=2)
    model(xs[0], cs[0], run)

    def forbidden(*_a, **_k):
        raise AssertionError("host sync inside the step loop")

    for name in _SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for step in (1, 2):
        run.begin_step(step)
        run.set_stream("s", chunks=2)
        model(xs[step], cs[step], run)
    monkeypatch.undo()
    assert run.stats.tokens_recomputed == 2 * 2 * 4 * math.ceil(0.3 * 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_selective_step_has_no_host_sync_cuda():
    dev = torch.device("cuda")
    model = Toy()
    for blk in model.blocks:
        for name in ("wq", "wo", "w1", "w2", "wg"):
            setattr(blk, name, getattr(blk, name).to(dev))
    xs, cs = trajectory(3, b=4)
    xs, cs = [x.to(dev) for x in xs], [c.to(dev) for c in cs]
    run = make_run("FSS", ratio=0.3, depth_fraction=0.5)
    run.begin_step(0)
    run.set_stream("s", chunks=2)
    model(xs[0], cs[0], run)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (1, 2):
            run.begin_step(step)
            run.set_stream("s", chunks=2)
            model(xs[step], cs[step], run)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = drive(Toy(), make_run("FSS", ratio=0.3, depth_fraction=0.5), *trajectory(3, b=4), chunks=2)
    gpu = drive(model, make_run("FSS", ratio=0.3, depth_fraction=0.5), xs, cs, chunks=2)
    torch.testing.assert_close(gpu[-1].cpu(), cpu[-1], rtol=1e-3, atol=1e-3)
