"""The report of `make bench-peers`: the matched-speed-up comparison, the tables, the plot and the results
README's peers block, all from the raw JSON the runner (benchmarks/peers.py) writes.

    python -m benchmarks.peers_report            # rewrite results/peers_cpu.md, .png and the README block
    python -m benchmarks.peers --report-only     # the same, through the runner's command line
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from .common import RESULTS, block_marks, fmt_num, md_table, write_readme_block
from .peer_specs import PEERS

RAW_NAME = "peers_cpu.json"


# ------------------------------------------------------------------------------------------ comparison

def compute_speedup(row: dict) -> float:
    b = row.get("block_eval_fraction")
    return 1.0 / b if b else float("nan")


def procache_curve(rows: list[dict]) -> list[tuple[float, float, float]]:
    """(compute speed-up, PSNR, FD-full) of ProCache's settings on their upper envelope, by speed-up: a
    setting for which another one is both faster and higher in PSNR is left out (see `dominated`)."""
    pts = sorted(((compute_speedup(r), r["psnr"], r["fd_full"]) for r in rows if r["method"] == "procache"),
                 reverse=True)
    out, best = [], -math.inf
    for s, p, f in pts:
        if p > best:
            out.append((s, p, f))
            best = p
    return out[::-1]


def dominated(rows: list[dict]) -> dict[str, str]:
    """ProCache rows off the envelope -> the label of a ProCache row that is faster and higher in PSNR."""
    pc = [r for r in rows if r["method"] == "procache"]
    out = {}
    for r in pc:
        better = [q for q in pc if compute_speedup(q) > compute_speedup(r) and q["psnr"] > r["psnr"]]
        if better:
            out[r["label"]] = max(better, key=lambda q: q["psnr"])["label"]
    return out


def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    from .quality import _interp as interp

    return interp(points, x)


def speedup_at_quality(curve: list[tuple[float, float, float]], psnr: float) -> float | None:
    """The largest speed-up on ProCache's piecewise-linear (speed-up, PSNR) curve whose PSNR is at least
    `psnr`; None when no ProCache point or segment reaches it."""
    best = None
    for s, p, _ in curve:
        if p >= psnr:
            best = s if best is None else max(best, s)
    for (s0, p0, _), (s1, p1, _) in zip(curve, curve[1:]):
        if (p0 - psnr) * (p1 - psnr) < 0:
            s = s0 + (s1 - s0) * (psnr - p0) / (p1 - p0)
            best = s if best is None else max(best, s)
    return best


def matched(row: dict, curve: list[tuple[float, float, float]]) -> dict:
    """ProCache at the peer row's compute speed-up: interpolated PSNR and FD-full and who wins (higher PSNR
    and lower FD-full; None = ProCache's budgets do not span that speed-up, or the two metrics disagree)."""
    s = compute_speedup(row)
    p = _interp([(a, b) for a, b, _ in curve], s)
    f = _interp([(a, c) for a, _, c in curve], s)
    out = {"speedup": s, "procache_psnr": p, "procache_fd_full": f, "winner": None}
    if p is None:
        lo = curve[0][0] if curve else float("nan")
        hi = curve[-1][0] if curve else float("nan")
        out["note"] = f"outside ProCache's range {lo:.2f}-{hi:.2f}x"
        # a peer row slower than all of ProCache's and worse than ProCache's slowest point loses outright
        if curve and s < lo and row["psnr"] < curve[0][1] and row["fd_full"] > curve[0][2]:
            out["winner"] = "procache"
        # a peer row faster than all of ProCache's and better than ProCache's fastest point wins outright
        if curve and s > hi and row["psnr"] > curve[-1][1] and row["fd_full"] < curve[-1][2]:
            out["winner"] = "peer"
        return out
    if p >= row["psnr"] and f <= row["fd_full"]:
        out["winner"] = "procache"
    elif p < row["psnr"] and f > row["fd_full"]:
        out["winner"] = "peer"
    else:
        out["note"] = "metrics disagree"
    return out


