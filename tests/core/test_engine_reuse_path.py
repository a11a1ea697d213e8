"""The cheap reused step: ``CacheRun.reuse_block`` (asked before the adapter builds its branches) gives
bitwise what ``run_block`` gives; stack reuse adds one residual per lane, by hand (pure torch, CPU)."""
from __future__ import annotations

import pytest
import torch

from procache_core.engine import Branch, CacheRun
from procache_core.memory import CacheMemory, double_single_layout, estimate_bytes
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings

LANES = ["img", "txt", "img", "txt", "joint", "joint", "joint"]


class _Model:
    """A Flux-like layout (image/text double blocks, then joint blocks) with two gated branches per block,
    gates that follow the step (like adaLN), so reusing with fresh gates and with old gates differ."""

    def __init__(self, c: int = 8) -> None:
        gen = torch.Generator().manual_seed(3)
        self.w = [[torch.randn(c, c, generator=gen) / c ** 0.5 for _ in range(2)] for _ in LANES]
        self.gate_calls = 0

    def gates(self, i: int, t: float) -> list[torch.Tensor]:
        self.gate_calls += 1
        return [torch.tensor(0.5 + 0.1 * t + 0.01 * i), torch.tensor(-0.3 + 0.05 * t)]

    def branches(self, i: int, t: float) -> list[Branch]:
        g = lambda k: (lambda: self.gates(i, t)[k])  # noqa: E731 - lazy, like LazyModulation.lazy_gate
        return [Branch("attn", lambda h, w=self.w[i][0]: torch.tanh(h @ w), g(0), token_local=False),
                Branch("mlp", lambda h, w=self.w[i][1]: torch.sin(h @ w), g(1), token_local=True)]

    def block(self, run: CacheRun | None, i: int, x: torch.Tensor, t: float, fast: bool) -> torch.Tensor:
        if run is None:
            for br in self.branches(i, t):
                x = x + br.gate() * br.compute(x)
            return x
        if fast:
            out = run.reuse_block(i, x, ("attn", "mlp"), lambda: self.gates(i, t))
            if out is not None:
                return out
        return run.run_block(i, x, self.branches(i, t))

    def forward(self, run, step: int, img, txt, fast: bool, host_block: int | None = None) -> torch.Tensor:
        """``host_block``: a block computed outside the run every step (an adapter handed it to the host)."""
        t = float(step)
        if run is not None:
            run.begin_step(step)
            run.set_stream("s", chunks=1)
        for i in range(4):
            if LANES[i] == "img":
                img = self.block(run, i, img, t, fast)
            else:
                txt = self.block(run, i, txt, t, fast)
        x = torch.cat([txt, img], dim=1)
        for i in range(4, 7):
            x = self.block(None if i == host_block else run, i, x, t, fast)
        return x


def _inputs(step: int):
    gen = torch.Generator().manual_seed(10 + step)
    return torch.randn(2, 5, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)


def _run(model: _Model, schedule: str, fast: bool, memory: CacheMemory | None = None, **sel):
    run = CacheRun(Schedule.from_string(schedule), SelectiveSettings(**{"start_block": 6, "ratio": 0.4, **sel}),
                   num_blocks=len(LANES), memory=memory, lanes=LANES)
    outs = [model.forward(run, s, *_inputs(s), fast=fast) for s in range(len(schedule))]
    run.close()
    return outs, run


@pytest.mark.parametrize("memory", [CacheMemory(), CacheMemory(light=True), CacheMemory("cpu"),
                                    CacheMemory(stack=True), CacheMemory(light=True, stack=True)],
                         ids=["full", "light", "cpu", "stack", "light+stack"])
@pytest.mark.parametrize("forecast", [0, 1])
def test_reuse_block_is_bitwise_run_block(memory, forecast):
    model = _Model()
    schedule = "FFCCSCFCSC"
    slow, run_s = _run(model, schedule, fast=False, memory=memory, forecast=forecast)
    fast, run_f = _run(model, schedule, fast=True, memory=memory, forecast=forecast)
    for a, b in zip(slow, fast):
        assert torch.equal(a, b)
    assert run_f.stats.block_evals_done == run_s.stats.block_evals_done
    assert run_f.stats.flops_full == run_s.stats.flops_full and run_f.stats.flops_done == run_s.stats.flops_done
    assert run_f.stats.forced_full_evals == run_s.stats.forced_full_evals
    # and the reused steps really reused (their output is not the full computation)
    full = [model.forward(None, s, *_inputs(s), fast=False) for s in range(len(schedule))]
    assert all(torch.equal(a, b) for a, b, c in zip(full, fast, schedule) if c == "F")
    assert not torch.equal(full[2], fast[2])


def test_reuse_block_computes_nothing_and_falls_back_when_it_must():
    model = _Model()
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(), num_blocks=len(LANES), lanes=LANES)
    img, txt = _inputs(0)
    run.begin_step(0)
    run.set_stream("s")
    assert run.reuse_block(0, img, ("attn", "mlp"), lambda: model.gates(0, 0.0)) is None  # FULL step
    model.forward(run, 0, img, txt, fast=False)
    run.begin_step(1)
    run.set_stream("s")
    calls = model.gate_calls
    out = run.reuse_block(0, img, ("attn", "mlp"), lambda: model.gates(0, 1.0))
    assert out is not None and model.gate_calls == calls + 1     # gates only
    assert run.reuse_block(0, img[:1], ("attn", "mlp"), lambda: model.gates(0, 1.0)) is None  # another layout
    run.close()
    assert run.reuse_block(0, img, ("attn", "mlp"), lambda: model.gates(0, 1.0)) is None       # after the run


