"""Forecasting reused features on the noise axis (procache_core.forecast and the engine's use of it).

Toy branches whose output is a known function of the evaluation's noise value make the checks exact:
order 1 reproduces a feature linear in the noise value, order 2 a quadratic one, at uneven spacing and at
extra evaluations inside a step (Heun); order 0 is the copy, bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from procache_core.cache import BlockEntry
from procache_core.engine import Branch, CacheRun
from procache_core.errors import ProCacheError
from procache_core.forecast import FIRST_GAIN, check_order, extend, fit_gain, predict
from procache_core.memory import CacheMemory
from procache_core.presets import Preset, ScheduleError, dump_preset, parse_preset_text
from procache_core.schedule import Schedule
from procache_core.settings import SelectiveSettings

B, N, C = 2, 16, 8
GEN = torch.Generator().manual_seed(0)
A0, A1, A2 = (torch.randn(B, N, C, generator=GEN, dtype=torch.float64) for _ in range(3))
for _a in (A0, A1, A2):
    _a[..., 0] = 0.0  # channel 0 of the stream carries the token index (read back by selective rows)


def feature(t: float, order: int) -> torch.Tensor:
    """A branch output that is a polynomial of degree ``order`` in the noise value ``t``."""
    out = A0 + A1 * t
    return out + A2 * t * t if order >= 2 else out


class Toy:
    """One block, two branches: a token-local one (selective steps can recompute it) and a mixing one."""

    def __init__(self, order: int) -> None:
        self.order, self.t, self.calls = order, 0.0, 0

    def branches(self) -> list[Branch]:
        def local(x):
            self.calls += 1
            rows = x.shape[1]
            return feature(self.t, self.order)[:, :rows] if rows == N else self._rows(x)

        def mixing(x):
            return 0.5 * feature(self.t, self.order)

        return [Branch("attn", mixing, None, False), Branch("mlp", local, torch.tensor(0.25, dtype=torch.float64), True)]

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        # selective rows: x carries the token index in channel 0 (see run())
        idx = x[..., 0].long()
        f = feature(self.t, self.order)
        return torch.gather(f, 1, idx.unsqueeze(-1).expand(-1, -1, C))


def run(schedule: str, noise: list[float], forecast: int, order_of_feature: int, selective: dict | None = None,
        memory: CacheMemory | None = None, heun: bool = False) -> tuple[list[torch.Tensor], CacheRun]:
    sel = SelectiveSettings(forecast=forecast, **(selective or {"enabled": False}))
    cr = CacheRun(Schedule.from_string(schedule), sel, num_blocks=1, memory=memory)
    toy = Toy(order_of_feature)
    outs = []
    for step, t in enumerate(noise):
        evals = [t, t + 0.5] if heun else [t]
        for te in evals:
            toy.t = te
            cr.begin_step(step, noise=te)
            x = torch.zeros(B, N, C, dtype=torch.float64)
            x[..., 0] = torch.arange(N, dtype=torch.float64)  # token index, read back by selective rows
            outs.append(cr.run_block(0, x, toy.branches()))
    cr.close()
    return outs, cr


def exact(t: float, order: int) -> torch.Tensor:
    x = torch.zeros(B, N, C, dtype=torch.float64)
    x[..., 0] = torch.arange(N, dtype=torch.float64)
    f = feature(t, order)
    return x + 0.5 * f + 0.25 * f


UNEVEN = [0.0, 0.7, 1.1, 2.9, 3.0, 4.6, 5.2, 7.0, 7.3]  # karras-like, not the step count


@pytest.mark.parametrize("order,schedule", [(1, "FFFCCFCCC"), (2, "FFFFCCFCC")])
def test_forecast_reproduces_a_polynomial_feature_of_its_order(order, schedule):
    """Once a branch's forecast of this order has been checked at a computed step (order + 2 of them)."""
    outs, cr = run(schedule, UNEVEN, forecast=order, order_of_feature=order)
    for t, got in zip(UNEVEN, outs):
        assert torch.allclose(got, exact(t, order), atol=1e-9, rtol=0), t
    # the copy is visibly wrong on the same steps
    copies, _ = run(schedule, UNEVEN, forecast=0, order_of_feature=order)
    assert (copies[4] - exact(UNEVEN[4], order)).abs().max() > 0.05
    assert cr.stats.forecast.startswith(("light", "full"))