MIN_USEFUL_SPEEDUP = 1.5


def peer_summary(rows: list[dict], peer: str, min_speedup: float = MIN_USEFUL_SPEEDUP) -> dict | None:
    """A peer's best-quality row (highest PSNR among its rows with a compute speed-up of at least
    `min_speedup`, or among all rows that save compute when none does), the speed-up ProCache reaches at
    that PSNR, and the rows where either beats the other at matched speed-up."""
    curve = procache_curve(rows)
    mine = [r for r in rows if r["method"] == peer]
    saving = [r for r in mine if r["block_eval_fraction"] < 1.0 - 1e-9]
    saving = [r for r in saving if compute_speedup(r) >= min_speedup - 1e-9] or saving
    if not mine:
        return None
    out: dict[str, Any] = {"peer": peer, "rows": len(mine), "saving_rows": len(saving)}
    if saving:
        best = max(saving, key=lambda r: (r["psnr"], -r["fd_full"]))
        out.update(best_label=best["label"], best_psnr=best["psnr"], best_fd_full=best["fd_full"],
                   best_speedup=compute_speedup(best), best_wall=best.get("wall_speedup"),
                   best_cpu=best.get("cpu_speedup"),
                   procache_speedup_at_best=speedup_at_quality(curve, best["psnr"]))
    out["peer_wins"] = [r["label"] for r in mine if matched(r, curve)["winner"] == "peer"]
    out["procache_wins"] = [r["label"] for r in mine if matched(r, curve)["winner"] == "procache"]
    return out


# --------------------------------------------------------------------------------------------- report

def _caveat(row: dict, family: str) -> str:
    """What the peer's spec says about running it on this family (e.g. coefficients fit to other weights)."""
    if row["method"].endswith("+ourratios"):
        return "ratios from MagCacheCalibration on this model and sampler"
    return next((p.caveats.get(family, "") for p in PEERS if p.name.lower() == row["method"]), "")


