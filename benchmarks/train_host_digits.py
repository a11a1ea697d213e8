"""Trains the digits demo models in the host's own architectures (Flux, PixArt-α) on the CPU.

The model objects are the host's (`nodes.demo.digits.build_model`: comfy.model_base.Flux / PixArt built
from the host's model config), trained through the host's own `apply_model` and model sampling, so the
parameterisation is exactly what ComfyUI's samplers use: flow matching (velocity) for Flux; for PixArt-α
v-prediction on its own sqrt-linear DDPM noise levels (the host's ModelType.V_PREDICTION; why not the released
models' eps: nodes/demo/digits.py, MODEL_TYPES). Loss: the MSE of the network's own output. Data: scikit-learn's 1,797 digits (bilinear 8 -> 32 px, [-1, 1])
through the fixed linear map of nodes/demo/digits.py; condition: the digit's fixed embedding on the
text-embedding input, 10% dropped to the "no digit" embedding for classifier-free guidance. AdamW with
warm-up, EMA weights saved (fp16) to nodes/demo/weights/digits_<family>.safetensors with the config,
seed, steps, time and loss in the metadata.

Deterministic for a seed and step count on one machine; `--time-budget` stops early on a slow machine
(steps actually run are recorded).

    python -m benchmarks.train_host_digits --family flux [--steps 3000] [--time-budget 900] [--threads 1]
    python -m benchmarks.train_host_digits --family pixart --threads 2   # the shipped file: 4000 steps, 430 s
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from .common import LossLog, digits_module, train_steps

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "nodes" / "demo" / "weights"
DEFAULTS = dict(seed=0, steps=4000, batch=64, lr=1.5e-3, warmup=100, ema=0.998, label_dropout=0.1)


def weights_path(family: str) -> Path:
    return WEIGHTS / f"digits_{family}.safetensors"


def init_weights(net: torch.nn.Module, seed: int) -> None:
    """The host builds modules without initialising them; a DiT-style init: fan-in normal weights, zero
    biases, unit norm scales, zero modulation and output layers (every block starts as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if name.endswith(".scale") or "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            elif name == "scale_shift_table" or name.endswith(".scale_shift_table"):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                p.zero_()
            if any(k in name for k in ("_mod.lin.", "modulation.lin.", "final_layer.linear.",
                                       "final_layer.adaLN_modulation", "t_block.1.")):
                p.zero_()


def _out_of_place_iadd(self, other):
    return self + other


def cond_kwargs(family: str, labels: torch.Tensor, tables) -> dict:
    tok, pooled = tables
    kw = {"c_crossattn": tok[labels]}
    if family == "flux":
        kw["y"] = pooled[labels]
    return kw


def train(family: str, steps: int = DEFAULTS["steps"], seed: int = DEFAULTS["seed"], batch: int = DEFAULTS["batch"],
          lr: float = DEFAULTS["lr"], time_budget: float | None = 900.0, log=print, init: Path | None = None):
    """Trains from scratch, or (`init`) continues from saved EMA weights as a further stage: the stages'
    settings, steps and times are kept in the metadata so the file can be reproduced stage by stage."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host()
    from .data import load_digits_images

    dg = digits_module()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    img, labels_all = load_digits_images(dg.IMAGE_SIZE)
    x_all = dg.image_to_model(img, family)
    tables = dg.embeddings()
    model = dg.build_model(family)
    net = model.diffusion_model
    init_weights(net, seed)
    previous: list[dict] = []
    if init is not None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        net.load_state_dict({k: v.float() for k, v in load_file(str(init)).items()})
        with safe_open(str(init), "pt") as f:
            prev = json.loads((f.metadata() or {}).get("procache_demo", "{}"))
        previous = prev.pop("stages", []) + [{k: v for k, v in prev.items() if k not in ("loss_curve",)}]
        torch.manual_seed(seed + 1000 * len(previous))
        gen = torch.Generator().manual_seed(seed + 1000 * len(previous))
    net.eval()  # no dropout in either model; PixArt would do its own (CUDA-only) caption drop in train mode
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    ms = model.model_sampling
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    n = len(x_all)
    # The host's blocks update their residual stream in place (`img += ...`), which is right for
    # inference but breaks autograd; while training, `+=` on tensors is the same sum out of place.
    saved_iadd = torch.Tensor.__iadd__
    torch.Tensor.__iadd__ = _out_of_place_iadd
    try:
        ema, info = _loop(family, model, net, ema, ms, opt, x_all, labels_all, tables, steps, seed, batch, lr,
                          time_budget, gen, log)
    finally:
        torch.Tensor.__iadd__ = saved_iadd
    if previous:
        info["stages"] = previous
        info["steps_total"] = sum(p.get("steps_run", 0) for p in previous) + info["steps_run"]
        info["train_seconds_total"] = round(sum(p.get("train_seconds", 0) for p in previous) + info["train_seconds"], 1)
    else:
        info["steps_total"], info["train_seconds_total"] = info["steps_run"], info["train_seconds"]
    return ema, info


def loss_weight(family: str, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample weight of the eps-space squared error that makes the loss the plain MSE of the network's own
    output: 1 for Flux (under flow matching, (x - x0) / sigma is the velocity itself) and 1 + sigma^2 for
    PixArt's v-prediction (a v error e moves (x - x0) / sigma by e / sqrt(1 + sigma^2))."""
    if digits_module().MODEL_TYPES[family] == "V_PREDICTION":
        return 1.0 + sigma ** 2
    return torch.ones_like(sigma)


def _loop(family, model, net, ema, ms, opt, x_all, labels_all, tables, steps, seed, batch, lr, time_budget, gen,
          log):
    dg = digits_module()
    sigmas = ms.sigmas.float()
    n = len(x_all)
    rec = LossLog(log, f"[train {family}]")
    t0 = rec.t0

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(0, n, (batch,), generator=gen)
        x0, y = x_all[idx], labels_all[idx].clone()
        y[torch.rand(batch, generator=gen) < DEFAULTS["label_dropout"]] = dg.NULL_DIGIT
        sig = sigmas[torch.randint(0, len(sigmas), (batch,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        s4 = sig.view(-1, 1, 1, 1)
        x = ms.noise_scaling(s4, noise, x0)
        den = model.apply_model(x, sig, **cond_kwargs(family, y, tables))
        return (loss_weight(family, s4) * ((x - den) / s4 - (x - x0) / s4) ** 2).mean()

    done = train_steps(net, ema, opt, batch_loss, steps=steps, lr=lr, warmup=DEFAULTS["warmup"],
                       ema_rate=DEFAULTS["ema"], time_budget=time_budget, rec=rec)
    info = {
        "family": family, "unet_config": dg.CONFIGS[family], "seed": seed, "steps_requested": steps,
        "steps_run": done, "batch": batch, "lr": lr, "ema": DEFAULTS["ema"],
        "label_dropout": DEFAULTS["label_dropout"], "model_type": dg.MODEL_TYPES[family],
        "loss": "MSE of the network output (" + dg.MODEL_TYPES[family].lower() + ")", "train_seconds": round(time.time() - t0, 1),
        "final_loss_avg100": rec.final_avg100(), "loss_curve": rec.curve,
        "data": f"sklearn.datasets.load_digits, 1797 images, bilinear 8->{dg.IMAGE_SIZE} px, [-1,1]",
        "params": sum(p.numel() for p in net.parameters()), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return ema, info


def save(net: torch.nn.Module, info: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(path), metadata={"procache_demo": json.dumps(info)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["flux", "pixart"], required=True)
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    ap.add_argument("--time-budget", type=float, default=900.0, help="seconds; 0 = no cap")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from these saved weights (a further training stage, recorded in the metadata)")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net, info = train(args.family, steps=args.steps, seed=args.seed, batch=args.batch, lr=args.lr,
                      time_budget=args.time_budget or None, log=lambda m: print(m, flush=True), init=args.init)
    save(net, info, args.out or weights_path(args.family))
    print(json.dumps({k: v for k, v in info.items() if k != "loss_curve"}, indent=1))


if __name__ == "__main__":
    main()


def sample_in_process(family: str, labels: torch.Tensor, steps: int = 20, cfg: float = 3.0,
                      sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
                      path: Path | None = None) -> torch.Tensor:
    """Images (B,1,32,32) sampled in this process by the host's comfy.sample.sample from the saved weights
    (a quick check while training; the tests and benches go through the real server)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    from safetensors.torch import load_file

    dg = digits_module()
    sd = {k: v.float() for k, v in load_file(str(path or weights_path(family))).items()}
    mp = comfy.model_patcher.ModelPatcher(dg.build_model(family, sd), load_device=mm.get_torch_device(),
                                          offload_device=mm.unet_offload_device())
    tok, pooled = dg.embeddings()
    null = torch.full_like(labels, dg.NULL_DIGIT)
    pos = [[tok[labels], {"pooled_output": pooled[labels]}]]
    neg = [[tok[null][:1], {"pooled_output": pooled[null][:1]}]]
    h, w = dg.LATENT_HW[family]
    latent = torch.zeros(len(labels), dg.LATENT_CHANNELS[family], h, w)
    noise = comfy.sample.prepare_noise(latent, seed)
    out = comfy.sample.sample(mp, noise, steps, cfg, sampler, scheduler, pos, neg, latent, seed=seed,
                              disable_pbar=True)
    return dg.decode(out)


def check_accuracy(family: str, n: int = 100, **kw) -> float:
    from .data import load_or_train_featnet

    labels = torch.arange(n) % 10
    img = sample_in_process(family, labels, **kw).clamp(-1, 1)
    net, _ = load_or_train_featnet(log=lambda m: None)
    with torch.no_grad():
        return (net(img).argmax(1) == labels).float().mean().item()