def test_linear_forecast_is_not_exact_on_a_quadratic_feature():
    outs, _ = run("FFFCCFCCC", UNEVEN, forecast=1, order_of_feature=2)
    assert (outs[4] - exact(UNEVEN[4], 2)).abs().max() > 1e-3


def test_heun_extra_evaluations_are_placed_by_their_own_noise_value():
    noise = [0.0, 1.0, 2.5, 3.0, 4.0, 6.0]
    outs, _ = run("FFCCFC", noise, forecast=2, order_of_feature=2, heun=True)
    evals = [te for t in noise for te in (t, t + 0.5)]
    for te, got in zip(evals, outs):
        assert torch.allclose(got, exact(te, 2), atol=1e-9, rtol=0), te


def test_order_zero_is_the_copy_bit_for_bit():
    """forecast 0 (the default) keeps today's reuse: every reused step adds the stored output as it is."""
    outs, cr = run("FCCFCC", UNEVEN[:6], forecast=0, order_of_feature=1)
    for step, last_full in ((1, 0), (2, 0), (4, 3), (5, 3)):
        assert torch.equal(outs[step], exact(UNEVEN[last_full], 1))
    assert cr.stats.peak_history_bytes == 0 and cr.stats.forecast == "off (copy)"
    assert "forecast" not in cr.stats.format_line()
    # and the noise value does not matter to it
    again, _ = run("FCCFCC", [10 * v for v in UNEVEN[:6]], forecast=0, order_of_feature=1)
    assert torch.equal(outs[1], again[1]) or not torch.equal(exact(0.0, 1), exact(0.0, 1))


def test_history_bytes_are_counted_and_shown():
    _, cr = run("FFFC", [0.0, 1.0, 2.0, 3.0], forecast=2, order_of_feature=2)
    per_output = B * N * C * 8
    assert cr.stats.peak_history_bytes == 2 * 2 * per_output  # two branches, two differences each
    assert cr.stats.peak_cache_bytes == 2 * 3 * per_output
    assert "forecast full (order 2), history" in cr.stats.format_line()
    _, light = run("FFFC", [0.0, 1.0, 2.0, 3.0], forecast=1, order_of_feature=1)
    assert light.stats.peak_history_bytes == 2 * per_output


