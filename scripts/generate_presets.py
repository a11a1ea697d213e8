"""Writes the shipped presets in schedules/ deterministically.

    python scripts/generate_presets.py            # (re)write schedules/*.yaml
    python scripts/generate_presets.py --check    # exit 1 if schedules/ differs from what this writes

Two kinds of preset:

* the paper's reference patterns, recorded as data with their provenance;
* fast / balanced / quality presets per family and step count, made by one documented rule on the
  noise axis (``rule_schedule``): the shape of the paper's searched DiT-XL/2 pattern (long reuse at high
  noise, short at low noise) carried onto the target's noise levels with the tier's number of full steps.
  They are not searched for that family; ProCache Schedule Search (scripts/calibrate.py) tunes a schedule
  for the user's own model and sampler.

Every preset records the noise position (timestep percent) of each of its steps, so it behaves the same
under any sampler, scheduler, step count and denoise (nodes/run_plan.plan_run).

Every value that ends up in a file is fixed here (seeds, date), so reruns give identical files.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procache_core.presets import Preset, dump_preset, load_preset  # noqa: E402
from procache_core.schedule import Schedule, even_noise  # noqa: E402
from procache_core.settings import SelectiveSettings  # noqa: E402

DATE = "2026-11-23"  # fixed: the files must not change when regenerated on another day
PAPER_SOURCE = "ProCache paper / reference code (macovaseas/ProCache)"
PAPER_CITE = "Cao et al., ProCache, AAAI 2026, arXiv 2512.17298"
RULE = ("the paper's searched DiT-XL/2 pattern (DDIM 50) carried onto this preset's noise levels with the tier's "
        "number of full steps (Schedule.remap with a budget; S by Eq. 7)")
OBJECTIVE = "none for this family: a rule, not a search; run ProCache Schedule Search for your model and sampler"

# tier -> (share of full steps, vmin, vmax). Quality allows back-to-back full steps late (vmin 0).
TIERS: dict[str, tuple[float, int, int]] = {
    "fast": (0.25, 1, 4),
    "balanced": (0.35, 1, 4),
    "quality": (0.50, 0, 3),
}


@dataclass(frozen=True)
class Target:
    prefix: str
    family: str
    model: str
    steps: int
    sampler: str
    ratio: float
    seed: int


TARGETS = [
    Target("pixart-alpha-20", "pixart", "PixArt-alpha (PixArt-XL-2)", 20, "dpmpp_2m / 20 steps (remapped otherwise)", 0.3, 101),
    Target("pixart-sigma-20", "pixart", "PixArt-Sigma (PixArt-Sigma-XL-2)", 20, "dpmpp_2m / 20 steps (remapped otherwise)", 0.3, 202),
    Target("flux-28", "flux", "FLUX.1-dev / FLUX.1-schnell-class", 28, "euler / simple, 28 steps (remapped otherwise)", 0.3, 303),
    Target("flux-50", "flux", "FLUX.1-dev", 50, "euler / simple, 50 steps (remapped otherwise)", 0.3, 404),
    Target("sd3-28", "sd3", "Stable Diffusion 3 / 3.5", 28, "euler / sgm_uniform, 28 steps (remapped otherwise)", 0.3, 505),
    Target("wan-30", "wan", "Wan 2.x text/image-to-video", 30, "uni_pc / simple, 30 steps (remapped otherwise)", 0.3, 606),
    Target("wan-50", "wan", "Wan 2.x text/image-to-video", 50, "uni_pc / simple, 50 steps (remapped otherwise)", 0.3, 707),
]


def dit_ddim50_noise() -> tuple[float, ...]:
    """Timestep percent of DiT's 50 respaced DDIM steps (space_timesteps(1000, "50"): t = round(k * 999/49))."""
    ts = sorted({round(k * 999 / 49) for k in range(50)}, reverse=True)
    return tuple(round(1.0 - t / 999, 6) for t in ts)


DIT_PAPER = Schedule.from_string("FCSC" * 6 + "FCS" * 4 + "FC" * 7)


