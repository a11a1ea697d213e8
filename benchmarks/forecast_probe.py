"""Where the forecast's error comes from (a diagnostic for benchmarks/forecast.py, in this process).

For one digits model and sampler case (the bench's cases, host's ``comfy.sample.sample``, the pack's real
ProCache Apply) it measures two things:

* ``trajectory``: the sampler's latent after every step of a run with a schedule and forecast order,
  against full compute's latent at the same step (RMS), so one sees at which steps the error enters;
* ``oracle``: every block's branch outputs of a FULL run (all steps computed) are recorded with each
  evaluation's sigma and axis value; each reused evaluation of a schedule is then forecast offline from
  the recorded outputs of its computed evaluations (teacher forcing: the inputs are full compute's), so
  the forecast's own error is seen apart from its compounding. Reported per evaluation as the error
  over the copy's error (sum over blocks and branches of ||forecast - true||^2 / ||copy - true||^2), for
  several noise coordinates and gain rules.

    python -m benchmarks.forecast_probe --family flux --case dpmpp_2m/karras --schedule FCCCCFCCCCFCCCCFCCCC
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable

import torch

from .host_quality import CASES, _init_images
from .step_cost import Workload


class Probe(Workload):
    def __init__(self, family: str, case: dict, repeat: int = 1, seed: int = 1000) -> None:
        super().__init__(family, repeat, seed)
        self.case = case
        if case["denoise"] < 1.0:
            import comfy.sample

            img = _init_images(repeat)[0]
            self.latent = self.dg.encode(img, family)
            self.noise = comfy.sample.prepare_noise(self.latent, seed)

    def run(self, model, steps: int = 20) -> list[torch.Tensor]:
        """The latent after every step (and the final samples last)."""
        import comfy.sample

        seen: list[torch.Tensor] = []
        c = self.case
        out = comfy.sample.sample(model, self.noise, steps, 3.0, c["sampler"], c["scheduler"], self.pos, self.neg,
                                  self.latent, denoise=c["denoise"], seed=self.seed, disable_pbar=True,
                                  callback=lambda i, x0, x, n: seen.append(x.detach().clone()))
        return seen + [out]


def record_full(probe: Probe, steps: int = 20) -> list[dict]:
    """Every evaluation of a FULL run: step, sigma, axis value and each (stream, block, branch) output."""
    from procache_pack.nodes import noise_axis
    from procache_pack.procache_core import engine

    evals: list[dict] = []
    sig: list[float] = []
    orig_axis, orig_begin = noise_axis.ForecastAxis.__call__, engine.CacheRun.begin_step
    orig_full = engine.CacheRun._full

    def axis_call(self, s):
        sig.append(float(s))
        return orig_axis(self, s)

    def begin(self, step, noise=None):
        evals.append({"step": int(step), "t": noise, "sigma": sig[-1] if sig else None, "out": {}})
        return orig_begin(self, step, noise)

    def full(self, block, x, branches, signature):
        y = orig_full(self, block, x, branches, signature)
        entry = self.cache.stream(self._stream_key).blocks[block]
        for name, t in entry.outputs.items():
            evals[-1]["out"][(self._stream_key, block, name)] = t.detach().double().clone()
        return y

    noise_axis.ForecastAxis.__call__, engine.CacheRun.begin_step, engine.CacheRun._full = axis_call, begin, full
    try:
        probe.run(probe.patched("F" * steps, forecast=1), steps)
    finally:
        noise_axis.ForecastAxis.__call__, engine.CacheRun.begin_step, engine.CacheRun._full = \
            orig_axis, orig_begin, orig_full
    return evals


def _newton(points: list[tuple[float, torch.Tensor]], t: float, order: int) -> torch.Tensor:
    """Interpolating polynomial through the last ``order + 1`` points (oldest first), evaluated at ``t``."""
    pts = points[-(order + 1):]
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    # divided differences, newest node first
    xs, ys = xs[::-1], ys[::-1]
    coef = list(ys)
    n = len(xs)
    for k in range(1, n):
        for i in range(n - 1, k - 1, -1):
            coef[i] = (coef[i] - coef[i - 1]) / (xs[i] - xs[i - k]) if xs[i] != xs[i - k] else coef[i] * 0
    out, prod = coef[0].clone(), 1.0
    for k in range(1, n):
        prod *= t - xs[k - 1]
        out = out + coef[k] * prod
    return out


COORDS: dict[str, Callable[[dict], float]] = {
    "axis (timestep scaled)": lambda e: e["t"],
    "sigma": lambda e: e["sigma"],
    "log sigma": lambda e: math.log(max(e["sigma"], 1e-6)),
    "step index": lambda e: float(e["index"]),
}


def oracle(evals: list[dict], schedule: str, coord: str, order: int, gain: float | str = 1.0) -> list[dict]:
    """Per reused evaluation: forecast error / copy error (teacher-forced), and the steps it spans.

    ``gain``: a number (share of the extrapolation used), or ``"fit"`` (least-squares scale of the last
    check, clamped to [0, 1], 1 before any check)."""
    hist: dict[Any, list[tuple[float, torch.Tensor]]] = {}
    gains: dict[Any, float] = {}
    rows = []
    for i, e in enumerate(evals):
        e["index"] = e["step"]
        x = COORDS[coord](e)
        full = schedule[e["step"]] == "F" if e["step"] < len(schedule) else True
        num = den = 0.0
        for key, y in e["out"].items():
            pts = hist.setdefault(key, [])
            if full:
                if pts and gain == "fit" and len(pts) >= 2:
                    step = _newton(pts, x, order) - pts[-1][1]
                    moved = y - pts[-1][1]
                    ss = float((step * step).sum())
                    gains[key] = min(1.0, max(0.0, float((step * moved).sum()) / ss)) if ss > 0 else 0.0
                if pts and abs(pts[-1][0] - x) < 1e-9:
                    pts[-1] = (x, y)
                else:
                    pts.append((x, y))
                continue
            copy = pts[-1][1]
            if order == 0 or len(pts) < 2:
                pred = copy
            else:
                g = gains.get(key, 1.0) if gain == "fit" else float(gain)
                pred = copy + g * (_newton(pts, x, min(order, len(pts) - 1)) - copy)
            num += float(((pred - y) ** 2).sum())
            den += float(((copy - y) ** 2).sum())
        if not full:
            rows.append({"eval": i, "step": e["step"], "sigma": e["sigma"], "ratio": num / den if den else float("nan"),
                         "copy_err": den})
    return rows


def trajectory(probe: Probe, schedule: str, forecast: int, ref: list[torch.Tensor]) -> list[float]:
    xs = probe.run(probe.patched(schedule, forecast=forecast))
    return [float((a - b).pow(2).mean().sqrt()) for a, b in zip(xs, ref)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="flux")
    ap.add_argument("--case", default="dpmpp_2m/karras")
    ap.add_argument("--schedule", default="FCCCCFCCCCFCCCCFCCCC")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-trajectory", action="store_true")
    args = ap.parse_args(argv)
    case = next(c for c in CASES if c["name"].startswith(args.case))
    probe = Probe(args.family, case, args.repeat, args.seed)
    evals = record_full(probe)
    print(f"{args.family} {case['name']} {args.schedule}: {len(evals)} evaluations")
    print("sigma: " + " ".join(f"{e['sigma']:.3f}" for e in evals))
    print("axis:  " + " ".join(f"{e['t']:.2f}" for e in evals))
    total = {}
    for coord in COORDS:
        for order, gain in ((0, 1.0), (1, 1.0), (1, 0.5), (1, 0.25), (1, "fit"), (2, 1.0), (2, 0.5)):
            if order == 0 and coord != "sigma":
                continue
            rows = oracle(evals, args.schedule, coord, order, gain)
            tot = sum(r["ratio"] * r["copy_err"] for r in rows) / sum(r["copy_err"] for r in rows)
            total[(coord, order, gain)] = tot
            print(f"{coord:<24s} order {order} gain {gain!s:<5s} total {tot:6.3f}  per eval: " +
                  " ".join(f"{r['ratio']:.2f}" for r in rows))
    rows = oracle(evals, args.schedule, "sigma", 0)
    print("copy error per eval (share): " + " ".join(f"{r['copy_err'] / sum(q['copy_err'] for q in rows):.3f}"
                                                     for r in rows))
    if not args.no_trajectory:
        ref = probe.run(probe.patched("F" * 20, forecast=0))
        for fc in (0, 1, 2):
            err = trajectory(probe, args.schedule, fc, ref)
            print(f"trajectory forecast {fc}: " + " ".join(f"{v:.3f}" for v in err))


if __name__ == "__main__":
    main()


def psnr_table(families, cases, schedules, settings, seed: int, repeat: int, log=print) -> dict:
    """Final-image PSNR against full compute for each schedule and forecast setting.

    ``settings``: name -> (order, {constant of procache_core.forecast: value}) (FIRST_GAIN is read by the
    engine at the start of a run, the others by fit_gain)."""
    from . import metrics

    out = {}
    for fam in families:
        for cname in cases:
            case = next(c for c in CASES if c["name"].startswith(cname))
            probe = Probe(fam, case, repeat, seed)
            from procache_pack.procache_core import engine, forecast

            ref = probe.images(probe.run(probe.patched("F" * 20, forecast=0))[-1])
            for sched in schedules:
                for sname, (order, consts) in settings.items():
                    saved = {k: getattr(forecast, k) for k in consts}
                    for k, v in consts.items():
                        setattr(forecast, k, v)
                        if k == "FIRST_GAIN":
                            engine.FIRST_GAIN = v
                    try:
                        x = probe.images(probe.run(probe.patched(sched, forecast=order))[-1])
                    finally:
                        for k, v in saved.items():
                            setattr(forecast, k, v)
                        engine.FIRST_GAIN = forecast.FIRST_GAIN
                    p = float(metrics.psnr(x, ref).clamp(max=100).mean())
                    out[(fam, case["name"], sched, sname)] = p
                    log(f"{fam:6s} {case['name'][:16]:16s} {sched} {sname:28s} PSNR {p:6.2f}")
    return out
