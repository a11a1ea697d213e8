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
#
# Two speed-up bases: "cpu" (primary) = the CPU-time ratio to full compute the bench measured in the same
# run (server process user + system time, median of the per-pair ratios); "blocks" = 1 / block-evaluation
# ratio, what the cache saved in block work, labelled "block ratio" wherever it is shown.

BASES = ("cpu", "blocks")
STEP_LABEL = "step+forecast"   # the end of the label of a ProCache row run with reuse: step (benchmarks/peers.py)


def compute_speedup(row: dict) -> float:
    """The block ratio speed-up, 1 / block-evaluation ratio (not a time)."""
    b = row.get("block_eval_fraction")
    return 1.0 / b if b else float("nan")


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else float("nan")


def speedup(row: dict, basis: str = "cpu") -> float:
    """The row's speed-up on `basis`: measured CPU time ratio ("cpu") or block ratio ("blocks"); NaN where
    the row was not timed."""
    if basis == "blocks":
        return compute_speedup(row)
    if basis != "cpu":
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    return _num(row.get("cpu_speedup"))


def spread(row: dict, key: str) -> tuple[float, float] | None:
    """(min, max) of the row's per-run values of `key` (e.g. cpu_speedup -> cpu_speedup_runs); None when the
    raw results kept no per-run values."""
    runs = [v for v in (row.get(f"{key}_runs") or []) if not math.isnan(_num(v))]
    return (min(runs), max(runs)) if runs else None


def skips_nothing(row: dict) -> bool:
    """A setting that evaluated every block is full compute: its measured speed-up is noise, no verdict."""
    b = row.get("block_eval_fraction")
    return b is not None and b >= 1.0 - 1e-9


def procache_curve(rows: list[dict], basis: str = "cpu") -> list[tuple[float, float, float]]:
    """(speed-up, PSNR, FD-full) of ProCache's settings on their upper envelope, by speed-up on `basis`: a
    setting for which another one is both faster and higher in PSNR is left out (see `dominated`)."""
    pts = sorted(((speedup(r, basis), r["psnr"], r["fd_full"]) for r in rows
                  if r["method"] == "procache" and not math.isnan(speedup(r, basis))), reverse=True)
    out, best = [], -math.inf
    for s, p, f in pts:
        if p > best:
            out.append((s, p, f))
            best = p
    return out[::-1]


def dominated(rows: list[dict], basis: str = "cpu") -> dict[str, str]:
    """ProCache rows off the envelope -> the label of a ProCache row that is faster and higher in PSNR."""
    pc = [r for r in rows if r["method"] == "procache" and not math.isnan(speedup(r, basis))]
    out = {}
    for r in pc:
        better = [q for q in pc if speedup(q, basis) > speedup(r, basis) and q["psnr"] > r["psnr"]]
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


def matched_at(row: dict, curve: list[tuple[float, float, float]], s: float) -> dict:
    """ProCache at speed-up `s` against the peer row: interpolated PSNR and FD-full and who wins (higher
    PSNR and lower FD-full, both together; None = ProCache's settings do not span `s`, the two metrics
    disagree, or the row skipped nothing)."""
    out = {"speedup": s, "procache_psnr": None, "procache_fd_full": None, "winner": None}
    if skips_nothing(row):
        out["note"] = "skips nothing (full compute)"
        return out
    if math.isnan(s):
        out["note"] = "not timed"
        return out
    p = _interp([(a, b) for a, b, _ in curve], s)
    f = _interp([(a, c) for a, _, c in curve], s)
    out.update(procache_psnr=p, procache_fd_full=f)
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


def matched(row: dict, curve: list[tuple[float, float, float]], basis: str = "cpu") -> dict:
    """:func:`matched_at` the peer row's own speed-up on `basis` (the curve must be on the same basis). On
    the CPU basis with per-run values, ``holds`` says whether the verdict is the same at both ends of the
    row's min-max CPU speed-up (the machine is noisy; a verdict that flips inside the spread is weak)."""
    out = matched_at(row, curve, speedup(row, basis))
    rng = spread(row, "cpu_speedup") if basis == "cpu" else None
    if rng is not None and out["winner"] is not None:
        out["holds"] = all(matched_at(row, curve, s)["winner"] == out["winner"] for s in rng)
    return out


