"""Which search space and which search: non-increasing vs any-order intervals, sampled vs one-run profile.

The trained digits DiT (benchmarks/assets), DDIM (eta 0, CFG 1.5), T = 20 steps under the three timestep
spacings of benchmarks/noise_axis.py (uniform-t, karras, late-drops). For each spacing and each budget /
bounds setting, schedules with exactly B full steps:

- ``uniform``          full every N-th step (FORA)
- ``sampled-ni``       the sampled search (procache_core.search.sample_patterns, K candidates) in the
                       paper's space: non-increasing reuse intervals
- ``sampled-any``      the same search with ``non_increasing=False``: intervals in any order
- ``profile-ni`` / ``profile-any``  the one-run profile search (procache_core.profile_search): the per-step
                       denoised predictions of ONE full-compute run on the proxy set, and the exact dynamic
                       programme's best schedule in each space

Every search scores (or profiles) on the **proxy** seed set only; every row is then evaluated on a
**held-out** seed set the search never saw (``proxy_seed`` != ``eval_seed``, checked): PSNR and FD-full
(Fréchet distance in the digits feature net's space to the full-compute samples of the same seeds).
``python -m benchmarks.search_space`` prints the table and writes benchmarks/results/search_space_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .common import both_metrics_verdict, head_commit, keep_reading
from .data import features
from .noise_axis import SPACINGS, timesteps_for
from .quality import Method, digits_dit_setup, sample, sample_set, uniform_string

ROOT = Path(__file__).resolve().parent
# (budget, vmin, vmax): the paper's bounds at B = 5 and 7, and B = 4 with wider bounds (at B = 4 of 20 the
# paper's bounds (1, 4) leave one pattern, uniform, in either space)
SETTINGS = ((4, 0, 8), (5, 1, 4), (7, 1, 4))
METHODS = ("uniform", "sampled-ni", "sampled-any", "profile-ni", "profile-any")


def run(T: int = 20, k: int = 5, n_samples: int = 100, n_proxy: int = 20, chunk: int = 100, search_seed: int = 0,
        proxy_seed: int = 999, eval_seed: int = 1234, settings=SETTINGS, spacings=SPACINGS, log=print) -> dict:
    from procache_core import profile_search
    from procache_core.search import sample_patterns

    t0 = time.time()
    model, featnet, (noise, labels), (p_noise, p_labels) = digits_dit_setup(n_samples, n_proxy, proxy_seed,
                                                                            eval_seed, log=log)
    out = {"T": T, "k": k, "n_samples": n_samples, "n_proxy": n_proxy, "search_seed": search_seed,
           "proxy_seed": proxy_seed, "eval_seed": eval_seed, "spacings": {}}
    for spacing in spacings:
        ts = timesteps_for(spacing, T)

        def sset(x_noise, x_labels, sched):
            return sample_set(model, x_noise, x_labels, T, Method("procache", "", schedule=sched), chunk,
                              timesteps=ts)[0]

        full = sample_set(model, noise, labels, T, Method("full", "full"), chunk, timesteps=ts)[0]
        f_full = features(featnet, full.clamp(-1, 1)).numpy()
        x0s: list[torch.Tensor] = []
        p_full = sample(model, p_noise, p_labels, T, Method("full", "full"), timesteps=ts, x0_log=x0s)[0]
        cost = profile_search.reuse_cost(x0s)
        proxy_cache: dict[str, float] = {}

        def proxy(sched: str) -> float:
            if sched not in proxy_cache:
                proxy_cache[sched] = float(metrics.rel_l2(sset(p_noise, p_labels, sched), p_full).mean())
            return proxy_cache[sched]

        rows_by_setting = []
        for budget, vmin, vmax in settings:
            chosen: dict[str, str] = {"uniform": uniform_string(T, budget)}
            cands: dict[str, list] = {}
            for order, ni in (("ni", True), ("any", False)):
                try:
                    c = [p.to_string() for p in sample_patterns(T, budget, vmin, vmax, k, search_seed,
                                                                non_increasing=ni)]
                except Exception as exc:  # noqa: BLE001 - an empty space is a row, not a crash
                    log(f"  {spacing} B={budget} {order}: {exc}")
                    continue
                scores = [proxy(s) for s in c]
                cands[order] = list(zip(c, scores))
                chosen[f"sampled-{order}"] = c[int(np.argmin(scores))]
                chosen[f"profile-{order}"] = profile_search.best_schedule(cost, budget, vmin, vmax, ni).to_string()
            rows = {}
            for name in METHODS:
                if name not in chosen:
                    continue
                sched = chosen[name]
                x = sset(noise, labels, sched)
                xc = x.clamp(-1, 1)
                rows[name] = {"schedule": sched, "proxy_rel_l2": proxy(sched),
                              "profile_cost": profile_search.schedule_cost(cost, _sched(sched)),
                              "psnr": float(metrics.psnr(xc, full.clamp(-1, 1)).clamp(max=100).mean()),
                              "fd_full": metrics.frechet_distance(features(featnet, xc).numpy(), f_full)}
                log(f"  {spacing:<10s} B={budget} [{vmin},{vmax}] {name:<12s} {sched}  proxy {rows[name]['proxy_rel_l2']:.4f}"
                    f"  PSNR {rows[name]['psnr']:6.2f}  FD-full {rows[name]['fd_full']:.4f}")
            rows_by_setting.append({"budget": budget, "vmin": vmin, "vmax": vmax, "rows": rows,
                                    "candidates": cands})
        out["spacings"][spacing] = {"timesteps": ts, "settings": rows_by_setting}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _sched(s: str):
    from procache_core.schedule import Schedule

    return Schedule.from_string(s)


def summary(res: dict) -> dict:
    """Per method: mean PSNR / FD-full over every (spacing, setting), and wins of any-order over non-increasing."""
    acc: dict[str, list[tuple[float, float]]] = {}
    duel = {"sampled": [0, 0, 0], "profile": [0, 0, 0]}  # any-order better on both / worse on both / mixed
    dp_vs_sampled = {"ni": [0, 0, 0], "any": [0, 0, 0]}
    for d in res["spacings"].values():
        for st in d["settings"]:
            r = st["rows"]
            for name, row in r.items():
                acc.setdefault(name, []).append((row["psnr"], row["fd_full"]))
            for kind in duel:
                a, b = r.get(f"{kind}-any"), r.get(f"{kind}-ni")
                if a and b:
                    duel[kind][both_metrics_verdict(a, b)] += 1
            for order in dp_vs_sampled:
                a, b = r.get(f"profile-{order}"), r.get(f"sampled-{order}")
                if a and b:
                    dp_vs_sampled[order][both_metrics_verdict(a, b)] += 1
    means = {k: {"psnr": float(np.mean([p for p, _ in v])), "fd_full": float(np.mean([f for _, f in v])), "n": len(v)}
             for k, v in acc.items()}
    return {"means": means, "any_vs_ni": duel, "profile_vs_sampled": dp_vs_sampled}


    if a["psnr"] >= b["psnr"] and a["fd_full"] <= b["fd_full"]:
        return 0
    if b["psnr"] >= a["psnr"] and b["fd_full"] <= a["fd_full"]:
        return 1
    return 2


def report(res: dict, commit: str, date: str) -> str:
    s = summary(res)
    lines = ["# Search space and search method (digits DiT, held-out seeds)", "",
             f"Generated by `python -m benchmarks.search_space` at commit `{commit}`, {date}, {res['seconds']} s. "
             f"Digits DiT, DDIM {res['T']} steps, CFG 1.5; searches scored on {res['n_proxy']} proxy samples "
             f"(seed {res['proxy_seed']}), every row evaluated on {res['n_samples']} **held-out** samples "
             f"(seed {res['eval_seed']}) against full compute of the same seeds. Sampled search: K = {res['k']}, "
             f"search_seed {res['search_seed']}. Profile search: one full run on the proxy set, exact programme.", "",
             "| spacing | B [vmin, vmax] | method | schedule | proxy rel-L2 | PSNR (dB) | FD-full |",
             "|---|---|---|---|---|---|---|"]
    for spacing, d in res["spacings"].items():
        for st in d["settings"]:
            for name, r in st["rows"].items():
                lines.append(f"| `{spacing}` | {st['budget']} [{st['vmin']}, {st['vmax']}] | {name} | `{r['schedule']}` | "
                             f"{r['proxy_rel_l2']:.4f} | {r['psnr']:.2f} | {r['fd_full']:.4f} |")
    lines += ["", "**Means over every spacing and setting**", "", "| method | rows | PSNR (dB) | FD-full |", "|---|---|---|---|"]
    for name in METHODS:
        m = s["means"].get(name)
        if m:
            lines.append(f"| {name} | {m['n']} | {m['psnr']:.2f} | {m['fd_full']:.4f} |")
    a, p = s["any_vs_ni"], s["profile_vs_sampled"]
    lines += ["", f"Any-order vs non-increasing (same search, same K): sampled search better on both metrics in "
                  f"{a['sampled'][0]}, worse on both in {a['sampled'][1]}, mixed or same schedule in {a['sampled'][2]} "
                  f"rows; profile search {a['profile'][0]} / {a['profile'][1]} / {a['profile'][2]}.",
              f"Profile (one run) vs sampled (K + 1 runs) in the same space: non-increasing {p['ni'][0]} better / "
              f"{p['ni'][1]} worse / {p['ni'][2]} mixed or same; any-order {p['any'][0]} / {p['any'][1]} / {p['any'][2]}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import datetime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--proxy", type=int, default=20)
    ap.add_argument("--proxy-seed", type=int, default=999)
    ap.add_argument("--eval-seed", type=int, default=1234)
    ap.add_argument("--search-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "search_space_cpu.md")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    commit = head_commit()  # the code the run starts with
    res = run(T=a.steps, k=a.k, n_samples=a.samples, n_proxy=a.proxy, search_seed=a.search_seed,
              proxy_seed=a.proxy_seed, eval_seed=a.eval_seed)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = report(res, commit, date)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(keep_reading(text, a.out))
    raw = ROOT / "results" / "raw" / "search_space.json"
    raw.write_text(json.dumps(res, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