def test_selective_rows_are_fresh_and_the_forecast_passes_through_them():
    """Recomputed tokens take their fresh value; the base shifts so later forecasts go through it."""
    sel = {"enabled": True, "depth_fraction": 1.0, "ratio": 0.25,
           "weights": __import__("procache_core.settings", fromlist=["ScoreWeights"]).ScoreWeights(
               staleness=1.0, input_change=0.0, output_norm=0.0, spatial=0.0)}
    # feature quadratic, forecast linear: the forecast is off; selective rows are exact
    outs, _ = run("FFSC", [0.0, 1.0, 2.0, 3.0], forecast=1, order_of_feature=2, selective=sel)
    want = exact(2.0, 2)
    # the attention branch's linear forecast at t = 2 from t = 0, 1, not checked yet: FIRST_GAIN of the step
    lin = feature(1.0, 2) + FIRST_GAIN * (feature(1.0, 2) - feature(0.0, 2))
    got_mlp = (outs[2] - 0.5 * lin)[..., 1:] / 0.25  # the mlp branch's contribution (channel 0 holds indices)
    fresh_rows = torch.isclose(got_mlp, feature(2.0, 2)[..., 1:], atol=1e-9).all(-1)
    assert fresh_rows.sum(-1).tolist() == [N // 4] * B
    assert not torch.allclose(outs[2], want)


def test_offloaded_cache_copies_and_says_so():
    _, cr = run("FFC", [0.0, 1.0, 2.0], forecast=2, order_of_feature=1,
                memory=CacheMemory(placement="cpu"))
    assert cr.stats.forecast.startswith("off (copy): the cache is kept in CPU memory")
    assert cr.stats.peak_history_bytes == 0


def test_extend_replaces_a_point_at_the_same_noise_value():
    d0 = torch.zeros(3)
    nodes, diffs = extend((), None, (), d0, 1.0, 2)
    assert nodes == (1.0,) and diffs == []
    nodes, diffs = extend(nodes, d0, diffs, torch.ones(3), 2.0, 2)
    assert nodes == (2.0, 1.0) and torch.equal(diffs[0], torch.ones(3))
    nodes2, diffs2 = extend(nodes, torch.ones(3), diffs, torch.full((3,), 1.5), 2.0, 2)
    assert nodes2 == nodes and len(diffs2) == 1
    assert torch.equal(predict(torch.full((3,), 1.5), diffs2, nodes2, 3.0), torch.full((3,), 2.5))


@pytest.mark.parametrize("bad", [3, -1, 1.5, "2", None])
def test_bad_order_names_the_field(bad):
    with pytest.raises(ProCacheError) as e:
        SelectiveSettings(forecast=bad).validate()
    assert e.value.field == "forecast"


def test_preset_carries_forecast_and_refuses_a_bad_one():
    text = "version: 1\nname: fc\nactions: FCCF\nselective: {enabled: false, forecast: 2}\n"
    p = parse_preset_text(text)
    assert p.selective.forecast == 2
    assert "forecast: 2" in dump_preset(p)
    assert parse_preset_text(dump_preset(p)).selective == p.selective
    plain = Preset.from_schedule_text("FCCF")
    assert "forecast" not in dump_preset(plain)  # older presets read and write back unchanged
    with pytest.raises(ScheduleError) as e:
        parse_preset_text(text.replace("forecast: 2", "forecast: two"))
    assert e.value.field == "selective.forecast"
    with pytest.raises(ScheduleError) as e:
        parse_preset_text(text.replace("forecast: 2", "forecast: 5"))
    assert e.value.field == "selective.forecast"


def test_check_order_accepts_the_three_orders():
    assert [check_order(v) for v in (0, 1, 2)] == [0, 1, 2]


def test_entry_history_is_part_of_its_size():
    e = BlockEntry(signature=(), outputs={"a": torch.zeros(4)}, diffs={"a": [torch.zeros(4), torch.zeros(4)]})
    assert e.history_nbytes() == 32 and e.nbytes() == 48


def test_gain_falls_to_zero_when_the_forecast_was_no_better_than_the_copy():
    """A feature that jumps back: the checked forecast moved the wrong way, so the next one copies."""
    d0_old, d1 = torch.zeros(4), torch.ones(4)   # slope 1 at node 1 (from 0 at 0 to ... )
    g = fit_gain(d0_old, [d1], (1.0,), 2.0, torch.full((4,), -0.5), None)
    assert float(g) == 0.0
    g = fit_gain(d0_old, [d1], (1.0,), 2.0, torch.full((4,), 0.5), None)
    assert abs(float(g) - 0.5) < 1e-6       # exact fit at half the step: 0.5
    g = fit_gain(d0_old, [d1], (1.0,), 2.0, torch.tensor([1.0, 1.0, 0.6, 0.6]), None)
    assert abs(float(g) - 0.5) < 1e-6       # best scale 0.8, but the fit is not near perfect: at most UNSURE_GAIN
    g = fit_gain(d0_old, [d1], (1.0,), 2.0, torch.full((4,), 0.9), None)
    assert abs(float(g) - 0.9) < 1e-6       # a near-perfect fit keeps its scale
    assert fit_gain(d0_old, [], (1.0,), 2.0, torch.ones(4), None) is None


def test_first_forecast_stretch_uses_the_first_gain():
    outs, _ = run("FFCC", [0.0, 1.0, 2.0, 3.0], forecast=1, order_of_feature=1)
    f0, f1 = feature(0.0, 1), feature(1.0, 1)
    x = exact(0.0, 1) - 0.75 * f0  # the stream before the branches
    want = x + 0.75 * (f1 + FIRST_GAIN * (f1 - f0) * 1.0)
    assert torch.allclose(outs[2], want, atol=1e-9, rtol=0)