MIN_USEFUL_SPEEDUP = 1.5


def peer_summary(rows: list[dict], peer: str, min_speedup: float = MIN_USEFUL_SPEEDUP,
                 basis: str = "cpu") -> dict | None:
    """A peer's best-quality row (highest PSNR among its rows that skip something with a speed-up of at
    least `min_speedup` on `basis`, or among all rows that skip something when none does), the speed-up
    ProCache reaches at that PSNR, its documented-setting rows, and the rows where either beats the other
    at matched speed-up."""
    curve = procache_curve(rows, basis)
    mine = [r for r in rows if r["method"] == peer]
    if not mine:
        return None
    saving = [r for r in mine if not skips_nothing(r) and not math.isnan(speedup(r, basis))]
    saving = [r for r in saving if speedup(r, basis) >= min_speedup - 1e-9] or saving
    out: dict = {"peer": peer, "rows": len(mine), "saving_rows": len(saving), "basis": basis}
    if saving:
        best = max(saving, key=lambda r: (r["psnr"], -r["fd_full"]))
        out.update(best_label=best["label"], best_psnr=best["psnr"], best_fd_full=best["fd_full"],
                   best_speedup=speedup(best, basis), best_blocks=compute_speedup(best),
                   best_wall=best.get("wall_speedup"), best_cpu=best.get("cpu_speedup"),
                   procache_speedup_at_best=speedup_at_quality(curve, best["psnr"]))
    verdicts = [(r, matched(r, curve, basis)) for r in mine]
    out["peer_wins"] = [r["label"] for r, m in verdicts if m["winner"] == "peer"]
    out["procache_wins"] = [r["label"] for r, m in verdicts if m["winner"] == "procache"]
    out["no_verdict"] = [r["label"] for r, m in verdicts if m["winner"] is None]
    out["documented"] = [(r, m) for r, m in verdicts if r.get("documented")]
    return out


def tally(results: dict, basis: str = "cpu") -> dict[str, int]:
    """Over every peer row of every case: how many ProCache wins, the peer wins, and why the rest have no
    verdict (at matched speed-up on `basis`)."""
    out = {"rows": 0, "procache": 0, "peer": 0, "metrics disagree": 0, "outside range": 0,
           "skips nothing": 0, "not timed": 0}
    for fr in results["families"].values():
        for case in fr["cases"]:
            rows = [r for r in case["rows"] if r.get("psnr") is not None]
            curve = procache_curve(rows, basis)
            for r in rows:
                if r["method"] in ("full", "procache"):
                    continue
                m = matched(r, curve, basis)
                out["rows"] += 1
                note = m.get("note", "")
                key = (m["winner"] or ("outside range" if note.startswith("outside") else
                                       "skips nothing" if note.startswith("skips") else note))
                out[key] = out.get(key, 0) + 1
    return out


# --------------------------------------------------------------------------------------------- report

def _caveat(row: dict, family: str) -> str:
    """What the peer's spec says about running it on this family (e.g. coefficients fit to other weights)."""
    if row["method"].endswith("+ourratios"):
        return "ratios from MagCacheCalibration on this model and sampler"
    return next((p.caveats.get(family, "") for p in PEERS if p.name.lower() == row["method"]), "")


def _with_spread(row: dict, key: str) -> str:
    """A measured speed-up cell: the median, then the min-max over the row's runs where the raw kept them."""
    rng = spread(row, key)
    med = fmt_num(row.get(key))
    return med + (f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "")


def _verdict_cell(m: dict | None, full: bool = True) -> str:
    if not m:
        return ""
    out = {"procache": "ProCache", "peer": "peer", None: "n/a"}[m["winner"]]
    if not full:
        return out
    if m["procache_psnr"] is not None:
        out += f" ({fmt_num(m['procache_psnr'])} dB / {fmt_num(m['procache_fd_full'], 3)})"
        if m.get("note"):
            out += f", {m['note']}"
    elif m.get("note"):
        out += f" ({m['note']})"
    if m.get("holds") is False:
        out += ", flips within the CPU spread"
    return out


def _runs_text(results: dict) -> str:
    n = results.get("timing_runs", 1)
    if results.get("paired"):
        return (f"{n} runs per row, each just after a full-compute run; a row's speed-up is the median of its "
                f"{n} per-pair ratios, shown with their min-max")
    return f"{n} runs per row; median time, min-max of the per-run ratios to the mean full-compute time"


