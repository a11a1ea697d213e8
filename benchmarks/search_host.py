"""The Schedule Search node's options on the in-host digits models, judged on held-out seeds.

For each demo model (Flux, PixArt-α: benchmarks/host_quality.py's models and cases) and sampler case, the
REAL ComfyUI server runs ProCache Schedule Search on the proxy seed ``search_on_seed`` with each of

- ``sampled-ni`` / ``sampled-any``   method sampled, K candidates, non_increasing on / off
- ``profile-ni`` / ``profile-any``   method profile (one full run), non_increasing on / off

and the schedule it outputs (uniform when uniform scored better on the proxy, as the node does) is then
sampled on the evaluation seed ``seed`` (never the proxy one) and compared with full compute of that seed:
PSNR and FD-full on the decoded images. Uniform reuse of the same budget is the reference row. A second
table samples the three flux-28 tier presets (quality / balanced / fast, carried onto each run by the
noise-axis remap) on the Flux model: a higher tier must not lose to a lower one on any case.
``python -m benchmarks.search_host`` writes benchmarks/results/search_host_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from . import host_digits as hd
from .common import both_metrics_verdict, head_commit, keep_reading
from .quality import split_seeds
from .host_quality import CASES, _init_images, _save_tiff, _search_report, _server_cls, paper_schedule, uniform_schedule

ROOT = Path(__file__).resolve().parent
BOUNDS = {"flux": (0, 8), "pixart": (1, 4)}  # at B = 4 of 20 the node's default (1, 4) leaves only uniform
TIERS = ("flux-28-quality", "flux-28-balanced", "flux-28-fast")
CONFIGS = {"sampled-ni": ("sampled", True), "sampled-any": ("sampled", False),
           "profile-ni": ("profile", True), "profile-any": ("profile", False)}


def node_choice(report: str, uniform: str) -> str:
    """The schedule the node output: uniform when its report says so, else the starred candidate."""
    if re.search(r"^chosen: uniform ", report, re.M):
        return uniform
    for line in report.splitlines():
        if line.startswith("*"):
            parts = line[1:].split()
            return parts[1] if parts[0] == "profile" else parts[0]
    raise ValueError(f"no chosen schedule in the search report:\n{report}")


def run(families=("flux", "pixart"), cases=None, steps: int = 20, repeat: int = 3, k: int = 5, seed: int = 0,
        search_on_seed: int = 1, log=print) -> dict[str, Any]:
    from .data import features, load_digits_images, load_or_train_featnet

    split_seeds(search_on_seed, seed, names=("search_on_seed", "seed"))  # refused before any work
    hd.ensure_host()
    cases = cases or CASES
    digits = "0123456789"
    labels = hd.labels_of(digits, repeat)
    featnet, _ = load_or_train_featnet(log=log)
    real, _ = load_digits_images(32)
    f_real = features(featnet, real).numpy()
    t0 = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="procache-searchhost-"))
    res: dict[str, Any] = {"steps": steps, "k": k, "seed": seed, "search_on_seed": search_on_seed,
                           "n_samples": len(labels), "families": {}}
    with _server_cls()(workdir=workdir) as srv:
        client = srv.client()
        init_img, _ = _init_images(repeat)
        _save_tiff(init_img, workdir / "input" / "digits_init.tiff")
        for fam in families:
            budget = paper_schedule(fam, steps).count("F")
            uniform = uniform_schedule(steps, budget)
            vmin, vmax = BOUNDS[fam]
            client.run(hd.digits_prompt(fam, digits="0", steps=2, prefix="warm"), timeout=900)
            fam_res = {"budget": budget, "vmin": vmin, "vmax": vmax, "uniform": uniform, "cases": []}
            for case in cases:
                base = dict(digits=digits, repeat=repeat, steps=steps, sampler=case["sampler"],
                            scheduler=case["scheduler"], denoise=case["denoise"], seed=seed)
                if case["denoise"] < 1.0:
                    base["init_image"] = "digits_init.tiff"

                def sample(prefix: str, **kw):
                    entry = client.run(hd.digits_prompt(fam, prefix=prefix, **base, **kw), timeout=1800)
                    return hd.decode_latent_file(client.output_files(entry, "latents")[0])

                x_full = sample("full")
                f_full = features(featnet, x_full).numpy()
                rows = {"uniform": {"schedule": uniform, **hd.sample_metrics(
                    featnet, labels, sample("uni", procache={"actions": uniform}), x_full, f_full, f_real)}}
                for name, (method, ni) in CONFIGS.items():
                    se = client.run(hd.digits_prompt(
                        fam, prefix="search", **{**base, "init_image": None, "denoise": 1.0, "seed": search_on_seed},
                        search={"budget": budget, "k": k, "vmin": vmin, "vmax": vmax, "method": method,
                                "non_increasing": ni}), timeout=3600)
                    report = _search_report(se)
                    sched = node_choice(report, uniform)
                    x = sample("pcs", procache={"actions": sched})
                    rows[name] = {"schedule": sched, "report": report,
                                  **hd.sample_metrics(featnet, labels, x, x_full, f_full, f_real)}
                if fam == "flux":
                    tiers = {}
                    for preset in TIERS:
                        entry = client.run(hd.digits_prompt(fam, prefix="tier", **base, procache={"preset": preset}),
                                           timeout=1800)
                        x = hd.decode_latent_file(client.output_files(entry, "latents")[0])
                        st = hd.parse_stats(hd.stats_text(entry))
                        tiers[preset] = {"schedule_full": st["full"], "block_eval_fraction": st["block_eval_fraction"],
                                         **hd.sample_metrics(featnet, labels, x, x_full, f_full, f_real)}
                        log(f"  {fam} {case['name']:<34s} {preset:<18s} blocks {st['block_eval_fraction']:.3f}  "
                            f"PSNR {tiers[preset]['psnr']:6.2f}  FD-full {tiers[preset]['fd_full']:8.3f}")
                    res.setdefault("tiers", {})[case["name"]] = tiers
                for name, r in rows.items():
                    log(f"  {fam} {case['name']:<34s} {name:<12s} {r['schedule']}  PSNR {r['psnr']:6.2f}  "
                        f"FD-full {r['fd_full']:8.3f}")
                fam_res["cases"].append({"case": case["name"], "rows": rows})
            res["families"][fam] = fam_res
    res["seconds"] = round(time.time() - t0, 1)
    return res


def report(res: dict, commit: str, date: str) -> str:
    lines = ["# Schedule Search node options on the in-host digits models (held-out seed)", "",
             f"Generated by `python -m benchmarks.search_host` at commit `{commit}`, {date}, {res['seconds']} s. "
             f"The real ComfyUI server, {res['steps']} steps, {res['n_samples']} samples; the node searches on seed "
             f"{res['search_on_seed']} (K = {res['k']} for method sampled), every row is sampled on seed {res['seed']} "
             "and compared with full compute of that seed (held out: the search never saw it). The node keeps "
             "uniform when uniform scored better on its proxy, so a row may be uniform.", ""]
    tally = {name: [0, 0, 0] for name in CONFIGS}
    duel = {"sampled": [0, 0, 0], "profile": [0, 0, 0]}
    for fam, fr in res["families"].items():
        lines += [f"## {fam} (B = {fr['budget']}, vmin {fr['vmin']}, vmax {fr['vmax']})", "",
                  "| case | method | schedule | PSNR (dB) | FD-full |", "|---|---|---|---|---|"]
        for c in fr["cases"]:
            u = c["rows"]["uniform"]
            for name, r in c["rows"].items():
                lines.append(f"| {c['case']} | {name} | `{r['schedule']}` | {r['psnr']:.2f} | {r['fd_full']:.3f} |")
                if name in tally:
                    tally[name][both_metrics_verdict(r, u)] += 1
            for kind in duel:
                duel[kind][both_metrics_verdict(c["rows"][f"{kind}-any"], c["rows"][f"{kind}-ni"])] += 1
        lines.append("")
    lines += ["**Against uniform reuse of the same budget** (better on both PSNR and FD-full / worse on both / mixed "
              "or the same schedule):", ""]
    lines += [f"- {name}: {t[0]} / {t[1]} / {t[2]}" for name, t in tally.items()]
    lines += ["", "**Any-order against non-increasing** (same method): "
              + "; ".join(f"{k} {v[0]} better / {v[1]} worse / {v[2]} mixed or same" for k, v in duel.items()), ""]
    if res.get("tiers"):
        lines += ["## flux-28 tier presets on the Flux digits model (seed " + str(res["seed"]) + ")", "",
                  "| case | preset | blocks | PSNR (dB) | FD-full |", "|---|---|---|---|---|"]
        losses = []
        for case, tiers in res["tiers"].items():
            for preset, r in tiers.items():
                lines.append(f"| {case} | {preset} | {r['block_eval_fraction']:.3f} | {r['psnr']:.2f} | {r['fd_full']:.3f} |")
            q, b = tiers.get("flux-28-quality"), tiers.get("flux-28-balanced")
            if q and b and (q["psnr"] < b["psnr"] or q["fd_full"] > b["fd_full"]):
                losses.append(case)
        lines += ["", "flux-28-quality loses to flux-28-balanced (lower PSNR or higher FD-full) in: "
                  + (", ".join(losses) if losses else "no case") + ".", ""]
    return "\n".join(lines)


    if a["psnr"] >= b["psnr"] and a["fd_full"] <= b["fd_full"]:
        return 0
    if b["psnr"] >= a["psnr"] and b["fd_full"] <= a["fd_full"]:
        return 1
    return 2


def main(argv: list[str] | None = None) -> int:
    import datetime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-on-seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "search_host_cpu.md")
    a = ap.parse_args(argv)
    commit = head_commit()  # the code the run starts with
    res = run(repeat=a.repeat, k=a.k, seed=a.seed, search_on_seed=a.search_on_seed)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = report(res, commit, date)
    a.out.write_text(keep_reading(text, a.out))
    (ROOT / "results" / "raw" / "search_host.json").write_text(json.dumps(res, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
