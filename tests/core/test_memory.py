"""Cache placement (CPU memory, storage dtype), memory-light mode and the size estimate (pure torch, CPU)."""
from __future__ import annotations

import pytest
import torch

from procache_core.cache import BlockCache
from procache_core.engine import Branch, CacheRun
from procache_core.memory import (BlockShape, CacheMemory, choose, double_single_layout, estimate_bytes,
                                  single_stream_layout)
from procache_core.reference_dit import ddim_sample, tiny_dit
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings

STEPS = 12
PROCACHE = "FCSCFCSCFSCF"   # cached and selective steps, refreshes in between
SEL = dict(ratio=0.3, depth_fraction=0.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; also keeps float reductions in one order
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return tiny_dit(seed=0)


def _noise(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([1, 3])


def _sample(model, memory: CacheMemory | None, schedule: str = PROCACHE, cfg: float = 4.0, **sel):
    x, y = _noise()
    run = CacheRun(Schedule.from_string(schedule), SelectiveSettings(**{**SEL, **sel}), num_blocks=model.depth,
                   memory=memory)
    out = ddim_sample(model, x, y, steps=len(schedule), cfg_scale=cfg, cache_run=run)
    run.close()
    return out, run


def test_cpu_cache_is_bitwise_equal_to_device_cache(model):
    dev, run_d = _sample(model, CacheMemory("device"))
    cpu, run_c = _sample(model, CacheMemory("cpu"))
    assert torch.equal(dev, cpu)
    assert run_c.stats.steps_selective > 0 and run_c.stats.tokens_recomputed > 0
    # the same bytes, reported for the device that holds them
    assert run_c.stats.peak_cache_bytes == run_d.stats.peak_cache_bytes > 0
    assert run_c.stats.peak_cache_bytes_by_device == {"cpu": run_c.stats.peak_cache_bytes}
    assert "CPU memory" in run_c.stats.format_line()


def test_cpu_cache_needs_its_write_back(model, monkeypatch):
    """The CPU store is a separate copy: without writing selective updates back the output changes."""
    ref, _ = _sample(model, CacheMemory("cpu"))
    monkeypatch.setattr(BlockCache, "checkin", lambda self, stored, working, names: None)
    broken, _ = _sample(model, CacheMemory("cpu"))
    assert not torch.equal(ref, broken)


def test_storage_dtype(model):
    full32, run32 = _sample(model, CacheMemory("device"))
    dev16, run_d = _sample(model, CacheMemory("device", torch.bfloat16))
    cpu16, run_c = _sample(model, CacheMemory("cpu", torch.bfloat16))
    assert torch.equal(dev16, cpu16)                       # placement never changes the output
    assert not torch.equal(dev16, full32)                  # bfloat16 storage rounds the reused features
    assert float((dev16 - full32).norm() / full32.norm()) < 0.02
    # outputs and input references halve; the int32 refresh steps stay
    assert run32.stats.peak_cache_bytes * 0.5 < run_d.stats.peak_cache_bytes < run32.stats.peak_cache_bytes * 0.6


def test_light_all_full_is_bitwise_unpatched(model):
    x, y = _noise()
    plain = ddim_sample(model, x, y, steps=6)
    light, _ = _sample(model, CacheMemory("device", light=True), schedule="F" * 6)
    assert torch.equal(plain, light)


def test_light_cpu_equals_light_device(model):
    a, run_a = _sample(model, CacheMemory("device", light=True))
    b, run_b = _sample(model, CacheMemory("cpu", light=True))
    assert torch.equal(a, b)
    assert run_a.stats.peak_cache_bytes == run_b.stats.peak_cache_bytes


def test_light_matches_full_when_gates_do_not_change(model):
    """The documented difference is the gates only: with step-independent adaLN both modes agree."""
    frozen = tiny_dit(seed=0)
    with torch.no_grad():
        frozen.t_embedder.mlp[2].weight.zero_()          # conditioning (hence every gate) ignores t
    full, _ = _sample(frozen, CacheMemory("device"))
    light, _ = _sample(frozen, CacheMemory("device", light=True))
    rel = float((light - full).norm() / full.norm())
    assert 0.0 < rel < 1e-5                               # float summation order only
    # with the real (step-dependent) gates the modes differ by far more than rounding
    full_t, _ = _sample(model, CacheMemory("device"))
    light_t, _ = _sample(model, CacheMemory("device", light=True))
    assert float((light_t - full_t).norm() / full_t.norm()) > 1000 * rel


class _Lin:
    """Blocks whose branch outputs and gates are explicit: the light residual can be computed by hand."""

    def __init__(self, n_blocks: int, c: int = 8) -> None:
        gen = torch.Generator().manual_seed(3)
        self.w = [torch.randn(c, c, generator=gen) / c ** 0.5 for _ in range(n_blocks)]

    def branches(self, i: int, gate: torch.Tensor) -> list[Branch]:
        return [Branch("mlp", lambda h, w=self.w[i]: torch.tanh(h @ w), gate, token_local=True)]


def test_light_residual_per_lane_by_hand():
    # lanes as in a Flux-like model: image/text alternate, then a joint lane; the last block is deep
    lanes = ["img", "txt", "img", "txt", "joint", "joint", "joint"]
    blocks = _Lin(len(lanes))
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(start_block=6), num_blocks=7,
                   memory=CacheMemory("device", light=True), lanes=lanes)
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(1, 5, 8, generator=gen), torch.randn(1, 3, 8, generator=gen)
    gates = [torch.tensor(0.5), torch.tensor(-0.7)]      # a different gate on each step

    def forward(step: int, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        run.begin_step(step)
        run.set_stream("s")
        g = gates[step]
        for i in range(4):
            if lanes[i] == "img":
                img = run.run_block(i, img, blocks.branches(i, g))
            else:
                txt = run.run_block(i, txt, blocks.branches(i, g))
        x = torch.cat([txt, img], dim=1)
        for i in range(4, 7):
            x = run.run_block(i, x, blocks.branches(i, g))
        return x

    def plain_lane(x, idx, g):
        x0 = x
        for i in idx:
            x = x + g * torch.tanh(x @ blocks.w[i])
        return x, x - x0

    out0 = forward(0, img, txt)
    _, r_img = plain_lane(img, [0, 2], gates[0])
    _, r_txt = plain_lane(txt, [1, 3], gates[0])
    j0, r_joint = plain_lane(torch.cat([*plain_lane(txt, [1, 3], gates[0])[:1], *plain_lane(img, [0, 2], gates[0])[:1]], 1),
                             [4, 5], gates[0])
    deep_out0 = torch.tanh(j0 @ blocks.w[6])
    assert torch.equal(out0, j0 + gates[0] * deep_out0)
    # reused step with new inputs: shallow lanes add their step-0 residual, the deep block reuses its
    # cached output with the NEW gate
    img1, txt1 = img * 1.5, txt - 0.25
    out1 = forward(1, img1, txt1)
    j1 = torch.cat([txt1 + r_txt, img1 + r_img], 1) + r_joint
    assert torch.equal(out1, j1 + gates[1] * deep_out0)
    run.close()


def test_estimate_matches_the_engine(model):
    """estimate_bytes from shapes alone == what the engine held, in full and light mode (2 samples x CFG = 4 rows)."""
    sel = SelectiveSettings(**SEL)
    layout = single_stream_layout(model.depth, tokens=64, width=model.hidden_size, branches=2)
    first = sel.first_selective_block(model.depth)
    for light in (False, True):
        _, run = _sample(model, CacheMemory("device", light=light))
        est = estimate_bytes(layout, rows=4, elem_bytes=4, first_selective_block=first, light=light)
        assert run.stats.peak_cache_bytes == est
    _, run = _sample(model, CacheMemory("device", light=True))
    _, run_full = _sample(model, CacheMemory("device"))
    assert run.stats.peak_cache_bytes < run_full.stats.peak_cache_bytes


def test_double_single_layout_counts_lanes():
    lay = double_single_layout(2, 3, img_tokens=16, txt_tokens=4, width=8)
    assert [b.lane for b in lay] == ["img", "txt", "img", "txt", "joint", "joint", "joint"]
    # light: deep = last 2 blocks; one residual per lane (img 16, txt 4, joint 20 tokens)
    est = estimate_bytes(lay, rows=1, elem_bytes=2, first_selective_block=5, light=True, track_tokens=False)
    assert est == 2 * 8 * (2 * 20 * 1 + 16 + 4 + 20)
    assert BlockShape(4, 8, 1).lane == 0


def test_choose_policy():
    gib = 2 ** 30
    p = choose("auto", "auto", None, full_bytes=10 * gib, light_bytes=3 * gib, device_free=20 * gib, host_free=64 * gib)
    assert p.memory == CacheMemory("device") and "fits" in p.reason
    p = choose("auto", "auto", None, full_bytes=30 * gib, light_bytes=3 * gib, device_free=20 * gib, host_free=64 * gib)
    assert p.memory == CacheMemory("cpu") and "CPU memory" in p.reason       # exact output kept
    p = choose("auto", "auto", None, full_bytes=90 * gib, light_bytes=8 * gib, device_free=20 * gib, host_free=64 * gib)
    assert p.memory == CacheMemory("cpu", light=True) and "light" in p.reason
    p = choose("auto", "light", torch.bfloat16, full_bytes=90 * gib, light_bytes=8 * gib, device_free=20 * gib,
               host_free=1)
    assert p.memory == CacheMemory("device", torch.bfloat16, light=True)
    p = choose("device", "full", None, full_bytes=30 * gib, light_bytes=1, device_free=20 * gib, host_free=None)
    assert p.memory.placement == "device" and "exceeds" in p.reason
    assert choose("cpu", "full", None, 1, 1, None, None).memory == CacheMemory("cpu")


def test_light_lane_with_two_shapes_is_a_clear_error():
    blocks = _Lin(3)
    run = CacheRun(Schedule.from_string("FC"), SelectiveSettings(start_block=2), num_blocks=3,
                   memory=CacheMemory("device", light=True))  # no lanes given: one stream assumed
    run.begin_step(0)
    run.set_stream("s")
    run.run_block(0, torch.randn(1, 5, 8), blocks.branches(0, torch.tensor(1.0)))
    with pytest.raises(Exception, match="lanes"):
        run.run_block(1, torch.randn(1, 3, 8), blocks.branches(1, torch.tensor(1.0)))
    run.close()