def markdown(results: dict, commit: str | None = None) -> str:
    has_spread = any(r.get("cpu_speedup_runs") for fr in results["families"].values()
                     for c in fr["cases"] for r in c["rows"])
    lines = ["# ProCache against peer caching packs (CPU, real ComfyUI server)", "",
             f"Generated by `make bench-peers PEERS=<folder>` (benchmarks/peers.py)"
             + (f" at commit `{commit}`" if commit else "")
             + (f" on {results['date']}" if results.get("date") else "") + f", {results.get('seconds')} s. "
             f"Trained digits models of the pack (`nodes/demo`), {results['steps']} steps, CFG {results['cfg']}, "
             f"{results['n_samples']} samples (digits 0-9, seed 0), {_runs_text(results)} "
             "(images of the first run), on one server. "
             "**Speed-ups are measured time in the same run**: *CPU* = full-compute CPU time of the "
             "server process (user + system, /proc) / the row's (the primary basis: far less sensitive than the "
             "wall clock to other jobs on this shared 2-core machine), *wall* = the same with the execution time "
             "the host reports"
             + ("" if has_spread else " (this raw file kept no per-run values: no spread shown)") + ". "
             "*blocks* = block-evaluation ratio (ProCache Stats; peers: host block-module calls counted by "
             "forward pre-hooks / those of full compute) and *block ratio* = 1 / blocks: what the cache saved in "
             "block work, not a time. Rows are compared at **matched measured CPU speed-up**: ProCache's PSNR and "
             "FD-full interpolated linearly between its settings on their upper envelope (by CPU speed-up) at the "
             "peer row's CPU speed-up; ProCache wins a row when it has higher PSNR *and* lower FD-full there, the "
             "peer when both are worse for ProCache, otherwise no verdict. A setting that skips no block is full "
             "compute and gets no verdict (its speed-up is noise). The verdict at matched block ratio (the "
             "bench's former basis) is kept beside it. ProCache rows: its flux presets (quality, balanced, "
             "fast; picked from the dropdown, remapped to the sampler's steps), the paper-style schedule, and "
             "(rows named *step+forecast*, where the raw file has them) the same presets with ProCache Apply's "
             "`reuse: step` (a cached step skips the model call) and forecast light, selective steps off. "
             "Rows marked *(documented setting)* are the peer's recommended FLUX value from its README.", "",
             "## Peers", ""]
    prow = []
    for name, info in results["peers"].items():
        spec = next((p for p in PEERS if p.name == name), None)
        doc = spec.documented.get("flux") if spec else None
        prow.append([name, info.get("url") or "n/a", (info.get("commit") or "n/a")
                     + (" (modified)" if info.get("dirty") else ""), f"`{info['node']}`", info["knob"],
                     (", ".join(f"{k}={v}" for k, v in doc.items()) + f" ({spec.documented_source})") if doc else "n/a",
                     info.get("import_error") or "imports"])
    lines.append(md_table(["peer", "repository", "commit", "node", "knob", "documented FLUX setting (source)",
                           "on host 0.3.75"], prow))
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
            lines += [f"**This {fam} model does not draw digits** (full-compute label accuracy {max(accs):.2f}): "
                      "its rows measure how closely each cache follows full compute, nothing more.", ""]
        for case in fr["cases"]:
            lines += [f"### {fam} — {case['name']}", ""]
            timed_rows = [r for r in case["rows"] if r.get("psnr") is not None]
            curve = procache_curve(timed_rows, "cpu")
            curve_b = procache_curve(timed_rows, "blocks")
            dom = dominated(timed_rows, "cpu")
            rows = []
            for r in case["rows"]:
                if r.get("psnr") is None:
                    rows.append([r["label"]] + ["n/a"] * 10 + ["", "", r.get("note", "")])
                    continue
                peer = r["method"] not in ("full", "procache")
                m = matched(r, curve, "cpu") if peer else None
                mb = matched(r, curve_b, "blocks") if peer else None
                rows.append([r["label"], fmt_num(r["block_eval_fraction"], 3), fmt_num(compute_speedup(r)),
                             _with_spread(r, "cpu_speedup"), _with_spread(r, "wall_speedup"), fmt_num(r["psnr"]),
                             fmt_num(r["ssim"], 4), fmt_num(r["fd_full"], 3), fmt_num(r["fd_real"], 1),
                             fmt_num(r["label_acc"], 2), _verdict_cell(m), _verdict_cell(mb, full=False),
                             r.get("note") or _caveat(r, fam)
                             or (f"off ProCache's CPU envelope: {dom[r['label']]} is faster and higher in PSNR"
                                 if r["label"] in dom else "")])
            lines.append(md_table(["method", "blocks", "block ratio", "CPU speed-up (min-max)",
                                   "wall speed-up (min-max)", "PSNR", "SSIM", "FD-full", "FD-real", "label acc",
                                   "better at matched CPU speed-up (ProCache PSNR / FD-full there)",
                                   "better at matched block ratio", "note"], rows))
            lines.append("")
        if fr.get("mag_ratios"):
            for k, v in fr["mag_ratios"].items():
                lines.append(f"MagCache calibration on our {fam} model ({k}): `{', '.join(f'{x:.3f}' for x in v)}`")
            lines.append("")
    lines += summary_lines(results)
    return "\n".join(lines) + "\n"


