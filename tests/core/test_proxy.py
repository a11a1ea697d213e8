"""Proxy metrics and candidate scoring."""
from __future__ import annotations

import math

import numpy as np
import pytest

from procache_core import proxy
from procache_core.errors import ProCacheError


def test_rel_l2():
    ref = np.array([3.0, 4.0])
    assert proxy.rel_l2(ref, ref) == 0.0
    assert math.isclose(proxy.rel_l2(np.array([3.0, 5.0]), ref), 1 / 5)
    assert proxy.rel_l2(np.zeros(2), np.zeros(2)) == 0.0
    assert proxy.rel_l2(np.ones(2), np.zeros(2)) == math.inf


def test_psnr():
    ref = np.linspace(0, 1, 100).reshape(10, 10)
    assert proxy.psnr(ref, ref) == math.inf
    noisy = ref + 0.1
    assert math.isclose(proxy.psnr(noisy, ref), 10 * math.log10(1 / 0.01))
    assert math.isclose(proxy.psnr(noisy, ref, data_range=2.0), 10 * math.log10(4 / 0.01))
    assert math.isfinite(proxy.psnr(np.ones(4), np.zeros(4)))  # constant reference: range falls back to 1
    with pytest.raises(ProCacheError):
        proxy.psnr(noisy, ref, data_range=0)


def test_cosine():
    a = np.array([1.0, 0.0])
    assert math.isclose(proxy.cosine(a, a), 1.0)
    assert math.isclose(proxy.cosine(np.array([0.0, 1.0]), a), 0.0, abs_tol=1e-12)
    assert math.isclose(proxy.cosine(-a, a), -1.0)
    assert proxy.cosine(np.zeros(2), np.zeros(2)) == 1.0


def test_shape_mismatch_names_field():
    with pytest.raises(ProCacheError) as ei:
        proxy.rel_l2(np.zeros(3), np.zeros(4))
    assert ei.value.field == "output"


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    ref = torch.linspace(-1, 1, 64, dtype=torch.bfloat16).reshape(1, 4, 4, 4)
    out = ref.float() * 1.01
    for name, fn in proxy.METRICS.items():
        v_t = fn(out, ref)
        v_n = fn(out.numpy(), ref.float().numpy())
        assert math.isclose(v_t, v_n, rel_tol=1e-9), name


def test_score_candidates_direction():
    ref = np.arange(10, dtype=float)
    outputs = {"a": ref + 1.0, "b": ref + 0.1, "c": ref * -1}
    best, scores = proxy.score_candidates(["a", "b", "c"], outputs.__getitem__, ref, "rel_l2")
    assert best == "b"
    assert scores == [proxy.rel_l2(outputs[c], ref) for c in "abc"]  # candidate order
    assert proxy.score_candidates(["a", "b", "c"], outputs.__getitem__, ref, "psnr")[0] == "b"
    assert proxy.score_candidates(["c", "a"], outputs.__getitem__, ref, "cosine")[0] == "a"


def test_score_candidates_ties_and_nan():
    ref = np.ones(3)
    best, _ = proxy.score_candidates([1, 2], lambda c: ref, ref)
    assert best == 1
    assert proxy.best_index([float("nan"), 0.5]) == 1
    assert proxy.best_index([float("nan"), 3.0], "psnr") == 1


def test_score_candidates_errors():
    with pytest.raises(ProCacheError) as ei:
        proxy.score_candidates([], lambda c: c, np.zeros(1))
    assert ei.value.field == "candidates"
    with pytest.raises(ProCacheError) as ei:
        proxy.score_candidates([1], lambda c: np.zeros(1), np.zeros(1), metric="fid")
    assert ei.value.field == "metric"
    assert set(proxy.METRICS) == set(proxy.HIGHER_IS_BETTER)
