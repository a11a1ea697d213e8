"""Forecasting reused features from their history on the noise axis (host independent).

A reused step normally copies each branch's cached output. With a forecast order ``p`` > 0 every cached
branch also keeps the Newton divided differences of its last ``p + 1`` computed outputs, taken over the
*noise axis* value of each evaluation (the bridge passes the model's timestep, scaled so the run spans
about one unit per step), and a reused step evaluates the interpolating polynomial at its own noise
value: a TaylorSeer-style extrapolation in which the spacing comes from the sampler's sigmas, not from
the step count, so Heun's extra evaluations, karras spacing and denoise < 1 are all placed right.

Newton form, newest node first (``n0`` the newest evaluation, ``n1`` the one before)::

    f(t) ~ d0 + d1 (t - n0) + d2 (t - n0)(t - n1)

``d0`` is the entry's stored output itself, so order 0 is exactly the copy and costs nothing extra;
each order adds one tensor per branch (counted in the cache size and its estimate). Order 1 is the
``light`` choice (one extra tensor, a straight line through the last two computed outputs).

Plain extrapolation overshoots where a feature bends (dense-early karras steps, long reuse runs): on the
digits bench it lost to the copy by up to 5 dB there. So each branch keeps a *gain* in [0, 1], the share
of the extrapolated step it uses: at every computed step the previous forecast is checked against the
output just computed (:func:`fit_gain`, a least-squares scale, at most ``UNSURE_GAIN`` unless the fit was
near perfect; on the device, no sync), and until a branch's forecast has been checked once it uses
``FIRST_GAIN``. Features that move as the polynomial predicts keep gain 1 (the exactness tests); a
forecast that was no better than the copy falls back to it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import ProCacheError

MAX_ORDER = 2
# node / preset labels of the orders (what the Stats line says too)
ORDER_NAMES = {0: "off (copy)", 1: "light (order 1)", 2: "full (order 2)"}
# two evaluations closer than this on the axis are one point (the newest output replaces the older)
SAME_POINT = 1e-6
# Gains (see fit_gain), chosen on the digits bench (benchmarks/results/forecast_cpu.md and its notes):
# the first forecast stretch of a branch cannot be checked yet; 1.0 there lost most on karras runs, 0.0
# gave up 1-2 dB on euler runs, and 0.5 beat 0.25 in 7 of the 8 Flux rows on seeds 0 and 1 (+0.1 to
# +1.0 dB; PixArt within 0.1 dB but +1 dB on img2img) but lost 1 dB on dpmpp_2m/karras with the paper
# schedule, whose first forecast stretch wants about a third of the line (benchmarks/forecast_probe.py).
# A checked forecast that did not fit the move almost exactly is trusted at most by half: the full
# least-squares gain lost up to 5 dB on PixArt karras / euler uniform runs, 0.75 lost 1.3-2.7 dB there.
FIRST_GAIN = 0.5
UNSURE_GAIN = 0.5
SURE_FIT = 0.99


def check_order(order: object, field: str = "forecast") -> int:
    """The forecast order as an int in [0, MAX_ORDER]; a clear error otherwise."""
    try:
        value = int(order)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = None
    if value is None or value != order or not (0 <= value <= MAX_ORDER):
        raise ProCacheError(field, f"is {order!r}; it must be 0 (copy), 1 (light) or 2.",
                            "use 0 to reuse cached features as they are, 1 or 2 to extrapolate them.")
    return value


def extend(nodes: Sequence[float], d0_old: Tensor | None, diffs_old: Sequence[Tensor], d0_new: Tensor,
           t: float, order: int) -> tuple[tuple[float, ...], list[Tensor]]:
    """Divided differences after a new computed output ``d0_new`` at axis value ``t``.

    ``nodes`` (newest first), ``d0_old`` and ``diffs_old`` (``[d1, d2, ...]``) describe the history before
    it. Returns the new nodes and differences (at most ``order`` of them). A point at the newest node's
    axis value replaces it (the differences are kept: they still describe the slope there)."""
    if order <= 0 or d0_old is None or not nodes:
        return (float(t),), []
    if abs(float(t) - nodes[0]) <= SAME_POINT:
        return (float(t), *nodes[1:]), list(diffs_old)
    new_nodes = (float(t), *nodes)[:order + 1]
    diffs: list[Tensor] = []
    prev = d0_new
    below = d0_old      # the previous level's difference at the old newest node
    for k in range(1, min(order, len(nodes)) + 1):
        span = float(t) - nodes[k - 1]
        d = torch.sub(prev, below).div_(span)   # (prev - below) / span, one temporary
        diffs.append(d)
        if k - 1 < len(diffs_old):
            below = diffs_old[k - 1]
            prev = d
        else:
            break
    return new_nodes, diffs


def coefficients(nodes: Sequence[float], n_diffs: int, t: float) -> list[float]:
    """Multipliers of ``d1, d2, ...`` in the Newton form at ``t``."""
    out, prod = [], 1.0
    for k in range(n_diffs):
        prod *= float(t) - nodes[k]
        out.append(prod)
    return out


def predict(d0: Tensor, diffs: Sequence[Tensor], nodes: Sequence[float], t: float,
            gain: Tensor | None = None) -> Tensor:
    """The forecast at ``t`` (``d0`` itself when there are no differences: order 0 is the copy).

    ``gain`` (a 0-dim tensor in [0, 1], see :func:`fit_gain`) scales the extrapolated part."""
    if not diffs:
        return d0
    coef = coefficients(nodes, len(diffs), t)
    if gain is None:
        out = torch.add(d0, diffs[0], alpha=coef[0])
        for d, c in zip(diffs[1:], coef[1:]):
            out.add_(d, alpha=c)
        return out
    ext = diffs[0] * coef[0]
    for d, c in zip(diffs[1:], coef[1:]):
        ext.add_(d, alpha=c)
    return torch.addcmul(d0, ext, gain.to(d0.dtype))


def fit_gain(d0_old: Tensor, diffs_old: Sequence[Tensor], nodes_old: Sequence[float], t: float,
             d0_new: Tensor, prior: Tensor | None) -> Tensor | None:
    """How much of the extrapolation to trust next, from the check of the old forecast against the output
    computed now at ``t``: the least-squares scale ``g`` of the old forecast's step ``P(t) - d0_old`` that
    best matched the move ``d0_new - d0_old``, in [0, 1] (0: copying would have been as good), and at most
    ``UNSURE_GAIN`` unless that scaled step explained the move almost wholly (R^2 >= ``SURE_FIT``). Stays on
    the device (no sync); ``prior`` (None) when there was no old forecast to check."""
    if not diffs_old:
        return prior
    # the forecast's step is its extrapolated part alone (no d0 added and taken away again), and the three
    # sums are dot products: a few passes over the tensors and two temporaries, on every computed step
    coef = coefficients(nodes_old, len(diffs_old), t)
    step = torch.mul(diffs_old[0], coef[0]).float()
    for d, c in zip(diffs_old[1:], coef[1:]):
        step.add_(d.float(), alpha=c)
    moved = torch.sub(d0_new, d0_old).float()
    step, moved = step.reshape(-1), moved.reshape(-1)
    ss, mm, sm = torch.dot(step, step), torch.dot(moved, moved), torch.dot(step, moved)
    g = torch.where(ss > 0, sm / ss.clamp_min(1e-30), torch.zeros_like(ss)).clamp(0.0, 1.0)
    r2 = torch.where((ss > 0) & (mm > 0), sm * sm / (ss * mm).clamp_min(1e-30), torch.ones_like(ss))
    return torch.where(r2 >= SURE_FIT, g, g.clamp(max=UNSURE_GAIN))