def rule_schedule(steps: int, share: float) -> Schedule:
    """The tier rule: the DiT-XL/2 searched pattern's shape at ``steps`` evenly spaced noise levels with
    ``round(steps * share)`` full steps (both on the noise axis: DDIM 50's steps are evenly spaced in
    timestep percent, as are the targets' euler/simple, sgm_uniform and uni_pc/simple steps)."""
    return DIT_PAPER.remap(steps, budget=max(1, round(steps * share))).with_selective(True)


def paper_presets() -> list[Preset]:
    dit = DIT_PAPER
    pixart = Schedule.from_string("F F S C F S C F S C F S C F S C F S C F")
    flux = Schedule.from_full_steps(50, [0, 1, 2, 6, 12, 18, 24, 30, 35, 40, 45])
    return [
        Preset(name="dit-xl2-ddim50-paper", schedule=dit, family="dit", model="DiT-XL/2 256x256 (ImageNet, class-conditional)",
               selective=SelectiveSettings(enabled=True, depth_fraction=0.25, ratio=0.07,
                                           ratio_schedule="reference-dit"), noise=dit_ddim50_noise(),
               provenance={"kind": "searched", "source": PAPER_SOURCE,
                           "noise_axis": "timestep percent of DiT's respaced DDIM 50 steps (t = 999 ... 0)", "sampler": "DDIM 50 steps, cfg 1.5", "budget": 17,
                           "objective": "FID on a proxy set (paper)", "date": DATE,
                           "notes": f"{PAPER_CITE}. F C S C x6, F C S x4, F C x7: 17 full, 10 selective, 23 cached; "
                                    "token share: the reference code's DiT scheduler, base 0.07 scaled by step (none "
                                    "early, rising to the end), depth and branch (MLP x2.5)."}),
        Preset(name="pixart-alpha-dpm20-paper", schedule=pixart, family="pixart", model="PixArt-alpha 256px",
               selective=SelectiveSettings(enabled=True, depth_fraction=0.25, ratio=0.3,
                                           ratio_schedule="reference-pixart"), noise=even_noise(20),
               provenance={"kind": "searched", "source": PAPER_SOURCE,
                           "noise_axis": "timestep percent i/20 (DPM-Solver++ time-uniform, t = 999 - 49.95 i)", "sampler": "DPM-Solver++ 20 steps, cfg 4.5, 256 px", "budget": 8,
                           "objective": "CLIP score on a proxy set (paper)", "date": DATE,
                           "notes": f"{PAPER_CITE}. 8 full (incl. the forced first), 6 selective, 6 cached. S "
                                    "placement kept as published (first of each reuse run); remapping to another "
                                    "step count re-derives S by Eq. 7. Token shares as the reference runs: cross-"
                                    "attention ~3-21 %, MLP ~7-55 %, each its own selection, falling with step and "
                                    "depth."}),
        Preset(name="flux-dev-50-paper", schedule=flux, family="flux", model="FLUX.1-dev",
               selective=SelectiveSettings(enabled=False, depth_fraction=0.25, ratio=0.3), noise=even_noise(50),
               provenance={"kind": "searched", "source": PAPER_SOURCE,
                           "noise_axis": "timestep percent i/50 (unshifted flow time linspace(1, 0, 51))", "sampler": "50 steps", "budget": 11,
                           "objective": "ImageReward (paper)", "date": DATE,
                           "notes": f"{PAPER_CITE}. Full at steps 0,1,2,6,12,18,24,30,35,40,45. The released code "
                                    "runs TaylorSeer-style prediction between full steps; here they reuse the "
                                    "cache. No selective steps (connect Selective Compute Settings to add them)."}),
    ]


def generated_presets() -> list[Preset]:
    out = []
    for t in TARGETS:
        for tier, (share, _vmin, _vmax) in TIERS.items():
            sched = rule_schedule(t.steps, share)
            c = sched.counts()
            out.append(Preset(
                name=f"{t.prefix}-{tier}", schedule=sched, family=t.family, model=t.model,
                selective=SelectiveSettings(enabled=True, depth_fraction=0.25, ratio=t.ratio),
                noise=even_noise(t.steps),
                provenance={"kind": "rule", "source": "scripts/generate_presets.py rule_schedule", "rule": RULE,
                            "sampler": t.sampler, "budget": c["full"],
                            "noise_axis": f"timestep percent i/{t.steps} (evenly spaced, like the sampler named)",
                            "objective": OBJECTIVE, "date": DATE,
                            "notes": f"{tier}: {c['full']}/{t.steps} full steps, intervals {sched.intervals()}; "
                                     "selective steps by Eq. 7."}))
    return out


