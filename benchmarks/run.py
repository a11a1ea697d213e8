"""`make bench`: speed and quality benchmarks of ProCache against full compute and the host's caches.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--only speed|quality] [--out DIR]

--medium  CPU speed cases at the paper's token counts (DiT-XL/2 256 px = 256 tokens, PixArt-α 512 px = 1024
          tokens, full width, CFG batch, paper schedules) but 4 of the 28 blocks; about 25 minutes on 2 cores.
          Writes raw/speed_medium_<device>_<arch>.json; the README (quick or full mode) shows it as its own section.
          --medium-cases dit,pixart picks the cases (e.g. to run them in two processes).
--deep    CPU speed cases of the real 28-block architectures at the paper's token counts (DiT-XL/2 T=20 and 50:
          full, uniform, ProCache, ProCache + selective, ProCache + forecast (block reuse, order 2) and step reuse
          + forecast (order 1); PixArt-α T=20: the same without uniform),
          two timed runs per method for DiT-XL/2, one for PixArt-α, after a 2-step warm-up; about 40 minutes with the two cases run as two
          single-thread processes (--deep-cases dit / pixart). Writes raw/speed_deep_<device>_<arch>.json.
--quick   the CPU setting (6 minutes on an idle 2-core machine, under 30 when shared): speed cases use 8 of the 28 blocks at full width
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
        # (deepest 2 selective), latent 8x8 = 16 tokens, batch 1.
        return [
            dict(arch="pixart", T=20, depth=4, latent_hw=(64, 2), repeats=3),
            dict(arch="pixart", T=50, depth=4, latent_hw=(64, 2), repeats=3),
            dict(arch="dit", T=50, depth=8, latent=8, batch=1, repeats=3),
            dict(arch="dit", T=20, depth=8, latent=8, batch=1, repeats=3),
        ]
    return [
        dict(arch="pixart", T=20, depth=28, latent_hw=(64, 64), repeats=5),
        dict(arch="pixart", T=50, depth=28, latent_hw=(64, 64), repeats=5),
        dict(arch="dit", T=20, depth=28, latent=32, batch=4, repeats=5),
        dict(arch="dit", T=50, depth=28, latent=32, batch=4, repeats=5),
    ]


MEDIUM_DEPTH = 4


def medium_plan(cases: tuple[str, ...] = ("dit", "pixart")) -> list[dict]:
    # Paper token counts on a CPU: full width 1152 / 16 heads, CFG batch (2 rows per image), paper schedules,
    # 4 of the 28 blocks (one 4-block DiT step at 256 tokens x 2 takes ~1 s on one core).
    plan = []
    if "dit" in cases:
        plan.append(dict(arch="dit", T=50, depth=MEDIUM_DEPTH, latent=32, batch=1, repeats=3,
                         methods=("uniform", "easycache", "lazycache", "procache", "procache+sel")))
    if "pixart" in cases:
        plan.append(dict(arch="pixart", T=20, depth=MEDIUM_DEPTH, latent_hw=(64, 64), repeats=3,
                         methods=("uniform", "procache", "procache+sel")))
    return plan


def deep_plan(cases: tuple[str, ...] = ("dit", "pixart")) -> list[dict]:
    """Cases "dit", "pixart", or one step count of an architecture such as "dit:50"."""
    plan = [c for c in _deep_cases() if c["arch"] in cases or f"{c['arch']}:{c['T']}" in cases]
    if not plan:
        raise SystemExit(f"--deep-cases {','.join(cases)}: no such case (use dit, pixart, dit:20, dit:50, pixart:20)")
    return plan


def _deep_cases() -> list[dict]:
    # The real depth (28 blocks) at the paper's token counts; one 28-block DiT step at 256 tokens x 2 takes
    # ~6 s on one core, a PixArt-α step at 1024 tokens x 2 ~38 s, so one timed run per method.
    from .speed import FORECAST, STEP_FORECAST

    plan = [dict(arch="dit", T=T, depth=28, latent=32, batch=1, repeats=repeats, warmup_T=2,
                 methods=("uniform", "procache", "procache+sel", FORECAST, STEP_FORECAST))
            for T, repeats in ((20, 2), (50, 2))]
    plan.append(dict(arch="pixart", T=20, depth=28, latent_hw=(64, 64), repeats=1, warmup_T=2,
                     methods=("procache", "procache+sel", FORECAST, STEP_FORECAST)))
    return plan


def load_medium(out: Path, device: str, tag: str = "medium") -> list[dict]:
    """The saved --medium (or --deep) cases (one JSON per architecture), DiT first."""
    cases = []
    for arch in ("dit", "pixart"):
        p = out / "raw" / f"speed_{tag}_{device}_{arch}.json"
        if p.exists():
            d = json.loads(p.read_text())
            for c in d["cases"]:
                c.setdefault("info", d.get("info", {}))
                cases.append(c)
    return cases


def run_saved_cases(out: Path, device: str, tag: str, info: dict, plan: list[dict]) -> None:
    """Runs `plan` and saves each case in raw/speed_<tag>_<device>_<arch>.json, replacing a saved case
    of the same step count (so one file holds e.g. the DiT T=20 and T=50 cases)."""
    from .common import write_json

    tinfo = {**info, "mode": tag}
    for case in plan:
        log(f"[bench] {tag} speed case {case['arch']} T={case['T']}")
        t1 = time.time()
        res = run_speed(False, device, plan=[case])
        tinfo["bench_seconds"] = round(time.time() - t1, 1)
        p = out / "raw" / f"speed_{tag}_{device}_{case['arch']}.json"
        prev = json.loads(p.read_text())["cases"] if p.exists() else []
        prev = [c for c in prev if c["T"] != res[0]["T"]]
        for c in res:
            c["info"] = dict(tinfo)
        write_json(p, {"info": tinfo, "cases": sorted(prev + res, key=lambda c: c["T"])})


def run_speed(quick: bool, device: str, plan: list[dict] | None = None, pixart_patch=None,
              on_case=None) -> list[dict]:
    """Every case of ``plan``; ``on_case(cases so far)`` after each one, so a run stopped part way (a GPU lease
    that runs out) keeps the cases it finished."""
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
        if on_case is not None:
            on_case(out)
    return out


def git_commit() -> str | None:
    """The commit the bench ran on (benchmarks.common.code_commit)."""
    from .common import code_commit

    return code_commit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized settings (about 30 minutes)")
    ap.add_argument("--medium", action="store_true",
                    help="CPU speed cases at the paper's token counts with 4 blocks (speed only; about 25 minutes)")
    ap.add_argument("--medium-cases", default="dit,pixart", help="with --medium: comma list of dit, pixart")
    ap.add_argument("--deep", action="store_true",
                    help="CPU speed cases of the 28-block architectures (speed only; about 40 minutes)")
    ap.add_argument("--deep-cases", default="dit,pixart",
                    help="with --deep: comma list of dit, pixart (or one case: dit:20, dit:50, pixart:20)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--only", choices=["speed", "quality", "host"], default=None,
                    help="host = the in-host quality bench of the trained digits models (real ComfyUI server)")
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
    if (args.medium or args.deep) and device == "cpu":
        mode = "quick"  # the README it refreshes is the CPU (quick) one
        args.quick = True  # (for its notes; --medium runs no quick case)
    if device == "cpu" and not args.quick:
        log("[bench] full mode on a CPU takes hours; use --quick for the CPU setting")
    out = args.out
    (out / "raw").mkdir(parents=True, exist_ok=True)
    info = machine_info(device)
    info["mode"] = mode
    info["reused_adaln"] = "gate rows only"  # since procache_core.modulation (older raw JSON lacks the key)
    log(f"[bench] {mode} mode on {device}: {info.get('gpu') or info['cpu']}, torch {info['torch']}, "
        f"{info['torch_threads']} threads")
    t0 = time.time()
    quality_json = out / "raw" / f"quality_{mode}.json"
    speed_json = out / "raw" / f"speed_{mode}_{device}.json"
    speed_res = quality_res = speed_info = None
    if args.report_only:
        args.only = "none"
    for tag, on, plan_fn, cases in (("medium", args.medium, medium_plan, args.medium_cases),
                                    ("deep", args.deep, deep_plan, args.deep_cases)):
        if on:
            args.only = "none"  # only these speed cases; the other results are re-read from raw/
            run_saved_cases(out, device, tag, info, plan_fn(tuple(x.strip() for x in cases.split(",") if x.strip())))
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
    host_json = out / "raw" / f"host_quality_{mode}.json"
    host_res = None
    if args.only in (None, "host"):
        from .host_quality import run as run_host_quality

        log("[bench] in-host quality bench (trained digits models, real ComfyUI server)")
        commit = git_commit()  # the code the numbers come from: taken before the run starts
        host_res = run_host_quality(quick=args.quick, log=log)
        host_res["info"] = dict(info)
        host_res["commit"] = commit
        write_json(host_json, host_res)
    elif host_json.exists():
        host_res = json.loads(host_json.read_text())
    if args.only in (None, "speed"):
        log("[bench] speed bench")
        speed_res = run_speed(args.quick, device,
                              on_case=lambda done: write_json(speed_json, {"info": dict(info), "cases": done}))
        plot_speed(speed_res, out / f"speed_{device}.png")
        speed_info = dict(info)
    # a partial run (--only) keeps the other part's latest results of the same mode in the README
    if quality_res is None and quality_json.exists():
        from .quality import verdicts

        quality_res = json.loads(quality_json.read_text())
        quality_res["verdicts"] = verdicts(quality_res["rows"])
    if speed_res is None and speed_json.exists():
        saved = json.loads(speed_json.read_text())
        speed_res, speed_info = saved["cases"], saved.get("info")
        if args.report_only or args.medium or args.deep:
            info = {**saved.get("info", info), "mode": mode}
            plot_speed(speed_res, out / f"speed_{device}.png")
    if args.report_only and quality_res is not None:
        plot_quality(quality_res, out / "quality_vs_speedup.png")
    notes: list[str] = []
    if args.quick:
        notes.append("Quick mode: speed cases use full width (1152, 16 heads) but 4 (PixArt-α) or 8 (DiT-XL/2) of the "
                     "28 blocks, 16-32 image tokens and batch 1, so that a shared 2-core CPU "
                     "finishes; the non-block share of the work (embedders, final layer, sampler, "
                     "Python dispatch) is therefore larger than in the 28-block model at full resolution, which "
                     "lowers wall/ideal. At these token counts a selective step's MLP on a handful of tokens still reads "
                     "the whole MLP weight matrix, so it costs several times its FLOPs share (memory-bound); at "
                     "256-1024 tokens it is close to it (see the 28-block section). Run without --quick on a GPU for "
                     "the full-size figures.")
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
    if not (args.report_only or args.medium or args.deep):
        info["bench_seconds"] = round(time.time() - t0, 1)
    qp = "quality_vs_speedup.png" if quality_res else None
    spp = "samples.png" if quality_res and (out / "samples.png").exists() else None
    sp = f"speed_{device}.png" if speed_res else None
    medium = load_medium(out, device)
    if medium:
        plot_speed(medium, out / f"speed_medium_{device}.png")
    deep = load_medium(out, device, "deep")
    if deep:
        plot_speed(deep, out / f"speed_deep_{device}.png")
    path = write_readme(out, info, mode, speed_res, quality_res, notes, qp, spp, sp,
                        medium=medium or None, medium_plot=f"speed_medium_{device}.png" if medium else None,
                        deep=deep or None, deep_plot=f"speed_deep_{device}.png" if deep else None,
                        host=host_res, speed_info=speed_info)
    log(f"[bench] wrote {path} ({round(time.time() - t0, 1)} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
