"""Proxy metrics that rank candidate schedules against a full-compute reference.

The paper scores candidates with FID / CLIP / ImageReward on a proxy set; offline and on one machine we
compare each candidate's output (latent or image) with the full-compute output of the same seed. All
metrics accept numpy arrays or torch tensors (converted through numpy in float64; torch is never
imported here) and compare two arrays of the same shape.

=========  ============================================  ==================
metric     definition                                    better
=========  ============================================  ==================
rel_l2     ||a - ref|| / ||ref||                         lower (0 = equal)
psnr       10 log10(R^2 / MSE), R = ref.max - ref.min    higher (inf = equal)
cosine     <a, ref> / (||a|| ||ref||), flattened          higher (1 = same direction)
=========  ============================================  ==================
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from .errors import ProCacheError

T = TypeVar("T")


def to_numpy(x: Any) -> np.ndarray:
    """float64 numpy copy of an array-like or a torch tensor (any device/dtype, bf16 included)."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProCacheError("output", f"cannot be read as a numeric array ({exc}).",
                            "pass a numpy array or a torch tensor.") from None


def _pair(a: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    x, r = to_numpy(a), to_numpy(ref)
    if x.shape != r.shape:
        raise ProCacheError("output", f"has shape {x.shape}, but the reference has {r.shape}.",
                            "compare outputs of the same resolution, batch and frame count.")
    return x, r


def rel_l2(a: Any, ref: Any) -> float:
    """||a - ref|| / ||ref||; 0 when equal, inf when ref is all zeros and a is not."""
    x, r = _pair(a, ref)
    num = float(np.linalg.norm((x - r).ravel()))
    den = float(np.linalg.norm(r.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def psnr(a: Any, ref: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; the range defaults to the reference's max - min
    (falls back to max |ref|, then 1, for a constant reference). inf when equal."""
    x, r = _pair(a, ref)
    mse = float(np.mean((x - r) ** 2)) if x.size else 0.0
    if data_range is None:
        data_range = float(r.max() - r.min()) if r.size else 0.0
        if data_range == 0.0:
            data_range = float(np.abs(r).max()) if r.size else 0.0
        if data_range == 0.0:
            data_range = 1.0
    elif not (math.isfinite(float(data_range)) and float(data_range) > 0):
        raise ProCacheError("data_range", f"is {data_range}; it must be a positive number.",
                            "leave it unset to use the reference's value range.")
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def cosine(a: Any, ref: Any) -> float:
    """Cosine similarity of the flattened arrays; 1 when both are zero, 0 when only one is."""
    x, r = _pair(a, ref)
    nx, nr = float(np.linalg.norm(x.ravel())), float(np.linalg.norm(r.ravel()))
    if nx == 0.0 or nr == 0.0:
        return 1.0 if nx == nr else 0.0
    return float(np.dot(x.ravel(), r.ravel()) / (nx * nr))


METRICS: dict[str, Callable[..., float]] = {"rel_l2": rel_l2, "psnr": psnr, "cosine": cosine}
HIGHER_IS_BETTER: dict[str, bool] = {"rel_l2": False, "psnr": True, "cosine": True}


def _metric(name: str) -> Callable[..., float]:
    if name not in METRICS:
        raise ProCacheError("metric", f"is {name!r}, not a known metric.", f"use one of {sorted(METRICS)}.")
    return METRICS[name]


def best_index(scores: Sequence[float], metric: str = "rel_l2") -> int:
    """Index of the best score (first on ties); NaN counts as the worst possible score."""
    _metric(metric)
    if not scores:
        raise ProCacheError("candidates", "is empty.", "pass at least one candidate schedule.")
    hi = HIGHER_IS_BETTER[metric]

    def key(i: int) -> tuple[float, int]:
        s = float(scores[i])
        if math.isnan(s):
            return (math.inf, i)
        return ((-s if hi else s), i)

    return min(range(len(scores)), key=key)


def score_candidates(candidates: Sequence[T], run_fn: Callable[[T], Any], reference: Any,
                     metric: str = "rel_l2") -> tuple[T, list[float]]:
    """Run every candidate and score its output against ``reference``; returns (best, scores).

    ``run_fn(candidate)`` produces the output to compare (same shape as ``reference``). ``scores`` is in
    candidate order. Best is the lowest score for rel_l2 and the highest for psnr / cosine; ties go to
    the earlier candidate and NaN never wins.
    """
    fn = _metric(metric)
    cands = list(candidates)
    if not cands:
        raise ProCacheError("candidates", "is empty.", "pass at least one candidate schedule.")
    ref = to_numpy(reference)
    scores = [float(fn(run_fn(c), ref)) for c in cands]
    return cands[best_index(scores, metric)], scores