# few-step presets (procache_core/few_step.py picks them for runs of fewer than 10 steps): searched over every
# F/C pattern of 4 and 8 steps on the trained digits models inside the host (euler / simple, cfg 1 and 3);
# kept: the most reused steps whose worst PSNR to full compute stays >= 30 dB (benchmarks/few_step.py)
FEW_STEP_DATE = "2026-12-02"
FEW_STEP = [
    ("fewstep-4", "FFCF", "any", "4-step flow models (Flux.2 klein, Qwen-Image Lightning 4, Wan lightx2v)",
     "euler / simple, cfg 1 and 3, on the trained digits Flux (default for every family but PixArt)",
     "PSNR 34.9 / 33.0 dB, FD-full 4.1 / 5.1 to full compute at cfg 1 / 3 on the digits Flux (few_step_cpu.md)"),
    ("fewstep-4-pixart", "FCFF", "pixart", "4-step PixArt-alpha/Sigma runs",
     "euler / simple, cfg 1 and 3, on the trained digits PixArt-alpha",
     "PSNR 47.1 / 45.3 dB, FD-full 0.5 / 0.6 to full compute at cfg 1 / 3 on the digits PixArt-alpha (few_step_cpu.md)"),
    ("fewstep-8", "FCFCFCFF", "any", "8-step distilled models (Z-Image Turbo, Qwen-Image Lightning 8)",
     "euler / simple, cfg 1 and 3, on the trained digits Flux and PixArt-alpha",
     "PSNR 34.8-37.0 dB, FD-full 2.8-6.1 to full compute at cfg 1 / 3 on the digits Flux and PixArt-alpha (few_step_cpu.md)"),
]


def few_step_presets() -> list[Preset]:
    out = []
    for name, actions, family, model, sampler, measured in FEW_STEP:
        sched = Schedule.from_string(actions)
        n = len(sched)
        out.append(Preset(
            name=name, schedule=sched, family=family, model=model,
            selective=SelectiveSettings(enabled=False, depth_fraction=1.0, ratio=0.3), noise=even_noise(n),
            provenance={"kind": "searched", "source": "benchmarks/few_step.py (every F/C pattern of this step count)",
                        "sampler": sampler, "budget": sched.counts()["full"],
                        "noise_axis": f"timestep percent i/{n} (euler / simple)",
                        "objective": "most reused steps with worst-case PSNR to full compute >= 30 dB "
                                     "(both cfg values; fewstep-8 both models)",
                        "measured": measured, "date": FEW_STEP_DATE,
                        "notes": f"{n - sched.counts()['full']} of {n} steps reused; no selective steps (an exploratory "
                                 "F/C/S sweep on the same models found them adding at most 0.4 dB). Runs of 5-9 steps "
                                 "take the nearest of the 4- and 8-step presets, carried by noise level."}))
    return out


def all_presets() -> list[Preset]:
    return paper_presets() + generated_presets() + few_step_presets()


def render() -> dict[str, str]:
    """file name -> YAML text of every shipped preset."""
    header = "# Generated by scripts/generate_presets.py; edit that script, not this file.\n"
    return {f"{p.name}.yaml": header + dump_preset(p) for p in all_presets()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "schedules")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = ap.parse_args(argv)
    files = render()
    if args.check:
        bad = [n for n, text in files.items()
               if not (args.out / n).is_file() or (args.out / n).read_text(encoding="utf-8") != text]
        for n in bad:
            print(f"out of date: {args.out / n}", file=sys.stderr)
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (args.out / n).write_text(text, encoding="utf-8")
        p = load_preset(args.out / n)  # every written file must load back
        print(f"{n}: {p.schedule.grouped()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