def test_all_full_stack_is_bitwise_unpatched():
    model = _Model()
    outs, run = _run(model, "FFFF", fast=True, memory=CacheMemory(stack=True))
    for s, o in enumerate(outs):
        assert torch.equal(o, model.forward(None, s, *_inputs(s), fast=False))


def test_stack_reuse_adds_one_residual_per_lane_by_hand():
    model = _Model()
    outs, run = _run(model, "FC", fast=True, memory=CacheMemory(stack=True))
    img0, txt0 = _inputs(0)

    def lane(x, idx, t):
        x0 = x
        for i in idx:
            for br in model.branches(i, t):
                x = x + br.gate() * br.compute(x)
        return x, x - x0

    img_out, r_img = lane(img0, [0, 2], 0.0)
    txt_out, r_txt = lane(txt0, [1, 3], 0.0)
    _, r_joint = lane(torch.cat([txt_out, img_out], 1), [4, 5, 6], 0.0)
    img1, txt1 = _inputs(1)
    assert torch.equal(outs[1], torch.cat([txt1 + r_txt, img1 + r_img], 1) + r_joint)
    assert run.stats.block_evals_done == len(LANES)       # only the full step computed blocks
    # per-block reuse applies the new step's gates instead: another result
    blocks, _ = _run(model, "FC", fast=True)
    assert not torch.equal(blocks[1], outs[1])


def test_stack_keeps_selective_steps_and_forecasts_its_residual():
    model = _Model()
    blocks, _ = _run(model, "FFCSC", fast=True)
    stack, run = _run(model, "FFCSC", fast=True, memory=CacheMemory(stack=True))
    assert torch.equal(stack[3], blocks[3])              # a selective step is the per-block cache's
    assert run.stats.tokens_recomputed > 0
    fc, _ = _run(model, "FFCSC", fast=True, memory=CacheMemory(stack=True), forecast=1)
    assert not torch.equal(fc[2], stack[2])              # the residual is extrapolated, not copied
    assert torch.isfinite(fc[2]).all()


def test_stack_estimate_adds_one_residual_per_lane():
    lay = double_single_layout(2, 3, img_tokens=16, txt_tokens=4, width=8)
    kw = dict(rows=2, elem_bytes=4, first_selective_block=5)
    extra = estimate_bytes(lay, stack=True, **kw) - estimate_bytes(lay, **kw)
    assert extra == 2 * 4 * 8 * (16 + 4 + 20)
    assert estimate_bytes(lay, stack=True, history=1, **kw) - estimate_bytes(lay, history=1, **kw) == 2 * extra
    assert "stack reuse" in CacheMemory(stack=True).describe()


def test_stack_needs_every_block_of_the_lane_through_the_run():
    """A block the adapter hands to the host (it never reaches the run) would run again on a reused step:
    its lane keeps no residual and reuses block by block."""
    model = _Model()
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(start_block=6), num_blocks=len(LANES),
                   memory=CacheMemory(stack=True), lanes=LANES)
    for step in range(2):
        x = model.forward(run, step, *_inputs(step), fast=True, host_block=5)  # joint block 5 "handed to the host"
    sig = lambda t: (tuple(t.shape), t.dtype, t.device, ("stack",))  # noqa: E731
    assert run.cache.get_lane("s", ("stack", "joint"), sig(x)) is None
    assert run.cache.get_lane("s", ("stack", "txt"), sig(_inputs(0)[1])) is not None
    assert run.stats.block_evals_done < 2 * (len(LANES) - 1)   # the joint lane reused its blocks one by one
    run.close()


def test_light_lane_needs_every_block_through_the_run():
    """Light mode, the same hazard as stack reuse: joint block 5 sits inside the shallow joint lane (4, 5, 6)
    but is computed by the host, outside the run. A residual over 4..6 would hold block 5's update and the
    host would add it again on the reused step, so the lane keeps no residual and the step runs FULL."""
    model = _Model()
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(start_block=7), num_blocks=len(LANES),
                   memory=CacheMemory(light=True), lanes=LANES)
    outs = [model.forward(run, s, *_inputs(s), fast=False, host_block=5) for s in range(2)]  # 5: "handed to the host"
    sig = lambda t: (tuple(t.shape), t.dtype, t.device, ("residual",))  # noqa: E731
    assert run.cache.get_lane("s", "joint", sig(outs[0])) is None
    assert run.cache.get_lane("s", "img", sig(torch.zeros(2, 5, 8))) is not None
    assert run.stats.forced_full_evals == 1
    # the reused step: image and text lanes add their residuals, the joint lane (no residual) is computed,
    # block 5 once, by the host
    img, txt = _inputs(1)
    res = {lane: run.cache.get_lane("s", lane, sig(t)).outputs["residual"] for lane, t in (("img", img), ("txt", txt))}
    x = torch.cat([txt + res["txt"], img + res["img"]], dim=1)
    for i in range(4, 7):
        x = model.block(None, i, x, 1.0, False)
    assert torch.equal(outs[1], x)
    run.close()
