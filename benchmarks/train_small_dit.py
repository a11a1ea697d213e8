"""Trains the quality bench's small class-conditional DiT on real data (scikit-learn digits, 16x16).

The model is `procache_core.reference_dit.DiT` (the same adaLN-Zero architecture and the same engine
hooks as DiT-XL/2, only smaller: 8 blocks, width 64, 4 heads, patch 2 on 12x12 digits -> a 6x6 token grid), trained as
DiT is: eps prediction with DiT's linear noise schedule (1000 steps, betas 1e-4..0.02), 10% label dropout
for classifier-free guidance, AdamW, EMA of the weights (the EMA weights are what is saved).

Deterministic for a given seed and step count on one machine (single process, fixed generator); a wall
clock cap (`--time-budget`) stops early if the machine is slow, and the number of steps actually run is
recorded in the file's metadata together with the seed, time and loss.

    python -m benchmarks.train_small_dit [--steps 2500] [--time-budget 1500] [--threads 1] [--out benchmarks/assets/digits_dit.safetensors]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import LossLog, train_steps
from .data import ASSETS, load_digits_images

DIT_PATH = ASSETS / "digits_dit.safetensors"
IMAGE_SIZE = 12  # digits upscaled 8 -> 12 px: a 6x6 token grid with patch 2 (cheap enough to train on a CPU)
MODEL_CONFIG = dict(input_size=IMAGE_SIZE, patch_size=2, in_channels=1, hidden_size=64, depth=8, num_heads=4,
                    num_classes=10, learn_sigma=False)
DEFAULTS = dict(seed=0, steps=2500, batch=64, lr=2e-3, warmup=100, ema=0.998, label_dropout=0.1)


def build_model(zero_init: bool = True):
    from procache_core.reference_dit import DiT

    return DiT(**MODEL_CONFIG, zero_init=zero_init)


def train(steps: int = DEFAULTS["steps"], seed: int = DEFAULTS["seed"], batch: int = DEFAULTS["batch"],
          lr: float = DEFAULTS["lr"], time_budget: float | None = 1500.0, log=print):
    from procache_core.reference_dit import _alphas_cumprod

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = load_digits_images(IMAGE_SIZE)
    n = len(x_all)
    ab = torch.tensor(_alphas_cumprod(), dtype=torch.float32)
    model = build_model().train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rec = LossLog(log, "[train]")
    t0 = rec.t0

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(0, n, (batch,), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        drop = torch.rand(batch, generator=gen) < DEFAULTS["label_dropout"]
        y[drop] = model.null_class
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(model(xt, t.float(), y), noise)

    done = train_steps(model, ema, opt, batch_loss, steps=steps, lr=lr, warmup=DEFAULTS["warmup"],
                       ema_rate=DEFAULTS["ema"], time_budget=time_budget, rec=rec)
    info = {
        "model_config": MODEL_CONFIG, "seed": seed, "steps_requested": steps, "steps_run": done,
        "batch": batch, "lr": lr, "ema": DEFAULTS["ema"], "label_dropout": DEFAULTS["label_dropout"],
        "train_seconds": round(time.time() - t0, 1), "final_loss_avg100": rec.final_avg100(),
        "loss_curve": rec.curve, "data": f"sklearn.datasets.load_digits, 1797 images, bilinear 8->{IMAGE_SIZE} px, [-1,1]",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    return ema, info


def save(model, info: dict, path: Path = DIT_PATH) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # fp16 storage keeps the bundled file small (~1.3 MB); the bench loads it back as float32.
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
          if k != "pos_embed"}
    save_file(sd, str(path), metadata={"info": json.dumps(info)})


def load(path: Path = DIT_PATH):
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = build_model()
    sd = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if k != "pos_embed"]:
        raise RuntimeError(f"digits DiT weights do not match the model: missing {missing}, unexpected {unexpected}")
    with safe_open(str(path), "pt") as f:
        info = json.loads((f.metadata() or {}).get("info", "{}"))
    return model.eval(), info


def load_or_train(log=print, **kw):
    """The bundled weights, or a deterministic retrain (same seed and steps) when they are missing."""
    if DIT_PATH.exists():
        return load()
    log(f"[train] {DIT_PATH} missing: training the digits DiT (a few CPU minutes)")
    model, info = train(log=log, **kw)
    save(model, info)
    return load()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--time-budget", type=float, default=1500.0, help="seconds; 0 = no cap")
    ap.add_argument("--out", type=Path, default=DIT_PATH)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, info = train(steps=args.steps, seed=args.seed, time_budget=args.time_budget or None,
                        log=lambda m: print(m, flush=True))
    save(model, info, args.out)
    print(json.dumps({k: v for k, v in info.items() if k != "loss_curve"}, indent=1))


if __name__ == "__main__":
    main()
