"""The quality bench's real data: scikit-learn's handwritten digits, and a feature net trained on them.

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grey-scale scans of handwritten digits (UCI
optical recognition data set) inside the scikit-learn package, so nothing is downloaded at run time.
Images are upscaled (bilinear) to `size` x `size` and mapped to [-1, 1]; labels 0..9 are the classes.

`FeatureNet` is a small CNN classifier trained here on the same images; its penultimate layer
(64-d) is the feature space of the FID-style Fréchet distance in the quality bench (an Inception net
would be meaningless on 16x16 digits and cannot be downloaded anyway).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ASSETS = Path(__file__).resolve().parent / "assets"
FEATNET_PATH = ASSETS / "digits_featnet.safetensors"
FEATNET_SEED = 0


def load_digits_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, size, size) float32 in [-1, 1] and labels (N,) int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0)[:, None]  # (N,1,8,8) in [0,1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).mul(2).sub(1)
    y = torch.from_numpy(d.target).long()
    return x.contiguous(), y


def split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train / test index split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Augmentation: shift each image by up to `max_shift` pixels (edge-padded with background -1)."""
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


class FeatureNet(nn.Module):
    """Small CNN digit classifier; `features()` gives the 64-d penultimate activations."""

    def __init__(self, feat_dim: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Linear(64 * 16, feat_dim)
        self.head = nn.Linear(feat_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 16:
            x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_featnet(epochs: int = 15, seed: int = FEATNET_SEED, log=print) -> tuple[FeatureNet, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_digits_images(16)
    tr, te = split(len(x))
    net = FeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb = random_shift(x[idx], gen)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[te]).argmax(1) == y[te]).float().mean().item()
    info = {"seed": seed, "epochs": epochs, "test_accuracy": round(acc, 4),
            "train_seconds": round(time.time() - t0, 1), "n_train": len(tr), "n_test": len(te)}
    log(f"[featnet] test accuracy {acc:.4f} after {epochs} epochs ({info['train_seconds']} s)")
    return net, info


def load_or_train_featnet(log=print) -> tuple[FeatureNet, dict]:
    """The bundled feature net (benchmarks/assets), or a deterministic retrain when it is missing."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    if FEATNET_PATH.exists():
        net = FeatureNet()
        net.load_state_dict(load_file(str(FEATNET_PATH)))
        with safe_open(str(FEATNET_PATH), "pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
        return net.eval(), info
    net, info = train_featnet(log=log)
    ASSETS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(FEATNET_PATH),
              metadata={"info": json.dumps(info)})
    return net, info


@torch.no_grad()
def features(net: FeatureNet, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([net.features(x[i:i + batch].float().clamp(-1, 1)) for i in range(0, len(x), batch)])
