"""Image-quality metrics used by the quality bench, implemented in torch / numpy (no extra packages).

All functions take image batches shaped (N, C, H, W) with values in [-1, 1] unless noted.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB (N,). Identical images give +inf."""
    mse = (x.double() - ref.double()).flatten(1).pow(2).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image relative L2 error ||x - ref|| / ||ref|| (N,)."""
    d = (x.double() - ref.double()).flatten(1).norm(dim=1)
    return d / ref.double().flatten(1).norm(dim=1).clamp_min(1e-12)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, win_size: int = 7,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with a Gaussian window, averaged over channels (N,).

    Uses the standard constants K1 = 0.01, K2 = 0.03 and 'valid' filtering (no padding), like
    skimage.metrics.structural_similarity(gaussian_weights=True) does with a smaller window; the
    window is shrunk to the image size for tiny images.
    """
    x = x.double()
    ref = ref.double()
    n, c, h, w = x.shape
    win_size = min(win_size, h, w)
    if win_size % 2 == 0:
        win_size -= 1
    win = _gaussian_window(win_size, sigma).to(x.device)[None, None].repeat(c, 1, 1, 1)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def filt(t):
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(ref)
    sxx = filt(x * x) - mu_x ** 2
    syy = filt(ref * ref) - mu_y ** 2
    sxy = filt(x * ref) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) / 2.0)
    vals = np.clip(vals, 0.0, None)
    return (vecs * np.sqrt(vals)) @ vecs.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples), as in FID.

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), computed with symmetric
    eigen-decompositions (stable for PSD matrices, no scipy needed).
    """
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1, rowvar=False)
    s2 = np.cov(f2, rowvar=False)
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    d2 = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))
    return max(d2, 0.0)
