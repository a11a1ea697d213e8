"""Few-step runs (3, 4 and 8 steps) on the trained digits models, sampled by the REAL ComfyUI server.

What a 4-8-step distilled model's user gets: for each model (the pack's demo Flux and PixArt-alpha in the
host's own classes) and sampler case (euler / simple at cfg 1 and 3, euler / sgm_uniform at cfg 1), with the
same seed, prompts and latent:

- full               plain KSampler, every step computed
- default            ProCache Apply alone, default settings (preset auto, the default short_run_floor): the
                     few-step preset the run planner picks (procache_core/few_step.py), or every step
                     computed below the floor
- squeezed           the old way for comparison: the family's auto preset (20-28 steps) carried onto the
                     run by noise level (map_by_noise on the run's own noise positions), typed as written
- alternatives       other F/C patterns of the same step count, typed (they run as written)

Metrics on the decoded 32x32 images, against full compute at the same steps: PSNR, SSIM, the Fréchet
distance in the digits feature net's space (FD-full), the label accuracy; the block-evaluation ratio
(ProCache Stats) and the wall speed-up: the host execution time of full compute over the method's, both
timed in the same server, round after round (``--rounds``; the best round counts). Each timed method's
output must be the same in every round (bitwise; a determinism check).

    python -m benchmarks.few_step                 # a few minutes on a shared 2-core CPU
    python -m benchmarks.few_step --search        # every F/C pattern of 3, 4 and 8 steps (about 25 minutes)
    python -m benchmarks.few_step --report-only   # rewrite the tables from raw/few_step_cpu.json

Writes benchmarks/results/few_step_cpu.md, raw/few_step_cpu.json (raw/few_step_search_cpu.json with
--search) and the README section between ``<!-- few-step:start -->`` and ``<!-- few-step:end -->``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import host_digits as hd
from .common import RESULTS, block_marks, machine_info, md_table, write_readme_block

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("flux", "pixart")
CASES = [
    {"name": "euler/simple cfg 1", "sampler": "euler", "scheduler": "simple", "cfg": 1.0, "alternatives": True},
    {"name": "euler/simple cfg 3", "sampler": "euler", "scheduler": "simple", "cfg": 3.0, "alternatives": True},
    {"name": "euler/sgm_uniform cfg 1", "sampler": "euler", "scheduler": "sgm_uniform", "cfg": 1.0,
     "alternatives": False, "steps": (4, 8)},
]
STEPS = (3, 4, 8)
ALTERNATIVES = {3: ("FFC", "FCF"), 4: ("FFCF", "FCFF", "FFFC", "FCFC"), 8: ("FCFCFCFF", "FCFFFCFF", "FCCFCFCF")}
QUALITY_BAR_DB = 30.0   # the rule that picked the shipped few-step schedules and the short-run floor
README_START, README_END = block_marks("few-step")


def default_prompt(fam: str, **kw) -> dict:
    """ProCache Apply with nothing but the model connected (preset auto, default short_run_floor)."""
    p = hd.digits_prompt(fam, procache={"actions": "F"}, **kw)
    del p["schedule"]
    p["apply"]["inputs"] = {"model": ["model", 0]}
    return p


def squeezed_schedule(preset: str, noise: list[float]) -> str:
    """The family's auto preset ``preset`` carried onto a run at ``noise`` (N + 1 positions) the way every
    short run with short_run_floor 0 was before the few-step presets."""
    from procache_core.presets import load_preset
    from procache_core.schedule import map_by_noise

    pre = load_preset(ROOT / "schedules" / f"{preset}.yaml")
    return map_by_noise(pre.schedule, pre.noise_positions, noise).to_string()


def _stats(entry: dict) -> dict:
    out = entry["outputs"].get("stats", {}).get("procache_stats")
    return out[0] if out else {}


def _server():
    sys.path.insert(0, str(ROOT / "scripts"))
    from comfy_client import ComfyServer

    return ComfyServer


def run(families=FAMILIES, cases=None, steps_list=STEPS, repeat: int = 5, rounds: int = 3, log=print) -> dict:
    from .data import features, load_digits_images, load_or_train_featnet

    hd.ensure_host()
    cases = cases or CASES
    featnet, feat_info = load_or_train_featnet(log=log)
    real, _ = load_digits_images(32)
    f_real = features(featnet, real).numpy()
    labels = hd.labels_of("0123456789", repeat)
    t0 = time.time()
    load0 = _loadavg()
    res: dict[str, Any] = {"repeat": repeat, "n_samples": len(labels), "rounds": rounds, "featnet": feat_info,
                           "quality_bar_db": QUALITY_BAR_DB, "families": {}}
    with _server()() as srv:
        client = srv.client()
        for fam in families:
            client.run(hd.digits_prompt(fam, digits="0", steps=2, prefix="warm"), timeout=900)
            fam_rows = []
            for case in cases:
                for steps in [n for n in steps_list if n in case.get("steps", steps_list)]:
                    fam_rows.append(_run_cell(client, fam, case, steps, repeat, rounds, labels, featnet, f_real, log))
            auto = next((r["auto_preset"] for c in fam_rows for r in c["rows"] if r.get("auto_preset")), None)
            res["families"][fam] = {"auto_preset": auto, "cells": fam_rows}
    res["seconds"] = round(time.time() - t0, 1)
    res["load_average"] = [load0, _loadavg()]
    res["floor"] = floor_verdict(res)
    return res


def _run_cell(client, fam, case, steps, repeat, rounds, labels, featnet, f_real, log) -> dict:
    """One model, sampler case and step count. full, default and squeezed are timed over ``rounds``
    rounds, each running them back to back; a row's wall speed-up is the median over rounds of full's
    time / its time in the same round. The alternatives run once (quality and block ratio)."""
    from .data import features

    base = dict(repeat=repeat, steps=steps, cfg=case["cfg"], sampler=case["sampler"], scheduler=case["scheduler"],
                seed=0)
    outs: dict[str, dict] = {}

    def sample(prompt: dict) -> tuple[torch.Tensor, dict, float]:
        e = client.run(prompt, timeout=900)
        return hd.decode_latent_file(client.output_files(e, "latents")[0]), e, hd.exec_seconds(e)

    def record(label: str, acts: str | None, prompt: dict) -> None:
        x, e, t = sample(prompt)
        o = outs.setdefault(label, {"x": x, "entry": e, "times": [], "same": True, "acts": acts, "prompt": prompt})
        o["times"].append(t)
        o["same"] &= bool(torch.equal(x, o["x"]))

    record("full", None, hd.digits_prompt(fam, prefix="full", **base))
    record("default", None, default_prompt(fam, prefix="default", **base))
    dst = _stats(outs["default"]["entry"])   # the run's noise positions and the family's auto preset
    sq = squeezed_schedule(dst["schedule_name"], dst["noise"])
    record("squeezed", sq, hd.digits_prompt(fam, prefix="squeezed", procache={"actions": sq}, **base))
    for _ in range(rounds - 1):
        for label in ("full", "default", "squeezed"):
            record(label, outs[label]["acts"], outs[label]["prompt"])
    if case["alternatives"]:
        taken = {dst.get("step_actions"), sq}
        for acts in ALTERNATIVES.get(steps, ()):
            if acts not in taken:
                record(f"alt {acts}", acts, hd.digits_prompt(fam, prefix="alt", procache={"actions": acts}, **base))
    x_full = outs["full"]["x"]
    f_full = features(featnet, x_full).numpy()
    t_full = outs["full"]["times"]
    rows = []
    for label, o in outs.items():
        st = _stats(o["entry"])
        timed = len(o["times"]) == rounds
        # per round the full run and the method ran back to back: the median of those paired ratios
        pairs = sorted(a / b for a, b in zip(t_full, o["times"]) if b > 0)
        m = hd.sample_metrics(featnet, labels, o["x"], x_full, f_full, f_real)
        rows.append({"method": label, "schedule": st.get("step_actions") or o["acts"] or "F" * steps,
                     "block_eval_fraction": st["block_eval_fraction"] if st.get("block_eval_fraction") is not None
                     else 1.0,
                     "few_step_preset": st.get("few_step_preset"), "mapping": st.get("mapping"),
                     "auto_preset": st.get("schedule_name") if label == "default" else None,
                     "stats_line": st.get("line"), "seconds": o["times"],
                     "wall_speedup": (pairs[len(pairs) // 2] if pairs else float("nan")) if timed else None,
                     "deterministic": o["same"] if timed else None, **m})
    cell = {"case": case["name"], "sampler": case["sampler"], "scheduler": case["scheduler"], "cfg": case["cfg"],
            "steps": steps, "rows": rows}
    for r in rows:
        w = "  -  " if r["wall_speedup"] is None else f"{r['wall_speedup']:.2f}x"
        log(f"[few-step] {fam} {case['name']} {steps} steps {r['method']:<14s} {r['schedule']:<9s} "
            f"blocks {r['block_eval_fraction']:.3f} wall {w} PSNR {r['psnr']:6.2f} "
            f"FD-full {r['fd_full']:7.3f} acc {r['label_acc']:.2f}{' NOT DETERMINISTIC' if r['deterministic'] is False else ''}")
    return cell


def _loadavg() -> list[float] | None:
    import os

    try:
        return [round(v, 1) for v in os.getloadavg()]
    except OSError:
        return None


def pooled_wall(res: dict) -> list[list]:
    """Per step count, the default rows that reuse something: block ratio and median wall speed-up."""
    out = []
    for steps in sorted({c["steps"] for f in res["families"].values() for c in f["cells"]}):
        rows = [r for f in res["families"].values() for c in f["cells"] if c["steps"] == steps
                for r in c["rows"] if r["method"] == "default" and r["block_eval_fraction"] < 1.0 - 1e-9]
        if not rows:
            continue
        w = sorted(r["wall_speedup"] for r in rows)
        b = sorted(r["block_eval_fraction"] for r in rows)
        out.append([steps, len(rows), f"{b[len(b) // 2]:.3f}", f"{1 / b[len(b) // 2]:.2f}x",
                    f"{w[len(w) // 2]:.2f}x", f"{w[0]:.2f}-{w[-1]:.2f}x"])
    return out


def pooled_lines(res: dict) -> list[str]:
    la = res.get("load_average") or [None, None]
    return ["### Wall speed-up of the default, pooled", "",
            "Median over the cells (both models, every case) of the default rows that reuse; the ideal is 1 / the "
            "block ratio. The machine was shared with other jobs (load average "
            f"{la[0]} at the start, {la[1]} at the end, on 2 cores), so single cells scatter widely; the pooled "
            "median is the figure to read.", "",
            md_table(["steps", "cells", "blocks", "ideal", "median wall", "range"], pooled_wall(res)), ""]


def floor_verdict(res: dict) -> dict:
    """Per step count: the worst PSNR over models and cfg values (euler / simple cases) of the default
    row, or for a step count below the floor of the best typed pattern, against the quality bar."""
    out = {}
    for steps in sorted({c["steps"] for f in res["families"].values() for c in f["cells"]}):
        worst_default, worst_best = math.inf, math.inf
        for f in res["families"].values():
            for c in f["cells"]:
                if c["steps"] != steps or "simple" not in c["scheduler"]:
                    continue
                # every reusing pattern counts, the squeezed one too (it is a pattern of this many steps)
                reusing = [r for r in c["rows"] if r["method"] != "full" and r["block_eval_fraction"] < 1.0 - 1e-9]
                d = next(r for r in c["rows"] if r["method"] == "default")
                if d["block_eval_fraction"] < 1.0 - 1e-9:
                    worst_default = min(worst_default, d["psnr"])
                if reusing:
                    worst_best = min(worst_best, max(r["psnr"] for r in reusing))
        out[str(steps)] = {"default_worst_psnr": None if worst_default == math.inf else worst_default,
                           "best_pattern_worst_psnr": None if worst_best == math.inf else worst_best,
                           "passes_bar": worst_best >= QUALITY_BAR_DB}
    return out


# -- the search that picked the shipped schedules ---------------------------------------------------

def search(families=FAMILIES, steps_list=STEPS, cfgs=(1.0, 3.0), repeat: int = 3, log=print) -> dict:
    """Every F/C pattern (first step F) of each step count, quality only, euler / simple."""
    from .data import features, load_digits_images, load_or_train_featnet

    hd.ensure_host()
    featnet, _ = load_or_train_featnet(log=log)
    real, _ = load_digits_images(32)
    f_real = features(featnet, real).numpy()
    labels = hd.labels_of("0123456789", repeat)
    rows = []
    with _server()() as srv:
        client = srv.client()
        for fam in families:
            client.run(hd.digits_prompt(fam, digits="0", steps=2, prefix="warm"), timeout=900)
            for cfg in cfgs:
                for steps in steps_list:
                    base = dict(repeat=repeat, steps=steps, cfg=cfg, sampler="euler", scheduler="simple", seed=0)
                    e = client.run(hd.digits_prompt(fam, prefix="full", **base), timeout=900)
                    xf = hd.decode_latent_file(client.output_files(e, "latents")[0])
                    ff = features(featnet, xf).numpy()
                    for tail in itertools.product("FC", repeat=steps - 1):
                        pat = "F" + "".join(tail)
                        if "C" not in pat:
                            continue
                        e = client.run(hd.digits_prompt(fam, prefix="pc", procache={"actions": pat}, **base), timeout=900)
                        x = hd.decode_latent_file(client.output_files(e, "latents")[0])
                        m = hd.sample_metrics(featnet, labels, x, xf, ff, f_real)
                        rows.append({"family": fam, "cfg": cfg, "steps": steps, "pattern": pat, **m})
                        log(f"[few-step search] {fam} cfg {cfg} {pat} PSNR {m['psnr']:.2f} FD-full {m['fd_full']:.3f}")
    return {"repeat": repeat, "rows": rows}


def search_table(found: dict) -> list[str]:
    """Per step count and number of reused steps, the pattern with the best worst-case PSNR."""
    by: dict[tuple[int, str], dict] = {}
    for r in found["rows"]:
        by.setdefault((r["steps"], r["pattern"]), {})[(r["family"], r["cfg"])] = r
    rows = []
    for steps in sorted({s for s, _ in by}):
        for reused in range(1, steps):
            cands = [(min(v["psnr"] for v in d.values()), pat, d) for (s, pat), d in by.items()
                     if s == steps and pat.count("C") == reused]
            for fam in (None, *FAMILIES):
                sub = [(min(v["psnr"] for k, v in d.items() if fam in (None, k[0])), pat, d) for _, pat, d in cands]
                if not sub:
                    continue
                best = max(sub)
                rows.append([steps, reused, fam or "both", best[1], f"{best[0]:.1f}"])
    return [md_table(["steps", "reused", "models", "best pattern (worst case)", "worst PSNR"], rows)]


# -- report ----------------------------------------------------------------------------------------

def _f(x, nd=2):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def markdown(res: dict, commit: str | None) -> str:
    lines = ["# Few-step runs (3, 4 and 8 steps) on the trained digits models", "",
             f"Generated by `python -m benchmarks.few_step` at commit `{commit}`, {res.get('seconds')} s "
             f"({res.get('machine', {}).get('date_utc', '')}, shared 2-core CPU). {res['n_samples']} samples per "
             f"run (digits 0-9 in turn, seed 0), {res['rounds']} timing rounds; metrics on the decoded 32x32 images "
             "against full compute at the same sampler, steps and cfg. *blocks* = block-evaluation ratio (ProCache "
             "Stats); *wall* = host execution time of full compute / the method's, same server, median over the rounds "
             "of the back-to-back pairs (timed: full, default, squeezed; the alternatives ran once, - ); *det.* = the "
             "method's output ""was bitwise the same in every round.", ""]
    lines += floor_lines(res)
    lines += pooled_lines(res)
    for fam, fr in res["families"].items():
        lines += [f"## {fam}", "", f"Auto preset of the family: `{fr['auto_preset']}` (the *squeezed* rows).", ""]
        table = []
        for c in fr["cells"]:
            for r in c["rows"]:
                table.append([c["case"], c["steps"], r["method"], r["schedule"], _f(r["block_eval_fraction"], 3),
                              _f(r["wall_speedup"]) if r["wall_speedup"] is not None else "-", _f(r["psnr"]), _f(r["ssim"], 4), _f(r["fd_full"], 3),
                              _f(r["label_acc"], 3), {True: "yes", False: "NO", None: "-"}[r["deterministic"]]])
        lines += [md_table(["case", "steps", "method", "schedule", "blocks", "wall", "PSNR", "SSIM", "FD-full",
                            "label acc", "det."], table), ""]
    ex = [r["stats_line"] for f in res["families"].values() for c in f["cells"] for r in c["rows"]
          if r["method"] == "default" and r.get("few_step_preset") and r.get("stats_line")]
    if ex:
        lines += ["What ProCache Stats and the log say for a default few-step run (first one above):", "",
                  f"> {ex[0]}", ""]
    return "\n".join(lines)


def floor_lines(res: dict) -> list[str]:
    v = res.get("floor") or floor_verdict(res)
    rows = [[s, _f(d["default_worst_psnr"]), _f(d["best_pattern_worst_psnr"]), "yes" if d["passes_bar"] else "no"]
            for s, d in v.items()]
    return ["### The short-run floor", "",
            f"Rule: a step count is cached by default when the best reusing pattern of that many steps keeps the "
            f"worst PSNR over both models and both cfg values (euler / simple) at >= {res['quality_bar_db']:.0f} dB "
            "to full compute; the floor is the smallest such step count (`SHORT_RUN_FLOOR`, nodes/runtime_bridge.py). "
            "The shipped few-step schedules are the patterns with the most reused steps that meet the same bar "
            "(`python -m benchmarks.few_step --search`).", "",
            md_table(["steps", "default worst PSNR", "best pattern worst PSNR", f">= {res['quality_bar_db']:.0f} dB"],
                     rows), ""]


def readme_block(res: dict, commit: str | None) -> str:
    body = ["## Few-step runs (`python -m benchmarks.few_step`)", "",
            "4- and 8-step runs (what Flux.2 klein, Z-Image Turbo, Qwen-Image Lightning and Wan lightx2v users run) "
            "on the trained digits Flux and PixArt-alpha through the real server, ProCache Apply with default "
            f"settings against full compute at the same steps; all rows in [few_step_cpu.md](few_step_cpu.md) "
            f"(commit `{commit}`).", ""]
    rows = []
    for fam, fr in res["families"].items():
        for c in fr["cells"]:
            d = next(r for r in c["rows"] if r["method"] == "default")
            sq = next((r for r in c["rows"] if r["method"] == "squeezed"), None)
            rows.append([fam, c["case"], c["steps"], d["schedule"], _f(d["block_eval_fraction"], 3),
                         _f(d["wall_speedup"]), _f(d["psnr"]), _f(d["fd_full"], 3),
                         f"{sq['schedule']} {_f(sq['psnr'])}" if sq else ""])
    body += [md_table(["model", "case", "steps", "default schedule", "blocks", "wall", "PSNR", "FD-full",
                       "squeezed auto preset: schedule, PSNR"], rows), ""]
    body += floor_lines(res)[2:]
    body += pooled_lines(res)[2:]
    body += ["Caveats: the digits models are tiny and not distilled; a distilled model's steps may tolerate reuse "
             "differently, so the PSNR figures are what these models lost, not a promise for another model. At "
             "this size the sampler's and server's per-step overhead is a large share of the wall time, so the "
             "wall speed-up stays below the block-evaluation ideal.", ""]
    return "\n".join([README_START] + body + [README_END])


def update_readme(res: dict, commit: str | None, readme: Path = RESULTS / "README.md") -> None:
    write_readme_block(readme, README_START, README_END, readme_block(res, commit))


def _commit() -> str:
    from .common import code_commit

    return code_commit() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--steps", default=",".join(map(str, STEPS)))
    ap.add_argument("--repeat", type=int, default=5, help="samples per digit (10 digits)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds; the best round counts")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--search", action="store_true", help="every F/C pattern (quality only), raw/few_step_search_cpu.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    fams = tuple(args.families.split(","))
    steps = tuple(int(s) for s in args.steps.split(","))
    raw = args.out / "raw" / "few_step_cpu.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    if args.search:
        found = search(fams, steps)
        (args.out / "raw" / "few_step_search_cpu.json").write_text(json.dumps(found, indent=1))
        print("\n".join(search_table(found)))
        return 0
    if args.report_only:
        res = json.loads(raw.read_text())
    else:
        res = run(fams, steps_list=steps, repeat=args.repeat, rounds=args.rounds)
        res["commit"] = _commit()
        res["machine"] = machine_info("cpu")
        raw.write_text(json.dumps(res, indent=1, default=str))
    text = markdown(res, res.get("commit"))
    (args.out / "few_step_cpu.md").write_text(text + "\n")
    if args.out == RESULTS:
        update_readme(res, res.get("commit"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
