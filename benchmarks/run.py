"""`make bench`: speed and quality benchmarks of ProCache against full compute and the host's caches.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--only speed|quality] [--out DIR]

--quick   the CPU setting (about 30 minutes on 2 cores): speed cases use 8 of the 28 blocks at full width
          and few tokens, 2-3 repeats; the quality bench uses 200 samples.
(default) the GPU setting: 28 blocks, DiT-XL/2 at 256 px (32x32 latent) batch 4, PixArt-α at 512 px
          (64x64 latent), 5 repeats, 1000 quality samples. On a CPU this takes hours.
Results: benchmarks/results/README.md, *.png, and raw JSON in benchmarks/results/raw/.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQS = HERE / "requirements.txt"


def ensure_requirements() -> None:
    """Installs the benchmark-only packages (scikit-learn, matplotlib) into this interpreter if missing."""
    missing = []
    for mod, pkg in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        print(f"[bench] installing benchmark requirements ({', '.join(missing)}) from {REQS}", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-r", str(REQS)])
        importlib.invalidate_caches()


def log(msg: str) -> None:
    print(msg, flush=True)


def speed_plan(quick: bool, device: str) -> list[dict]:
    if quick:
        # Sized for a shared 2-core CPU (one full-width block costs ~20 M MACs per token): full width 1152 /
        # 16 heads, fewer blocks and tokens. PixArt-α: 4 blocks (selective: the deepest 1 = 25%), latent 64x2
        # = 32 tokens (ComfyUI's PixArt position embedding needs (H+W)/2 >= 33 latent px). DiT-XL/2: 8 blocks
        # (deepest 2 selective), latent 8x8 = 16 tokens, batch 1. PixArt-α T=50 only in the full mode.
        return [
            dict(arch="pixart", T=20, depth=4, latent_hw=(64, 2), repeats=3),
            dict(arch="dit", T=50, depth=8, latent=8, batch=1, repeats=3),
            dict(arch="dit", T=20, depth=8, latent=8, batch=1, repeats=3),
        ]
    return [
        dict(arch="pixart", T=20, depth=28, latent_hw=(64, 64), repeats=5),
        dict(arch="pixart", T=50, depth=28, latent_hw=(64, 64), repeats=5),
        dict(arch="dit", T=20, depth=28, latent=32, batch=4, repeats=5),
        dict(arch="dit", T=50, depth=28, latent=32, batch=4, repeats=5),
    ]


def run_speed(quick: bool, device: str, plan: list[dict] | None = None, pixart_patch=None) -> list[dict]:
    from . import speed

    out = []
    for case in plan or speed_plan(quick, device):
        c = dict(case)
        arch = c.pop("arch")
        t0 = time.time()
        if arch == "dit":
            res = speed.dit_case(device=device, log=log, **c)
        else:
            res = speed.pixart_case(device=device, log=log, procache_fn=pixart_patch, **c)
        res["seconds"] = round(time.time() - t0, 1)
        log(f"  -> {res['arch']} T={res['T']}: " + ", ".join(
            f"{r['method']} {r['wall_speedup']:.2f}x" for r in res["rows"]) + f" ({res['seconds']} s)")
        out.append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized settings (about 30 minutes)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--only", choices=["speed", "quality"], default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite README.md and plots from the raw JSON of the last runs (no benchmarking)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    ensure_requirements()
    import torch

    from .common import machine_info, write_json
    from .report import plot_quality, plot_samples, plot_speed, write_readme

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        log("[bench] --device cuda but CUDA is not available")
        return 2
    mode = "quick" if args.quick else "full"
    if device == "cpu" and not args.quick:
        log("[bench] full mode on a CPU takes hours; use --quick for the CPU setting")
    out = args.out
    (out / "raw").mkdir(parents=True, exist_ok=True)
    info = machine_info(device)
    info["mode"] = mode
    log(f"[bench] {mode} mode on {device}: {info.get('gpu') or info['cpu']}, torch {info['torch']}, "
        f"{info['torch_threads']} threads")
    t0 = time.time()
    quality_json = out / "raw" / f"quality_{mode}.json"
    speed_json = out / "raw" / f"speed_{mode}_{device}.json"
    speed_res = quality_res = None
    if args.report_only:
        args.only = "none"
    if args.only in (None, "quality"):
        from .quality import run_quality

        log("[bench] quality bench")
        quality_res = run_quality(quick=args.quick, log=log)
        quality_res["info"] = dict(info)
        plot_quality(quality_res, out / "quality_vs_speedup.png")
        labs = ["full"] + [r["label"] for r in quality_res["rows"]
                           if r.get("budget") == 13 or (r["method"] in ("easycache", "lazycache")
                                                         and r.get("threshold") == 0.15)]
        plot_samples(quality_res, out / "samples.png", labs)
        write_json(quality_json, {k: v for k, v in quality_res.items() if k != "samples"})
    if args.only in (None, "speed"):
        log("[bench] speed bench")
        speed_res = run_speed(args.quick, device)
        plot_speed(speed_res, out / f"speed_{device}.png")
        write_json(speed_json, {"info": dict(info), "cases": speed_res})
    # a partial run (--only) keeps the other part's latest results of the same mode in the README
    if quality_res is None and quality_json.exists():
        from .quality import verdicts

        quality_res = json.loads(quality_json.read_text())
        quality_res["verdicts"] = verdicts(quality_res["rows"])
    if speed_res is None and speed_json.exists():
        saved = json.loads(speed_json.read_text())
        speed_res = saved["cases"]
        if args.report_only:
            info = {**saved.get("info", info), "mode": mode}
            plot_speed(speed_res, out / f"speed_{device}.png")
    if args.report_only and quality_res is not None:
        plot_quality(quality_res, out / "quality_vs_speedup.png")
    notes: list[str] = []
    if args.quick:
        notes.append("Quick mode: speed cases use full width (1152, 16 heads) but 4 (PixArt-α) or 8 (DiT-XL/2) of the "
                     "28 blocks, 16-32 image tokens and batch 1, and skip PixArt-α T=50, so that a shared 2-core CPU "
                     "finishes; the non-block share of the work (embedders, final layer, sampler, "
                     "Python dispatch) is therefore larger than in the 28-block model at full resolution, which "
                     "lowers wall/ideal. Run without --quick on a GPU for the full-size figures.")
    if device == "cpu":
        notes.append("Speed on a shared CPU: the wall clock includes time the process waited for a core (in these runs "
                     "it sometimes got a third of one), so the process CPU time (one torch thread) is reported too and "
                     "is the steadier of the two; targets are checked on both.")
    notes.append("Step-level caches (EasyCache, LazyCache) skip the whole model call, embedders and final layer "
                 "included, so they reach their ideal; block-level caches (uniform, ProCache) still run the "
                 "embedders, the per-block adaLN and the final layer on reused steps (ProCache recomputes adaLN by "
                 "design: the gates follow the current timestep). At the tiny token counts of --quick that fixed "
                 "work is a large share of a step (see the implied reused-step cost under each table); at 256-1024 "
                 "tokens it is a few percent.")
    notes.append("Quality: FD-real (to the 1,797 real digits) with 200 samples in 64-d features is dominated by "
                 "sample-size bias, and differences of a few units are noise (cached methods can score below full "
                 "compute); FD-full (to the full-compute samples of the same noise), PSNR and SSIM are the "
                 "discriminating metrics at this sample size.")
    notes.append("EasyCache/LazyCache: for PixArt-α the host's nodes run inside ComfyUI's own sampling path; for the "
                 "reference DiT the host's unmodified wrapper functions are called around our model "
                 "(benchmarks/hostcache.py). Host default settings (threshold 0.2, start 0.15, end 0.95) for speed; "
                 "a threshold sweep for quality.")
    if not args.report_only:
        info["bench_seconds"] = round(time.time() - t0, 1)
    qp = "quality_vs_speedup.png" if quality_res else None
    spp = "samples.png" if quality_res and (out / "samples.png").exists() else None
    sp = f"speed_{device}.png" if speed_res else None
    path = write_readme(out, info, mode, speed_res, quality_res, notes, qp, spp, sp)
    log(f"[bench] wrote {path} ({round(time.time() - t0, 1)} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
