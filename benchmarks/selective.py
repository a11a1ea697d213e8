"""Do selective steps help? The digits quality bed, same schedules with S steps run as C vs as S.

    python -m benchmarks.selective [--samples 100] [--out benchmarks/results/raw/selective_quick.json]

For each budget (10, 13, 17) the searched ProCache schedule of the quality bench
(``results/raw/quality_quick.json``) is run with selective steps off (every S is a C step: the
baseline) and with several selective settings: the constant ratio and the reference-style ratio
schedule, at the paper's depth (deepest 25 % of blocks) and deeper, plus the upper bound where the
selected blocks recompute every token. PSNR and FD-full are against full compute on the same seeds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from procache_core.settings import ScoreWeights, SelectiveSettings

from . import metrics
from .common import run_stamp, stamp_raw
from .quality import Method, features, load_or_train_featnet, sample_set
from .train_small_dit import load_or_train

RESULTS = Path(__file__).resolve().parent / "results" / "raw"

# name -> settings (None: selective steps off, the baseline); run at every budget
SETTINGS: dict[str, SelectiveSettings | None] = {
    "off (S run as C)": None,
    "constant 0.3, deepest 25%": SelectiveSettings(ratio=0.3),
    "reference-dit 0.07, deepest 25%": SelectiveSettings(ratio=0.07, ratio_schedule="reference-dit"),
}
# explored at the first budget only: where could selective steps help?
EXPLORE: dict[str, SelectiveSettings] = {
    "constant 0.3, all blocks": SelectiveSettings(ratio=0.3, depth_fraction=1.0),
    "reference-dit 0.07, all blocks": SelectiveSettings(ratio=0.07, ratio_schedule="reference-dit",
                                                        depth_fraction=1.0),
    "every token, deepest 25%": SelectiveSettings(ratio=1.0),
    "every token, all blocks": SelectiveSettings(ratio=1.0, depth_fraction=1.0),
    # where along the depth does recomputing the MLPs matter?
    "every token, deepest 50%": SelectiveSettings(ratio=1.0, depth_fraction=0.5),
    "every token, deepest 75%": SelectiveSettings(ratio=1.0, depth_fraction=0.75),
    "constant 0.3, deepest 50%": SelectiveSettings(ratio=0.3, depth_fraction=0.5),
    # is the attention-free token score better than an arbitrary pick? (staleness only ~ round robin)
    "constant 0.3, all blocks, staleness only": SelectiveSettings(
        ratio=0.3, depth_fraction=1.0, weights=ScoreWeights(staleness=1.0, input_change=0.0, output_norm=0.0,
                                                            spatial=0.0)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--budgets", default="10,13,17")
    ap.add_argument("--out", default=str(RESULTS / "selective_quick.json"))
    ap.add_argument("--only", default="", help="';'-separated setting names to run at every budget instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    stamp = run_stamp()
    quality = json.loads((RESULTS / "quality_quick.json").read_text())
    scheds = {r["budget"]: r["schedule"] for r in quality["rows"] if r["method"] == "procache"}
    model, _ = load_or_train(log=print)
    featnet, _ = load_or_train_featnet(log=print)
    T = quality["T"]
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(args.samples, model.in_channels, model.input_size, model.input_size, generator=g)
    labels = torch.arange(args.samples) % model.num_classes
    full_x, _ = sample_set(model, noise, labels, T, Method("full", "full"), 100)
    fc = full_x.clamp(-1, 1)
    f_full = features(featnet, fc).numpy()
    rows = []
    budgets = [int(b) for b in args.budgets.split(",")]
    for B in budgets:
        todo = dict(SETTINGS) | (EXPLORE if B == budgets[0] else {})
        if args.only:
            every = dict(SETTINGS) | EXPLORE
            todo = {name: every[name] for name in args.only.split(";")}
        for name, sel in todo.items():
            m = Method("procache+sel" if sel else "procache", name, schedule=scheds[B], selective=sel is not None,
                       budget=B)
            x, acct = sample_set(model, noise, labels, T, m, 100, sel)
            xc = x.clamp(-1, 1)
            row = {"budget": B, "setting": name, "selective": sel.to_dict() if sel else None,
                   "block_eval_fraction": acct["block_eval_fraction"], "flops_fraction": acct["flops_fraction"],
                   "psnr": float(metrics.psnr(xc, fc).clamp(max=100).mean()),
                   "fd_full": metrics.frechet_distance(features(featnet, xc).numpy(), f_full)}
            rows.append(row)
            print(f"B={B:<3d} {name:<42s} blocks {row['block_eval_fraction']:.3f}  PSNR {row['psnr']:6.2f}  "
                  f"FD-full {row['fd_full']:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamp_raw({"T": T, "n_samples": args.samples, "schedules": scheds, "rows": rows,
                                         "seconds": round(time.time() - t0, 1)}, stamp), indent=1))
    print(f"wrote {out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
