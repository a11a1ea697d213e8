"""`make bench-step-cost`: what one model evaluation of each kind costs, as a share of a full step.

The digits demo models (nodes/demo: the host's own Flux and PixArt-α classes, trained weights) are
sampled in this process by the host's ``comfy.sample.sample`` (ComfyUI 0.3.75 from ``.host``), patched by
the pack's real ProCache Apply node. Every call of the host's ``BaseModel.apply_model`` (the model
evaluation with ProCache's APPLY_MODEL wrapper inside it, one batched cond+uncond call per euler step) is
timed three ways: wall clock, process CPU time and this thread's CPU time. With one torch thread (the
default here) all the arithmetic runs on the calling thread, so the thread CPU time is what the
evaluation itself cost, whatever else the shared machine is doing.

Kinds of evaluation, each the median over the evaluations of that kind in every timed run:

* ``full (host)``: the unpatched model: the denominator of every share;
* ``no blocks (host, floor)``: the unpatched model with every block the identity: embedders, positional
  embedding, final layer and the host's model call, the least a block-level cache's reused step costs;
* ``full``: ProCache's FULL step (computes every block and stores its outputs);
* ``reused``: a CACHED step (every block reused, plain copy);
* ``selective``: a SELECTIVE step (default settings: the deepest 25% of blocks recompute 30% of tokens);
* ``forecast reused (order k)``: a CACHED step that extrapolates the cached outputs (``forecast`` k);
* ``reused (stack)``: a CACHED step with ``reuse: stack`` (one residual per lane for the stretch),
  when the pack has that option;
* ``full (step)`` / ``reused (step)``: a FULL and a CACHED step with ``reuse: step`` (a cached step does not
  call the model; without selective steps a full one stores no block output).

The FLOPs ideal of a kind is the arithmetic it does (matmul / attention FLOPs counted by
``torch.utils.flop_counter`` on one evaluation) over the host's full step: the share a reused step would
cost if time followed FLOPs. ``overhead`` is the thread-CPU share minus that ideal.

A quality table for the reuse modes (PSNR and Fréchet distance to full compute, decoded digits) is
written beside it (``--quality-repeat``; 0 skips it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .common import RESULTS, machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "step_cost_cpu.md"
RAW = RESULTS / "raw" / "step_cost_cpu.json"
STEPS = 20
# two FULL steps first (forecasting needs two computed points), then runs of three reused steps
PATTERN = "FF" + "CCCF" * 4 + "CC"


def _host() -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host(cpu=True)


def _pack():
    from .speed import load_pack

    return load_pack()


def commit() -> str:
    """Short commit of the code measured (benchmarks.common.code_commit)."""
    from .common import code_commit

    return code_commit(7) or "unknown"


def reuse_modes() -> tuple[str, ...]:
    """The reuse modes ProCache Apply offers (``("blocks",)`` before the option existed)."""
    _pack()
    try:
        from procache_pack.nodes.memory_bridge import REUSE_CHOICES
    except ImportError:
        return ("blocks",)
    return tuple(REUSE_CHOICES)


class Workload:
    """One digits model with its prompt, latent and noise (10 digits, real CFG against 'no digit')."""

    def __init__(self, family: str, repeat: int = 1, seed: int = 0) -> None:
        _host()
        _pack()
        from procache_pack.nodes.demo import digits as dg
        from procache_pack.nodes.demo.nodes import load_model

        import comfy.sample

        self.family, self.dg = family, dg
        self.mp = load_model(family)
        self.labels = torch.arange(10).repeat(repeat)
        tok, pooled = dg.embeddings()
        null = torch.full_like(self.labels, dg.NULL_DIGIT)
        self.pos = [[tok[self.labels], {"pooled_output": pooled[self.labels]}]]
        self.neg = [[tok[null][:1], {"pooled_output": pooled[null][:1]}]]
        h, w = dg.LATENT_HW[family]
        self.latent = torch.zeros(len(self.labels), dg.LATENT_CHANNELS[family], h, w)
        self.noise = comfy.sample.prepare_noise(self.latent, seed)
        self.seed = seed

    def floor(self):
        """The host model with every transformer block replaced by the identity: what a step costs that
        runs everything but the blocks (embedders, positional embedding, final layer, the host's model
        call), the least any block-level cache can cost."""
        mp = self.mp.clone()
        dm = mp.model.diffusion_model
        if self.family == "flux":
            for i in range(len(dm.double_blocks)):
                mp.set_model_patch_replace(lambda args, extra: {"img": args["img"], "txt": args["txt"]},
                                           "dit", "double_block", i)
            for i in range(len(dm.single_blocks)):
                mp.set_model_patch_replace(lambda args, extra: {"img": args["img"]}, "dit", "single_block", i)
        else:
            for i in range(len(dm.blocks)):
                mp.add_object_patch(f"diffusion_model.blocks.{i}.forward", lambda x, *a, **k: x)
        return mp

    def patched(self, schedule: str, selective: bool = False, forecast: int = 0, reuse: str = "blocks"):
        """The model through the pack's ProCache Apply node with a preset holding ``schedule``."""
        from types import SimpleNamespace

        from procache_pack.nodes.apply import ProCacheApply
        from procache_pack.procache_core.schedule import Schedule
        from procache_pack.procache_core.settings import SelectiveSettings

        sel = SelectiveSettings(enabled=selective, forecast=forecast)
        preset = SimpleNamespace(name="step-cost", schedule=Schedule.from_string(schedule), family=self.family,
                                 model="digits", selective=sel, provenance={"source": "benchmarks"}, version=1)
        kw = {"reuse": reuse} if reuse != "blocks" else {}
        out = ProCacheApply.execute(self.mp, preset, sel, short_run_floor=0, **kw)
        return out.args[0] if hasattr(out, "args") else out[0]

    def sample(self, model, steps: int = STEPS) -> torch.Tensor:
        import comfy.sample

        return comfy.sample.sample(model, self.noise, steps, 3.0, "euler", "normal", self.pos, self.neg,
                                   self.latent, seed=self.seed, disable_pbar=True)

    def images(self, samples: torch.Tensor) -> torch.Tensor:
        return self.dg.decode(samples).clamp(-1, 1)


