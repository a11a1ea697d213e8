"""The drift guard on the trained digits models, sampled by the REAL ComfyUI server.

For each model and the in-host bench's four sampler cases, 20 steps, the uniform schedule of 4 full steps
(full every 5th step) with selective steps off, through Selective Compute Settings: guard off, and on at
x1.5, x2 and x3 (budget 0.1: at most 2 extra full steps). PSNR / FD-full against full compute of the same
seed (1000); the block-evaluation ratio from Stats (the guard's probe, block 0 on every reused step, and the
steps it turns full are counted); the extra full steps it took.

    python -m benchmarks.drift_guard                 # make bench-drift; about 2 minutes on a shared 2-core CPU
    python -m benchmarks.drift_guard --report-only   # rewrite the table from raw/drift_guard_cpu.json

Writes benchmarks/results/drift_guard_cpu.md and raw/drift_guard_cpu.json.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Any

from . import host_digits as hd
from .common import made_stamp, md_table, write_results
from .forecast import FAMILIES, SEED, case_sampler, digits_server, reference_features
from .host_quality import CASES, uniform_schedule

STEPS = 20
GUARDS = (0.0, 1.5, 2.0, 3.0)


def _settings(guard: float) -> dict:
    return {"enabled": False, "depth_fraction": 1.0, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 0.0,
            "w_output_norm": 0.0, "w_spatial": 0.0, "drift_guard": guard, "drift_budget": 0.1}


def run(repeat: int = 3, seed: int = SEED, log=print) -> dict:
    from .data import features

    featnet, _, f_real, labels = reference_features(repeat, log)
    acts = uniform_schedule(STEPS, 4)
    t0 = time.time()
    res: dict[str, Any] = {"steps": STEPS, "schedule": acts, "n_samples": len(labels), "seed": seed, "rows": []}
    with digits_server(repeat, "procache-guard-") as client:
        for fam in FAMILIES:
            client.run(hd.digits_prompt(fam, digits="0", steps=2, prefix="warm"), timeout=900)
            for case in CASES:
                sample = case_sampler(client, fam, case, repeat, seed, "dg", STEPS)
                x_full, _ = sample()
                f_full = features(featnet, x_full).numpy()
                for g in GUARDS:
                    x, e = sample(procache={"actions": acts, "selective": _settings(g)})
                    text = hd.stats_text(e) or ""
                    st = hd.parse_stats(text)
                    m = re.search(r"drift guard \S+ \(at most \d+\): (\d+) extra full", text)
                    m2 = hd.sample_metrics(featnet, labels, x, x_full, f_full, f_real)
                    row = {"family": fam, "case": case["name"], "guard": g, "extra_full": int(m.group(1)) if m else 0,
                           "block_eval_fraction": st["block_eval_fraction"], **m2}
                    res["rows"].append(row)
                    log(f"[guard] {fam} {case['name']:<34s} x{g:<4} extra {row['extra_full']} blocks "
                        f"{row['block_eval_fraction']:.3f} PSNR {m2['psnr']:6.2f} FD-full {m2['fd_full']:7.3f}")
    res["seconds"] = round(time.time() - t0, 1)
    return res


def report(res: dict) -> str:
    lines = ["# Drift guard (digits models, in-host)", "",
             made_stamp(res, "benchmarks.drift_guard") + f" {res['steps']} steps, schedule `{res['schedule']}`, selective steps "
             f"off, {res['n_samples']} samples per row, seed {res['seed']}; budget 0.1 (at most 2 extra full steps).",
             "", md_table(["model", "case", "guard", "extra full", "blocks", "PSNR dB", "FD-full"],
                          [[r["family"], r["case"], "off" if not r["guard"] else f"x{r['guard']:g}", r["extra_full"],
                            f"{r['block_eval_fraction']:.3f}", f"{r['psnr']:.2f}", f"{r['fd_full']:.3f}"]
                           for r in res["rows"]]), ""]
    by = {(r["family"], r["case"], r["guard"]): r for r in res["rows"]}
    keys = sorted({(r["family"], r["case"]) for r in res["rows"]})
    lines += ["## Verdict", ""]
    for g in GUARDS[1:]:
        fired = [k for k in keys if by[(*k, g)]["extra_full"]]
        better = [k for k in fired if by[(*k, g)]["psnr"] > by[(*k, 0.0)]["psnr"]]
        gain = [by[(*k, g)]["psnr"] - by[(*k, 0.0)]["psnr"] for k in keys]
        cost = [by[(*k, g)]["block_eval_fraction"] - by[(*k, 0.0)]["block_eval_fraction"] for k in keys]
        lines.append(f"- x{g:g}: fired in {len(fired)} of {len(keys)} cases, higher PSNR in {len(better)} of those; "
                     f"mean PSNR change {sum(gain) / len(gain):+.2f} dB for {sum(cost) / len(cost):+.3f} block ratio.")
    lines += ["", "The guard stays off by default; its probe costs one block per reused step even when it never fires.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    write_results("drift_guard_cpu", run, report, "--report-only" in sys.argv)

if __name__ == "__main__":
    main()