def _documented_cell(s: dict) -> str:
    cells = []
    for r, m in s.get("documented", []):
        who = {"procache": "ProCache better", "peer": "peer better", None: "no verdict"}[m["winner"]]
        there = (f", ProCache {fmt_num(m['procache_psnr'])} dB / {fmt_num(m['procache_fd_full'], 3)} there"
                 if m["procache_psnr"] is not None else f" ({m.get('note')})")
        cells.append(f"{fmt_num(r['psnr'])} dB / {fmt_num(r['fd_full'], 3)} at CPU {fmt_num(r.get('cpu_speedup'))}x: "
                     f"{who}{there}")
    return "; ".join(cells) or "n/a"


def summary_lines(results: dict, level: str = "##") -> list[str]:
    """Per family, case and peer, on measured CPU speed-up: the peer's best quality and the speed-up ProCache
    reaches there, its documented setting, wins and losses (and the wins at block ratio beside them)."""
    rows = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            methods = []
            for r in case["rows"]:
                if r["method"] not in ("full", "procache") and r["method"] not in methods:
                    methods.append(r["method"])
            timed_rows = [r for r in case["rows"] if r.get("psnr") is not None]
            for m in methods:
                notes = {r.get("note") for r in case["rows"] if r["method"] == m and r.get("psnr") is None}
                s = peer_summary(timed_rows, m, basis="cpu")
                sb = peer_summary(timed_rows, m, basis="blocks")
                if s is None or "best_psnr" not in s:
                    why = "; ".join(sorted(n for n in notes if n)) or "no row saved compute"
                    rows.append([fam, case["name"], m, "n/a", "n/a", "n/a", "n/a", "n/a", why])
                    continue
                rows.append([fam, case["name"], m,
                             f"{s['best_label']}: {fmt_num(s['best_psnr'])} dB at CPU {fmt_num(s['best_cpu'])}x "
                             f"(wall {fmt_num(s['best_wall'])}x, block ratio {fmt_num(s['best_blocks'])}x)",
                             fmt_num(s["procache_speedup_at_best"]) + ("x" if s["procache_speedup_at_best"] else
                                                                     " (no ProCache setting reaches it)"),
                             _documented_cell(s),
                             f"{len(s['procache_wins'])} / {len(s['peer_wins'])} / {len(s['no_verdict'])} of {s['rows']}",
                             f"{len(sb['procache_wins'])} / {len(sb['peer_wins'])}",
                             "; ".join(s["peer_wins"]) or "none"])
    if not rows:
        return []
    t, tb = tally(results, "cpu"), tally(results, "blocks")
    eff = cpu_efficiency(results)

    def why(t: dict) -> str:
        parts = [f"{t[k]} {k}" for k in ("metrics disagree", "outside range", "skips nothing", "not timed") if t.get(k)]
        return ", ".join(parts) or "none"

    return [f"{level} Summary at matched measured CPU speed-up", "",
            f"Over all {t['rows']} peer rows: **ProCache better on PSNR and FD-full in {t['procache']}, the peer in "
            f"{t['peer']}**, no verdict in {t['rows'] - t['procache'] - t['peer']} ({why(t)}). At matched block ratio "
            f"(not a time) the same rows give {tb['procache']} / {tb['peer']}.", "",
            "Median measured CPU speed-up / block ratio speed-up over the rows that skip something (1 = every "
            "saved block evaluation saved its share of CPU time): "
            + (", ".join(f"{k} {v:.2f}" for k, v in eff.items()) or "n/a") + ".", "",
            f"The peer's best row is its highest PSNR among its rows that skip something with a measured CPU "
            f"speed-up of at least {MIN_USEFUL_SPEEDUP}x (among all that skip something when none reaches it); "
            "ProCache's CPU speed-up at that PSNR is read off its curve (linear between its settings on their upper "
            "envelope by CPU speed-up). *wins* counts the peer's rows where ProCache, interpolated at the same "
            "CPU speed-up, has higher PSNR and lower FD-full (ProCache), both worse (peer), or neither (no verdict).", "",
            md_table(["model", "case", "peer", "peer's best quality (CPU >= 1.5x)", "ProCache CPU speed-up at that PSNR",
                      "documented setting", "wins ProCache / peer / no verdict (CPU)", "wins at block ratio",
                      "peer rows better than ProCache (CPU)"], rows), ""]