class EvalClock:
    """Times every ``apply_model`` call of one host model (an instance attribute over the bound method)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.calls: list[tuple[float, float, float]] = []   # (wall, process CPU, thread CPU) seconds
        self.flops: list[int] | None = None

    def __enter__(self) -> "EvalClock":
        orig = self.base.apply_model

        def timed(*a, **kw):
            if self.flops is not None:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as fc:
                    out = orig(*a, **kw)
                self.flops.append(int(fc.get_total_flops()))
                return out
            t0, c0, h0 = time.perf_counter(), time.process_time(), time.thread_time()
            out = orig(*a, **kw)
            self.calls.append((time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - h0))
            return out

        self.base.apply_model = timed
        return self

    def __exit__(self, *exc) -> None:
        self.base.__dict__.pop("apply_model", None)


def variants(reuse: tuple[str, ...]) -> dict[str, dict]:
    """name -> (schedule, Apply settings, the evaluation kind measured: its letter in the schedule)."""
    reused = PATTERN
    out = {
        "full (host)": {"schedule": None, "kind": "F"},
        "no blocks (host, floor)": {"schedule": None, "kind": "F", "floor": True},
        "full": {"schedule": "F" * STEPS, "kind": "F"},
        "reused": {"schedule": reused, "kind": "C"},
        "selective": {"schedule": reused.replace("C", "S"), "kind": "S", "selective": True},
        "forecast reused (order 1)": {"schedule": reused, "kind": "C", "forecast": 1},
        "forecast reused (order 2)": {"schedule": reused, "kind": "C", "forecast": 2},
    }
    if "stack" in reuse:
        out["reused (stack)"] = {"schedule": reused, "kind": "C", "reuse": "stack"}
        out["forecast reused (stack, order 1)"] = {"schedule": reused, "kind": "C", "forecast": 1, "reuse": "stack"}
    if "step" in reuse:
        out["full (step)"] = {"schedule": "F" * STEPS, "kind": "F", "reuse": "step"}
        out["reused (step)"] = {"schedule": reused, "kind": "C", "reuse": "step"}
        out["forecast reused (step, order 1)"] = {"schedule": reused, "kind": "C", "forecast": 1, "reuse": "step"}
    return out


def measure(family: str, repeats: int, log: Callable[[str], Any] = print) -> dict:
    """Per-kind medians (seconds) and FLOPs shares of one digits model."""
    wl = Workload(family)
    specs = variants(reuse_modes())
    models = {name: ((wl.floor() if s.get("floor") else wl.mp) if s["schedule"] is None else
                     wl.patched(s["schedule"], s.get("selective", False), s.get("forecast", 0), s.get("reuse", "blocks")))
              for name, s in specs.items()}
    base = wl.mp.model
    per: dict[str, list[tuple[float, float, float]]] = {n: [] for n in specs}
    flops: dict[str, list[int]] = {}

    def one(name: str, clock: EvalClock) -> None:
        before = len(clock.calls)
        wl.sample(models[name])
        calls = clock.calls[before:]
        plan = specs[name]["schedule"] or "F" * STEPS
        if len(calls) != len(plan):
            raise RuntimeError(f"{name}: {len(calls)} model calls for {len(plan)} steps (expected one per step)")
        per[name].extend(c for c, a in zip(calls, plan) if a == specs[name]["kind"])

    with EvalClock(base) as clock:
        for name in specs:   # warm-up (allocator, first-call paths) and the FLOPs count
            one(name, clock)
            clock.flops = []
            wl.sample(models[name])
            plan = specs[name]["schedule"] or "F" * STEPS
            flops[name] = [f for f, a in zip(clock.flops, plan) if a == specs[name]["kind"]]
            clock.flops = None
        for name in specs:
            per[name].clear()
        order = list(specs)
        for r in range(repeats):
            for name in order:
                one(name, clock)
            order = order[1:] + order[:1]
            log(f"  [{family}] round {r + 1}/{repeats}")
    med = {n: tuple(statistics.median(c[i] for c in per[n]) for i in range(3)) for n in specs}
    ref = med["full (host)"]
    ref_flops = statistics.median(flops["full (host)"])
    rows = {}
    for n in specs:
        f = statistics.median(flops[n]) / ref_flops
        rows[n] = {"wall_s": med[n][0], "process_s": med[n][1], "thread_s": med[n][2],
                   "wall": med[n][0] / ref[0], "process": med[n][1] / ref[1], "thread": med[n][2] / ref[2],
                   "flops": f, "samples": len(per[n])}
    return {"family": family, "rows": rows, "full_ms": 1000 * ref[2], "full_flops": ref_flops,
            "schedules": {n: s["schedule"] for n, s in specs.items()}}


def quality(family: str, repeat: int, log: Callable[[str], Any] = print) -> dict:
    """PSNR / FD-full against full compute of the same seed for each reuse mode (copy and forecast)."""
    from . import host_digits as hd
    from .data import features, load_digits_images, load_or_train_featnet

    wl = Workload(family, repeat=repeat, seed=1000)
    featnet, _ = load_or_train_featnet(log=lambda m: None)
    real, _ = load_digits_images(32)
    f_real = features(featnet, real).numpy()
    x_full = wl.images(wl.sample(wl.mp))
    f_full = features(featnet, x_full).numpy()
    out: dict[str, Any] = {"samples": len(wl.labels), "rows": {}}
    for reuse in reuse_modes():
        for fc in (0, 1):
            x = wl.images(wl.sample(wl.patched(PATTERN, forecast=fc, reuse=reuse)))
            m = hd.sample_metrics(featnet, wl.labels, x, x_full, f_full, f_real)
            out["rows"][f"{reuse}, forecast {fc}"] = m
            log(f"  [{family}] quality {reuse} forecast {fc}: PSNR {m['psnr']:.2f} dB, FD-full {m['fd_full']:.3f}")
    return out


def report(results: list[dict], qual: dict, info: dict, seconds: float, threads: int, repeats: int) -> str:
    lines = ["# Per-step cost (digits models, in-host, CPU)", "",
             f"Made at commit `{info['commit']}` on {info['date_utc']} by `python -m benchmarks.step_cost` "
             f"({seconds:.0f} s, {threads} torch thread{'s' if threads != 1 else ''}, {repeats} interleaved rounds; "
             f"ComfyUI 0.3.75 in process, euler / normal, {STEPS} steps, CFG 3, 10 digits).", "",
             "Each row is the median cost of one model evaluation of that kind (the host's `apply_model`, "
             "ProCache's wrapper inside) as a share of the unpatched model's full step, by wall clock, process "
             "CPU time and the calling thread's CPU time (with one torch thread: the evaluation's own work). "
             "`FLOPs` is the arithmetic the evaluation does (torch.utils.flop_counter) over the full step's: "
             "the ideal if time followed FLOPs; `overhead` = thread-CPU share - FLOPs share. Reused steps use "
             f"the schedule `{PATTERN}`; selective steps the same with S.", ""]
    for res in results:
        lines += [f"## {res['family']}", "",
                  f"Full step (host): {res['full_ms']:.2f} ms thread CPU, {res['full_flops'] / 1e6:.2f} MFLOP.", "",
                  "| evaluation | wall | process CPU | thread CPU | FLOPs (ideal) | overhead | evals |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in res["rows"].items():
            lines.append(f"| {name} | {100 * r['wall']:.1f}% | {100 * r['process']:.1f}% | {100 * r['thread']:.1f}% "
                         f"| {100 * r['flops']:.1f}% | {100 * (r['thread'] - r['flops']):+.1f} pt | {r['samples']} |")
        lines.append("")
        rows = res["rows"]
        floor = rows.get("no blocks (host, floor)")
        if floor is not None:
            block_level = [(r["thread"], n) for n, r in rows.items() if n.startswith("reused") and "step" not in n]
            best = min(block_level)
            lines += [f"Cheapest block-level reused step: {best[1]}, {100 * best[0]:.1f}% of a full step (thread CPU), "
                      f"{100 * (best[0] - floor['thread']):+.1f} pt over the host's own work without blocks "
                      f"({100 * floor['thread']:.1f}%: embedders, positional embedding, final layer, model call), "
                      "which no block-level cache can skip."]
            step = rows.get("reused (step)")
            if step is not None:
                lines[-1] += (f" Step reuse skips that too: {100 * step['thread']:.1f}% of a full step (what is left "
                              "is the host's model call and ProCache's bookkeeping).")
            lines.append("")
        q = qual.get(res["family"])
        if q:
            lines += [f"Quality of the reuse modes (schedule `{PATTERN}`, seed 1000, {q['samples']} samples, decoded, "
                      "against full compute of the same seed):", "",
                      "| reuse, forecast | PSNR dB | SSIM | FD-full | FD-real | acc |", "|---|---|---|---|---|---|"]
            for name, m in q["rows"].items():
                lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['fd_full']:.3f} | {m['fd_real']:.3f} "
                             f"| {m['label_acc']:.2f} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--families", default="flux,pixart")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (20 evaluations each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quality-repeat", type=int, default=3, help="samples per digit for the quality table (0: none)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the raw JSON, measure nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        import json

        raw = json.loads(RAW.read_text())
        m = raw["machine"]
        text = report(raw["results"], raw["quality"], m, m["seconds"], m["threads"], m["repeats"])
        args.out.write_text(text + "\n")
        print(text)
        return
    torch.set_num_threads(args.threads)
    t0 = time.time()
    info = {**machine_info("cpu"), "commit": commit()}
    results, qual = [], {}
    for fam in [f.strip() for f in args.families.split(",") if f.strip()]:
        print(f"[step-cost] {fam}: timing", flush=True)
        results.append(measure(fam, args.repeats))
        if args.quality_repeat > 0:
            qual[fam] = quality(fam, args.quality_repeat)
    info.update(seconds=time.time() - t0, threads=args.threads, repeats=args.repeats)
    text = report(results, qual, info, info["seconds"], args.threads, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    if args.out == OUT:
        write_json(RAW, {"machine": info, "results": results, "quality": qual})
    print(text)


if __name__ == "__main__":
    main()
