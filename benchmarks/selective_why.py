"""Why do selective steps barely help on the digits bed? Where does the reuse error come from?

    python -m benchmarks.selective_why [--budget 10] [--samples 50]

Runs full compute and, at every step, measures for each block and branch the error that reusing it
would add: ``|| gate_t * (out_t - out_seg) ||`` with ``out_seg`` the branch output of the last FULL
step of the searched schedule (its segment) and ``gate_t`` the current gate, relative to the norm of
the residual stream. Summed over the reused steps: the share of the reuse error per block and
branch (attention vs MLP, shallow vs deep) says what a selective step can and cannot repair.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from procache_core.engine import CacheRun
from procache_core.schedule import Action, Schedule
from procache_core.settings import SelectiveSettings

from .common import run_stamp, stamp_raw
from .quality import Method, sample
from .train_small_dit import load_or_train

RESULTS = Path(__file__).resolve().parent / "results" / "raw"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    stamp = run_stamp()
    torch.set_num_threads(1)
    quality = json.loads((RESULTS / "quality_quick.json").read_text())
    sched = Schedule.from_string(next(r["schedule"] for r in quality["rows"]
                                      if r["method"] == "procache" and r["budget"] == args.budget))
    model, _ = load_or_train(log=print)
    T = quality["T"]
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(args.samples, model.in_channels, model.input_size, model.input_size, generator=g)
    labels = torch.arange(args.samples) % model.num_classes

    # full compute, recording every block's branch outputs and gates per step
    records: list[dict] = []
    original = CacheRun.run_block

    def spy(self, block, x, branches):
        out = original(self, block, x, branches)
        rec = {"step": self.step, "block": block, "x_norm": float(x.norm())}
        for br in branches:
            gate = br.gate() if callable(br.gate) else br.gate
            rec[br.name] = (self.cache.stream(self._stream_key).blocks[block].outputs[br.name].clone(),
                            gate.clone() if gate is not None else None)
        records.append(rec)
        return out

    CacheRun.run_block = spy
    try:
        sample(model, noise, labels, T, Method("procache", "all F", schedule="F" * T), SelectiveSettings())
    finally:
        CacheRun.run_block = original

    by = {(r["step"], r["block"]): r for r in records}
    seg = 0
    err: dict[tuple[int, str], float] = {}
    for t in range(T):
        if sched[t] == Action.FULL:
            seg = t
            continue
        for b in range(model.depth):
            now, ref = by[(t, b)], by[(seg, b)]
            for name in ("attn", "mlp"):
                o_t, g_t = now[name]
                o_s, _ = ref[name]
                d = (o_t - o_s) * (g_t if g_t is not None else 1.0)
                err[(b, name)] = err.get((b, name), 0.0) + float(d.norm()) / now["x_norm"]
    total = sum(err.values())
    print(f"schedule B={args.budget}: {sched.to_string()}")
    print("share of the summed reuse error (|gate * drift| / |x|) per block and branch:")
    rows = []
    for b in range(model.depth):
        a, m = err[(b, "attn")] / total, err[(b, "mlp")] / total
        rows.append({"block": b, "attn": a, "mlp": m})
        print(f"  block {b}: attention {100 * a:5.1f} %   MLP {100 * m:5.1f} %")
    deep = model.depth - round(0.25 * model.depth)
    mlp_deep = sum(r["mlp"] for r in rows if r["block"] >= deep)
    mlp_all = sum(r["mlp"] for r in rows)
    print(f"MLPs of the deepest 25% of blocks: {100 * mlp_deep:.1f} %; all MLPs {100 * mlp_all:.1f} %; "
          f"attention {100 * (1 - mlp_all):.1f} %")
    out = RESULTS / f"selective_why_B{args.budget}.json"
    out.write_text(json.dumps(stamp_raw({"budget": args.budget, "schedule": sched.to_string(),
                                         "n_samples": args.samples, "rows": rows, "mlp_deep_share": mlp_deep,
                                         "mlp_share": mlp_all}, stamp), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