def markdown(results: dict, commit: str | None = None) -> str:
    lines = ["# ProCache against peer caching packs (CPU, real ComfyUI server)", "",
             f"Generated by `make bench-peers PEERS=<folder>` (benchmarks/peers.py)"
             + (f" at commit `{commit}`" if commit else "") + f", {results.get('seconds')} s. "
             f"Trained digits models of the pack (`nodes/demo`), {results['steps']} steps, CFG {results['cfg']}, "
             f"{results['n_samples']} samples (digits 0-9, seed 0), {results.get('timing_runs', 1)} KSampler runs per row "
             "(images of the first, median times) on one server. "
             "*blocks* = block-evaluation ratio (ProCache Stats; peers: host block-module calls counted by "
             "forward pre-hooks / those of full compute), *speed-up* = 1 / blocks, *CPU* = full-compute CPU time of the "
             "server process (user + system, /proc) / the row's, *wall* = the same with the execution time the "
             "host reports ("
             + ("median over the runs of the ratio to a full-compute run just before each"
                if results.get("paired") else "mean of the full-compute medians before and after the other rows")
             + "); at this model "
             "size the sampler's and the server's per-step overhead is a large, noisy share of both (the machine is "
             "shared with other jobs), so the "
             "comparison is made at matched compute speed-up (ProCache's PSNR and FD-full interpolated linearly "
             "between its settings on their upper envelope). ProCache rows: its flux presets (quality, balanced, "
             "fast; picked from the dropdown, remapped to the sampler's steps) and the paper-style schedule.", "",
             "## Peers", ""]
    prow = []
    for name, info in results["peers"].items():
        prow.append([name, info.get("url") or "n/a", (info.get("commit") or "n/a")
                     + (" (modified)" if info.get("dirty") else ""), f"`{info['node']}`", info["knob"],
                     info.get("import_error") or "imports"])
    lines.append(md_table(["peer", "repository", "commit", "node", "knob", "on host 0.3.75"], prow))
    lines.append("")
    for s in results.get("skipped", []):
        lines.append(f"- {s}")
    if results.get("installed_deps"):
        lines.append(f"- peer requirements installed into `.host/peer-deps`: {', '.join(results['installed_deps'])}")
    lines.append("")
    for fam, fr in results["families"].items():
        lines += [f"## {fam}", ""]
        accs = [r["label_acc"] for c in fr["cases"] for r in c["rows"] if r["method"] == "full"]
        if accs and max(accs) < 0.9:
            lines += [f"**This {fam} model does not draw digits** (full-compute label accuracy {max(accs):.2f}; its "
                      "weights are being retrained): its rows measure how closely each cache follows full compute, "
                      "nothing more.", ""]
        for case in fr["cases"]:
            lines += [f"### {fam} — {case['name']}", ""]
            curve = procache_curve(case["rows"])
            dom = dominated(case["rows"])
            rows = []
            for r in case["rows"]:
                if r.get("psnr") is None:
                    rows.append([r["label"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "",
                                 r.get("note", "")])
                    continue
                m = matched(r, curve) if r["method"] not in ("full", "procache") else None
                vs = ""
                if m:
                    vs = {"procache": "ProCache", "peer": "peer", None: "n/a"}[m["winner"]]
                    vs += f" ({fmt_num(m['procache_psnr'])} dB)" if m["procache_psnr"] is not None else f" ({m['note']})"
                    if m["winner"] is None and m.get("note") == "metrics disagree":
                        vs += ", metrics disagree"
                rows.append([r["label"], fmt_num(r["block_eval_fraction"], 3), fmt_num(compute_speedup(r)),
                             fmt_num(r.get("cpu_speedup")), fmt_num(r["wall_speedup"]), fmt_num(r["psnr"]), fmt_num(r["ssim"], 4), fmt_num(r["fd_full"], 3),
                             fmt_num(r["fd_real"], 1), fmt_num(r["label_acc"], 2), vs, r.get("note") or _caveat(r, fam)
                             or (f"off ProCache's envelope: {dom[r['label']]} is faster and higher in PSNR"
                                 if r["label"] in dom else "")])
            lines.append(md_table(["method", "blocks", "speed-up", "CPU", "wall", "PSNR", "SSIM", "FD-full", "FD-real",
                                   "label acc", "better at matched speed-up (ProCache PSNR there)", "note"], rows))
            lines.append("")
        if fr.get("mag_ratios"):
            for k, v in fr["mag_ratios"].items():
                lines.append(f"MagCache calibration on our {fam} model ({k}): `{', '.join(f'{x:.3f}' for x in v)}`")
            lines.append("")
    lines += summary_lines(results)
    return "\n".join(lines) + "\n"


def summary_lines(results: dict, level: str = "##") -> list[str]:
    """Per family, case and peer: the peer's best quality, the speed-up ProCache reaches there, and losses."""
    rows = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            methods = []
            for r in case["rows"]:
                if r["method"] not in ("full", "procache") and r["method"] not in methods:
                    methods.append(r["method"])
            for m in methods:
                notes = {r.get("note") for r in case["rows"] if r["method"] == m and r.get("psnr") is None}
                s = peer_summary([r for r in case["rows"] if r.get("psnr") is not None], m)
                if s is None or "best_psnr" not in s:
                    why = "; ".join(sorted(n for n in notes if n)) or "no row saved compute"
                    rows.append([fam, case["name"], m, "n/a", "n/a", "n/a", why])
                    continue
                rows.append([fam, case["name"], m,
                             f"{s['best_label']}: {fmt_num(s['best_psnr'])} dB at {fmt_num(s['best_speedup'])}x "
                             f"(CPU {fmt_num(s['best_cpu'])}x, wall {fmt_num(s['best_wall'])}x)",
                             fmt_num(s["procache_speedup_at_best"]) + ("x" if s["procache_speedup_at_best"] else
                                                                     " (no ProCache budget reaches it)"),
                             f"{len(s['procache_wins'])} / {len(s['peer_wins'])} of {s['rows']}",
                             "; ".join(s["peer_wins"]) or "none"])
    if not rows:
        return []
    return [f"{level} Summary: speed-up at each peer's best quality", "",
            f"The peer's best row is its highest PSNR among its rows with a compute speed-up of at least "
            f"{MIN_USEFUL_SPEEDUP}x (a setting that saves less is not one a user picks for speed; among all rows "
            "that skip any compute when none reaches it); ProCache's speed-up at that "
            "PSNR is read off its curve (linear between its settings on their upper envelope: a ProCache setting "
            "beaten by a faster one on PSNR is left out of the curve and marked in the tables). *wins* counts the peer's rows where ProCache, "
            "interpolated at the same compute speed-up, has higher PSNR and lower FD-full (ProCache) or both worse "
            "(peer).", "",
            md_table(["model", "case", "peer", "peer's best quality", "ProCache speed-up at that PSNR",
                      "wins ProCache / peer", "peer rows better than ProCache"], rows), ""]


def cpu_efficiency(results: dict) -> dict[str, float]:
    """Per method: median of CPU speed-up / compute speed-up over its rows that skip something."""
    vals: dict[str, list[float]] = {}
    for fr in results["families"].values():
        for case in fr["cases"]:
            for r in case["rows"]:
                if r.get("psnr") is None or r["method"] == "full" or r["block_eval_fraction"] >= 1.0 - 1e-9:
                    continue
                if r.get("cpu_speedup") and not math.isnan(r["cpu_speedup"]):
                    vals.setdefault(r["method"], []).append(r["cpu_speedup"] / compute_speedup(r))
    return {k: statistics.median(v) for k, v in vals.items()}


def losses_lines(results: dict) -> list[str]:
    """Where ProCache loses, read off the rows: peer rows better at matched speed-up, peer rows where the
    two metrics disagree, and ProCache settings beaten by a faster ProCache setting."""
    out = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            rows = [r for r in case["rows"] if r.get("psnr") is not None]
            curve = procache_curve(rows)
            where = f"{fam} {case['name']}"
            for r in rows:
                if r["method"] in ("full", "procache"):
                    continue
                m = matched(r, curve)
                if m["winner"] == "peer":
                    out.append(f"{where}: **{r['label']}** ({fmt_num(r['psnr'])} dB, FD-full {fmt_num(r['fd_full'], 3)} at "
                               f"{fmt_num(m['speedup'])}x) beats ProCache there ({fmt_num(m['procache_psnr'])} dB, "
                               f"FD-full {fmt_num(m['procache_fd_full'], 3)})" if m["procache_psnr"] is not None else
                               f"{where}: **{r['label']}** ({fmt_num(r['psnr'])} dB at {fmt_num(m['speedup'])}x) is faster "
                               "and better than ProCache's fastest setting")
                elif m.get("note") == "metrics disagree":
                    out.append(f"{where}: {r['label']} has "
                               + ("the lower FD-full" if r["fd_full"] < m["procache_fd_full"] else "the higher PSNR")
                               + f" at {fmt_num(m['speedup'])}x ({fmt_num(r['psnr'])} dB / {fmt_num(r['fd_full'], 3)} against "
                               f"ProCache's {fmt_num(m['procache_psnr'])} dB / {fmt_num(m['procache_fd_full'], 3)})")
            for label, better in dominated(rows).items():
                out.append(f"{where}: ProCache's own **{label}** is beaten by its {better} (faster and higher PSNR)")
    eff = cpu_efficiency(results)
    peers_eff = {k: v for k, v in eff.items() if k != "procache"}
    if "procache" in eff and peers_eff and eff["procache"] < min(peers_eff.values()):
        out.append(f"time: ProCache turns saved block evaluations into saved CPU time least well (median CPU / compute "
                   f"speed-up {eff['procache']:.2f} against {min(peers_eff.values()):.2f}-"
                   f"{max(peers_eff.values()):.2f} for the peers): its per-step work outside the blocks costs more "
                   "on this small model")
    if not out:
        return ["### Where ProCache loses", "", "Nowhere in these rows.", ""]
    return ["### Where ProCache loses", ""] + [f"- {o}" for o in out] + [""]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(fam, c) for fam, fr in results["families"].items() for c in fr["cases"]]
    if not panels:
        return
    cols = min(2, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.0 * cols, 4.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (fam, case) in zip(axes.flat, panels):
        groups: dict[str, list] = {}
        for r in case["rows"]:
            if r.get("psnr") is None or r["method"] == "full" or r["block_eval_fraction"] >= 1.0 - 1e-9:
                continue   # settings that skipped nothing are full compute (PSNR capped at 100)
            key = r["method"]
            groups.setdefault(key, []).append((compute_speedup(r), r["psnr"]))
        for key, pts in groups.items():
            pts.sort()
            style = "o-" if key == "procache" else ".--"
            ax.plot([a for a, _ in pts], [b for _, b in pts], style, label=key, lw=2 if key == "procache" else 1)
        ax.set_title(f"{fam} {case['name']} (settings that skip something)")
        ax.set_xlabel("compute speed-up (1 / block-evaluation ratio)")
        ax.set_ylabel("PSNR to full compute (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_START, README_END = block_marks("peers")


def readme_block(results: dict) -> str:
    body = ["## Peers side by side (`make bench-peers`)", "",
            "TeaCache, First Block Cache (Comfy-WaveSpeed) and MagCache on the same trained digits model, through "
            "the same server, in the same run; full tables, sources (repository and commit of each peer) and "
            "notes in [peers_cpu.md](peers_cpu.md).", "", "![peers](peers_cpu.png)", ""]
    body += summary_lines(results, "###")
    body += losses_lines(results)
    notes = []
    if "pixart" not in results["families"]:
        notes.append("PixArt is not in these numbers: the PixArt digits weights are being retrained. The script "
                     "runs it with `--families flux,pixart`; TeaCache and MagCache have no PixArt model type and "
                     "First Block Cache refuses the host's PixArtMS (\"No double blocks found\"), so only ProCache "
                     "has PixArt rows there.")
    notes.append("TeaCache's rescaling polynomial and MagCache's built-in ratios are fit to the released FLUX.1 "
                 "weights, not to this model, and neither cache node takes other values as an input. MagCache's "
                 "calibration node prints ratios for the model at hand (a user would paste them into its source); "
                 "the bench feeds them back through a bench-only node (rows *magcache+ourratios*). TeaCache ships no "
                 "calibration node for ComfyUI. First Block Cache needs no calibration.")
    eff = cpu_efficiency(results)
    if eff:
        notes.append("Timings come from a shared 2-core machine running other jobs, so CPU and wall speed-ups are "
                     "noisy; the comparison uses compute speed-up. Median CPU speed-up / compute speed-up over the "
                     "rows that skip something: " + ", ".join(f"{k} {v:.2f}" for k, v in eff.items())
                     + " (below 1: per-step overhead of the sampler and server that no cache removes at this size).")
    body += [f"- {n}" for n in notes] + [""]
    return "\n".join([README_START] + body + [README_END])


def update_readme(results: dict, readme: Path = RESULTS / "README.md") -> None:
    write_readme_block(readme, README_START, README_END, readme_block(results))


def write_report(res: dict, out: Path = RESULTS, commit: str | None = None) -> str:
    """Tables and plot into ``out`` (and the README block where ``out`` is the results folder); returns the
    tables' markdown."""
    text = markdown(res, commit)
    (out / "peers_cpu.md").write_text(text)
    plot(res, out / "peers_cpu.png")
    if out == RESULTS:
        update_readme(res)
    return text


def report_from_raw(out: Path = RESULTS) -> str:
    """:func:`write_report` from ``out``/raw/peers_cpu.json (no server, no peers needed)."""
    res = json.loads((out / "raw" / RAW_NAME).read_text())
    return write_report(res, out, res.get("commit"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    print(report_from_raw(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
