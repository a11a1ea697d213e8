"""Step reuse (``CacheMemory.step``): a CACHED evaluation returns the model's last computed output without
running the model, copied or forecast on the noise axis; computed and selective ones run as before
(pure torch, the engine as the runtime bridge drives it: ``reuse_step`` before the model, ``keep_step`` after)."""
from __future__ import annotations

import torch

from procache_core.engine import Branch, CacheRun
from procache_core.memory import CacheMemory
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings
from procache_core.step_reuse import StepOutputs


class _Net:
    """Two gated blocks; ``calls`` counts model evaluations that reached the blocks."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(5)
        self.w = [torch.randn(6, 6, generator=gen) / 6 ** 0.5 for _ in range(2)]
        self.calls = 0

    def __call__(self, run: CacheRun | None, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        for i, w in enumerate(self.w):
            br = (Branch("mlp", lambda h, w=w: torch.tanh(h @ w), lambda t=t: torch.tensor(0.5 + 0.1 * t), True),)
            x = run.run_block(i, x, br) if run is not None else x + br[0].gate() * br[0].compute(x)
        return x


def _step(run: CacheRun, net: _Net, step: int, x: torch.Tensor, noise: float | None = None,
          key: object = "cond") -> torch.Tensor:
    """One model call the way nodes/runtime_bridge.py makes it."""
    run.begin_step(step, noise)
    run.set_stream(key, 1)
    out = run.reuse_step(x)
    if out is not None:
        return out
    t = float(step if noise is None else noise)
    if run.native_eval(x):  # the model's own blocks, no run exposed to them
        out = net(None, x, t)
        run.keep_native(out)
        return out
    out = net(run, x, t)
    run.keep_step(out)
    return out


def _inputs(n: int):
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(2, 4, 6, generator=gen) for _ in range(n)]


def _run(schedule: str, memory: CacheMemory, forecast: int = 0, **kw):
    run = CacheRun(Schedule.from_string(schedule), SelectiveSettings(forecast=forecast, **kw), num_blocks=2,
                   memory=memory)
    net = _Net()
    outs = [_step(run, net, s, x) for s, x in enumerate(_inputs(len(schedule)))]
    run.close()
    return outs, run, net


def test_cached_steps_skip_the_model_and_return_the_last_computed_output():
    outs, run, net = _run("FCCFC", CacheMemory(step=True))
    assert net.calls == 2                                  # only the two FULL steps ran the model
    assert torch.equal(outs[1], outs[0]) and torch.equal(outs[2], outs[0]) and torch.equal(outs[4], outs[3])
    assert outs[1] is not outs[0]                          # a copy: the sampler may write into what it gets
    st = run.stats
    assert st.steps_cached == 3 and st.block_evals_full == 10 and st.block_evals_done == 4
    assert abs(st.block_eval_fraction - 0.4) < 1e-12
    assert "step reuse" in st.cache_placement


def test_without_step_reuse_nothing_changes():
    plain, run, net = _run("FCCFC", CacheMemory())
    assert net.calls == 5                                  # block reuse still calls the model
    assert not torch.equal(plain[1], plain[0])             # and reuses inside it, with the new input
    assert len(run.step_outputs) == 0


def test_all_full_is_the_unpatched_model_bit_for_bit():
    outs, _, _ = _run("FFF", CacheMemory(step=True))
    net = _Net()
    for s, (x, o) in enumerate(zip(_inputs(3), outs)):
        assert torch.equal(o, net(None, x, float(s)))


def test_selective_steps_still_run_the_blocks():
    outs, run, net = _run("FCSC", CacheMemory(step=True), enabled=True, ratio=0.5, start_block=1)
    assert net.calls == 2                                  # F and S ran; both Cs skipped
    assert torch.equal(outs[3], outs[2])                   # the C after S reuses the selective step's output
    assert run.stats.tokens_recomputed > 0


def test_a_stream_first_seen_on_a_cached_step_runs_the_model():
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(), num_blocks=2, memory=CacheMemory(step=True))
    net = _Net()
    x0, x1 = _inputs(2)
    _step(run, net, 0, x0, key="cond")
    out = _step(run, net, 1, x1, key="uncond")             # no output of this stream yet: computed
    assert net.calls == 2 and torch.equal(out, _Net()(None, x1, 1.0))
    assert run.stats.forced_full_evals == 1


def test_forecast_order_1_is_exact_on_a_line_in_the_noise_axis():
    store = StepOutputs()
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    f = lambda t: a + b * t  # noqa: E731
    store.keep("s", 0, f(1.0), 1.0, order=1, blocks=2, flops=1.0)
    store.keep("s", 0, f(0.8), 0.8, order=1, blocks=2, flops=1.0)
    store.keep("s", 0, f(0.6), 0.6, order=1, blocks=2, flops=1.0)  # its forecast was checked: gain 1
    e = store.reuse("s", 0, (3, 4))
    assert torch.allclose(store.output(e, 0.45), f(0.45), atol=1e-5)
    assert store.history_nbytes() == a.numel() * a.element_size()
    assert store.reuse("s", 1, (3, 4)) is None       # another segment: compute
    assert store.reuse("s", 0, (3, 5)) is None       # another shape: compute


def test_step_reuse_turns_the_drift_guard_off():
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(drift_guard=2.0), num_blocks=2,
                   memory=CacheMemory(step=True))
    assert run.stats.drift_guard == "" and run._guard == 0
    later = CacheRun(Schedule.from_string("FC"), SelectiveSettings(drift_guard=2.0), num_blocks=2)
    later.set_memory(CacheMemory(step=True))                # the bridge decides the memory after creation
    assert later.stats.drift_guard == ""


def test_without_selective_steps_computed_steps_store_no_block_output():
    run = CacheRun(Schedule.from_string("FCFC"), SelectiveSettings(), num_blocks=2, memory=CacheMemory(step=True))
    net = _Net()
    outs = [_step(run, net, s, x) for s, x in enumerate(_inputs(4))]
    assert not run.keeps_blocks and len(run.cache) == 0 and len(run.step_outputs) == 1
    blocks, _, _ = _run("FCFC", CacheMemory())
    assert torch.equal(outs[0], blocks[0]) and torch.equal(outs[2], blocks[2])  # the same arithmetic
    assert run.stats.block_evals_done == 4 and run.stats.block_evals_full == 8
    sel = CacheRun(Schedule.from_string("FS"), SelectiveSettings(enabled=True, ratio=0.5), num_blocks=2,
                   memory=CacheMemory(step=True))
    assert sel.keeps_blocks                                 # selective steps read the block cache


def test_what_the_sampler_does_to_a_returned_output_does_not_reach_the_kept_one():
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(), num_blocks=2, memory=CacheMemory(step=True))
    net = _Net()
    x0, x1 = _inputs(2)
    first = _step(run, net, 0, x0)
    want = first.clone()
    first.mul_(0.0)                                        # e.g. a post-CFG function writing in place
    assert torch.equal(_step(run, net, 1, x1), want)


class _CountingNet(_Net):
    """Also counts the evaluations whose blocks went through the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.engine_calls = 0

    def __call__(self, run, x, t):
        self.engine_calls += run is not None
        return super().__call__(run, x, t)


