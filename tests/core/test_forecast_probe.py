"""The forecast diagnostic's offline forecast (benchmarks/forecast_probe.py) on synthetic recordings: its
Newton polynomial agrees with procache_core.forecast, and its error ratios are 1 for the copy, 0 for an
exact forecast, and 1 on the first reused stretch (one computed output: nothing to extrapolate from)."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.forecast_probe import _newton, oracle
from procache_core.forecast import extend, predict

GEN = torch.Generator().manual_seed(3)
A0, A1, A2 = (torch.randn(2, 5, 4, generator=GEN, dtype=torch.float64) for _ in range(3))
NOISE = [0.0, 0.7, 1.1, 2.9, 3.0, 4.6, 5.2, 7.0, 7.3, 9.0]


def recording(order: int) -> list[dict]:
    """Evaluations whose one branch output is a polynomial of degree ``order`` in the axis value."""
    def f(t):
        return A0 + A1 * t + (A2 * t * t if order >= 2 else 0.0)
    return [{"step": i, "t": t, "sigma": math.exp(-t), "out": {("s", 0, "attn"): f(t)}} for i, t in enumerate(NOISE)]


@pytest.mark.parametrize("order", [1, 2])
def test_newton_matches_the_engine_forecast(order):
    pts = [(t, A0 + A1 * t + A2 * t * t) for t in NOISE[:4]]
    nodes, d0, diffs = (), None, []
    for t, y in pts:
        nodes, diffs = extend(nodes, d0, diffs, y, t, order)
        d0 = y
    for t in (3.5, 5.0):
        assert torch.allclose(_newton(pts, t, order), predict(d0, diffs, nodes, t), atol=1e-9, rtol=0)


def test_oracle_ratios():
    ev = recording(1)
    sched = "FCCFCCFCCF"
    copy = oracle(ev, sched, "sigma", 0)
    assert [r["step"] for r in copy] == [1, 2, 4, 5, 7, 8] and all(r["ratio"] == 1.0 for r in copy)
    lin = oracle(ev, sched, "axis (timestep scaled)", 1, 1.0)
    assert [r["ratio"] for r in lin[:2]] == [1.0, 1.0]          # first stretch: only one computed output
    assert all(r["ratio"] < 1e-20 for r in lin[2:])             # linear in the axis: exact afterwards
    assert all(r["ratio"] > 1e-3 for r in oracle(ev, sched, "sigma", 1, 1.0)[2:])  # not linear in sigma
    half = oracle(ev, sched, "axis (timestep scaled)", 1, 0.5)
    assert all(abs(r["ratio"] - 0.25) < 1e-9 for r in half[2:])  # half the exact step: a quarter of the error
    quad = oracle(recording(2), sched, "axis (timestep scaled)", 1, 1.0)
    assert all(r["ratio"] > 1e-3 for r in quad[2:])
