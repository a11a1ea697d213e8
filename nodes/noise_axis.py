"""Noise positions of a sampler's sigmas: the host's own "timestep percent" (0 = pure noise, 1 = clean).

The position of sigma ``s`` is the percent ``p`` with ``model_sampling.percent_to_sigma(p) == s``, found by
bisection (``percent_to_sigma`` is the map the host itself uses for start/end percent, and it is
monotonic for every model sampling type). It is comparable across samplers, schedulers, step counts and
denoise values, which is what lets one preset behave the same under all of them.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

_ITERS = 36  # precision 1.5e-11 in percent


def _p2s(model_sampling: Any, p: float) -> float:
    return float(model_sampling.percent_to_sigma(p))


def sigma_to_percent(model_sampling: Any, s: float) -> float:
    """Timestep percent of one sigma (0 for sigma at or above the model's top, 1 for sigma 0)."""
    if not s > 0.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(_ITERS):
        mid = 0.5 * (lo + hi)
        if _p2s(model_sampling, mid) > s:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def noise_positions(model_sampling: Any, sigmas: Sequence[float]) -> tuple[list[float], bool]:
    """Positions of every sigma; ``(positions, exact)``. Without a usable ``percent_to_sigma`` the
    positions fall back to log-sigma between the model's sigma_max and sigma_min (``exact`` False)."""
    if model_sampling is not None and hasattr(model_sampling, "percent_to_sigma"):
        try:
            out = [sigma_to_percent(model_sampling, float(s)) for s in sigmas]
            if all(math.isfinite(v) for v in out):
                return _monotone(out), True
        except Exception:  # noqa: BLE001 - an exotic model sampling: use the fallback below
            pass
    try:
        top = float(model_sampling.sigma_max)
        bot = float(model_sampling.sigma_min)
    except Exception:  # noqa: BLE001
        pos = [float(s) for s in sigmas if float(s) > 0]
        top, bot = (max(pos), min(pos)) if pos else (1.0, 1.0)
    span = math.log(top) - math.log(bot) if top > bot > 0 else 0.0
    out = []
    for s in sigmas:
        s = float(s)
        if s <= 0.0 or span <= 0.0:
            out.append(1.0 if s <= 0.0 else 0.0)
        else:
            out.append(min(1.0, max(0.0, (math.log(top) - math.log(s)) / span)))
    return _monotone(out), False


def _monotone(values: list[float]) -> list[float]:
    """Positions never decrease along a run (custom sigmas that go up are held at the previous level)."""
    out: list[float] = []
    for v in values:
        out.append(max(v, out[-1]) if out else v)
    return out


class ForecastAxis:
    """Where a model evaluation at sigma ``s`` sits for forecasting (procache_core.forecast).

    The model's own timestep of ``s`` (what the network is conditioned on: sigma for flow models, the
    discrete step for eps/v models), scaled so the run's first and last sigma are ``n_steps`` apart, so one
    step is about one unit whatever the model's timestep scale. Falls back to sigma itself when the model
    sampling has no usable ``timestep``. Divided-difference extrapolation does not depend on the scale;
    the scaling only keeps the stored differences in the activation dtype's range.
    """

    def __init__(self, model_sampling: Any, sigmas: Sequence[float]) -> None:
        self._timestep = getattr(model_sampling, "timestep", None)
        pos = [float(s) for s in sigmas if float(s) > 0.0]
        n = max(len(sigmas) - 1, 1)
        self._origin, self._scale = 0.0, 1.0
        if not pos:
            return
        hi, lo = self.raw(pos[0]), self.raw(pos[-1])
        if not (math.isfinite(hi) and math.isfinite(lo)):
            self._timestep = None
            hi, lo = pos[0], pos[-1]
        if hi != lo:
            self._origin, self._scale = hi, n / (lo - hi)

    def raw(self, s: float) -> float:
        """The model's timestep of sigma ``s`` (sigma itself without one)."""
        if self._timestep is None:
            return float(s)
        try:
            import torch

            return float(self._timestep(torch.tensor([float(s)], dtype=torch.float32)).reshape(-1)[0])
        except Exception:  # noqa: BLE001 - an exotic model sampling: sigma is the axis from now on
            self._timestep = None
            return float(s)

    def __call__(self, s: float) -> float:
        return (self.raw(s) - self._origin) * self._scale