def test_computed_steps_after_the_first_run_the_model_without_the_engine():
    run = CacheRun(Schedule.from_string("FCFCF"), SelectiveSettings(), num_blocks=2, memory=CacheMemory(step=True))
    net = _CountingNet()
    xs = _inputs(5)
    outs = [_step(run, net, s, x) for s, x in enumerate(xs)]
    run.close()
    assert net.calls == 3 and net.engine_calls == 1   # the first FULL step counted the blocks; the others are native
    ref = _Net()
    for s in (0, 2, 4):
        assert torch.equal(outs[s], ref(None, xs[s], float(s)))
    st = run.stats                                    # counted as if every computed step had run through the blocks
    assert st.block_evals_full == 10 and st.block_evals_done == 6 and abs(st.flops_fraction - 0.6) < 1e-12


def test_native_steps_count_what_engine_steps_count():
    runs = []
    for native in (True, False):
        run = CacheRun(Schedule.from_string("FCCFCF"), SelectiveSettings(forecast=1), num_blocks=2,
                       memory=CacheMemory(step=True))
        if not native:
            run.native_eval = lambda x: False
        outs = [_step(run, _Net(), s, x) for s, x in enumerate(_inputs(6))]
        run.close()
        runs.append((outs, run.stats))
    (a, sa), (b, sb) = runs
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert (sa.block_evals_full, sa.block_evals_done, sa.flops_full, sa.flops_done) == \
        (sb.block_evals_full, sb.block_evals_done, sb.flops_full, sb.flops_done)


def test_no_native_step_with_selective_steps_or_block_reuse_or_a_new_shape():
    sel = CacheRun(Schedule.from_string("FSF"), SelectiveSettings(enabled=True), num_blocks=2,
                   memory=CacheMemory(step=True))
    net = _CountingNet()
    for s, x in enumerate(_inputs(3)):
        _step(sel, net, s, x)
    assert net.engine_calls == 3          # selective steps read the block cache, so every step fills it
    blocks = CacheRun(Schedule.from_string("FF"), SelectiveSettings(), num_blocks=2)
    blocks.begin_step(0)
    blocks.set_stream("cond", 1)
    assert not blocks.native_eval(_inputs(1)[0])
    step = CacheRun(Schedule.from_string("FFF"), SelectiveSettings(), num_blocks=2, memory=CacheMemory(step=True))
    net = _CountingNet()
    _step(step, net, 0, _inputs(1)[0])
    _step(step, net, 1, torch.randn(3, 4, 6))  # a new batch shape runs through the engine first
    _step(step, net, 2, torch.randn(3, 4, 6))
    assert net.engine_calls == 2