def cpu_efficiency(results: dict) -> dict[str, float]:
    """Per method: median of measured CPU speed-up / block ratio speed-up over its rows that skip something
    (ProCache's rows also split by reuse mode: block reuse and step reuse, the ``step+forecast`` rows)."""
    vals: dict[str, list[float]] = {}
    for fr in results["families"].values():
        for case in fr["cases"]:
            for r in case["rows"]:
                if r.get("psnr") is None or r["method"] == "full" or skips_nothing(r):
                    continue
                if not math.isnan(speedup(r, "cpu")):
                    ratio = speedup(r, "cpu") / compute_speedup(r)
                    vals.setdefault(r["method"], []).append(ratio)
                    if r["method"] == "procache":
                        mode = "step reuse" if str(r.get("label", "")).endswith(STEP_LABEL) else "block reuse"
                        vals.setdefault(f"procache ({mode})", []).append(ratio)
    if "procache (step reuse)" not in vals:  # one mode only: the split says nothing more
        vals.pop("procache (block reuse)", None)
    return {k: statistics.median(v) for k, v in vals.items()}


def losses_lines(results: dict) -> list[str]:
    """Where ProCache loses, read off the rows at matched measured CPU speed-up: peer rows better there, peer
    rows where the two metrics disagree, and ProCache settings beaten by a faster ProCache setting."""
    out = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            rows = [r for r in case["rows"] if r.get("psnr") is not None]
            curve = procache_curve(rows, "cpu")
            where = f"{fam} {case['name']}"
            for r in rows:
                if r["method"] in ("full", "procache"):
                    continue
                m = matched(r, curve, "cpu")
                weak = " (flips within the row's CPU spread)" if m.get("holds") is False else ""
                if m["winner"] == "peer":
                    out.append(f"{where}: **{r['label']}** ({fmt_num(r['psnr'])} dB, FD-full {fmt_num(r['fd_full'], 3)} at "
                               f"CPU {fmt_num(m['speedup'])}x) beats ProCache there ({fmt_num(m['procache_psnr'])} dB, "
                               f"FD-full {fmt_num(m['procache_fd_full'], 3)}){weak}" if m["procache_psnr"] is not None else
                               f"{where}: **{r['label']}** ({fmt_num(r['psnr'])} dB at CPU {fmt_num(m['speedup'])}x) is "
                               f"faster and better than ProCache's fastest setting{weak}")
                elif m.get("note") == "metrics disagree":
                    out.append(f"{where}: {r['label']} has "
                               + ("the lower FD-full" if r["fd_full"] < m["procache_fd_full"] else "the higher PSNR")
                               + f" at CPU {fmt_num(m['speedup'])}x ({fmt_num(r['psnr'])} dB / {fmt_num(r['fd_full'], 3)} "
                               f"against ProCache's {fmt_num(m['procache_psnr'])} dB / {fmt_num(m['procache_fd_full'], 3)})")
            for label, better in dominated(rows, "cpu").items():
                out.append(f"{where}: ProCache's own **{label}** is beaten by its {better} (faster in CPU time and "
                           "higher PSNR)")
    eff = cpu_efficiency(results)
    peers_eff = {k: v for k, v in eff.items() if not k.startswith("procache")}
    if "procache" in eff and peers_eff and eff["procache"] < min(peers_eff.values()):
        out.append(f"time: ProCache turns saved block evaluations into saved CPU time least well (median CPU / block "
                   f"ratio speed-up {eff['procache']:.2f} against {min(peers_eff.values()):.2f}-"
                   f"{max(peers_eff.values()):.2f} for the peers): its per-step work outside the blocks costs more "
                   "on this small model")
    if not out:
        return ["### Where ProCache loses (matched measured CPU speed-up)", "", "Nowhere in these rows.", ""]
    return ["### Where ProCache loses (matched measured CPU speed-up)", ""] + [f"- {o}" for o in out] + [""]


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
            if r.get("psnr") is None or r["method"] == "full" or skips_nothing(r) or math.isnan(speedup(r)):
                continue   # settings that skipped nothing are full compute (PSNR capped at 100)
            rng = spread(r, "cpu_speedup") or (speedup(r), speedup(r))
            groups.setdefault(r["method"], []).append((speedup(r), r["psnr"], rng, bool(r.get("documented"))))
        for i, (key, pts) in enumerate(groups.items()):
            pts.sort()
            color = f"C{i}"
            xs, ys = [a for a, *_ in pts], [b for _, b, *_ in pts]
            err = [[a - rng[0] for a, _, rng, _ in pts], [rng[1] - a for a, _, rng, _ in pts]]
            pc = key == "procache"
            ax.errorbar(xs, ys, xerr=err, fmt="o-" if pc else ".--", color=color, label=key, lw=2 if pc else 1,
                        elinewidth=0.8, capsize=2)
            doc = [(a, b) for a, b, _, d in pts if d]
            if doc:
                ax.plot([a for a, _ in doc], [b for _, b in doc], "*", color=color, ms=12, mec="k",
                        label=f"{key} documented setting")
        ax.set_title(f"{fam} {case['name']} (settings that skip something)")
        ax.set_xlabel("measured CPU speed-up (median, bars: min-max of the runs)")
        ax.set_ylabel("PSNR to full compute (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_START, README_END = block_marks("peers")


def readme_block(results: dict) -> str:
    body = ["## Peers side by side (`make bench-peers`)", "",
            "TeaCache, First Block Cache (Comfy-WaveSpeed) and MagCache on the same trained digits model, through "
            "the same server, in the same run, over a sweep of their knobs and at their README's documented FLUX "
            "setting; compared at matched **measured CPU speed-up** on PSNR and FD-full together. Full tables "
            "(with wall time, the spread over the runs and the block ratio), sources (repository and commit of "
            "each peer) and notes in [peers_cpu.md](peers_cpu.md)"
            + (f", measured at commit `{results['commit']}`" if results.get("commit") else "") + ".", "",
            "![peers](peers_cpu.png)", ""]
    body += summary_lines(results, "###")
    body += losses_lines(results)
    notes = []
    if "pixart" not in results["families"]:
        notes.append("PixArt is not in these numbers (the bench runs flux by default; `--families flux,pixart` adds "
                     "it): TeaCache and MagCache have no PixArt model type and First Block Cache refuses the host's "
                     "PixArtMS (\"No double blocks found\"), so only ProCache would have PixArt rows.")
    notes.append("TeaCache's rescaling polynomial and MagCache's built-in ratios are fit to the released FLUX.1 "
                 "weights, not to this model, and neither cache node takes other values as an input. MagCache's "
                 "calibration node prints ratios for the model at hand (a user would paste them into its source); "
                 "the bench feeds them back through a bench-only node (rows *magcache+ourratios*). TeaCache ships no "
                 "calibration node for ComfyUI. First Block Cache needs no calibration. The documented settings are "
                 "tuned for FLUX.1 at 28 steps; on this small 20-step model some of them skip little or nothing.")
    notes.append("Timings come from a shared 2-core machine running other jobs: each row's CPU and wall speed-ups "
                 "are medians over its runs, with the min-max in the tables; a verdict that flips inside a row's "
                 "CPU spread is marked.")
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
