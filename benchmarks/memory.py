"""Cache memory per mode from shapes, and the speed cost of keeping the cache in CPU memory.

``python -m benchmarks.memory`` (sizes only, seconds) or ``python -m benchmarks.memory --speed``
(adds the CPU-cache timing on the reference DiT, a few minutes on a CPU). Writes
``benchmarks/results/memory.md`` and ``raw/memory.json``.

Sizes: ``procache_core.memory.estimate_bytes`` over the published block layouts (no weights), the
same function ProCache uses before the first step; ``tests/core/test_memory.py`` checks it equals what
the engine holds. Flux.1-dev: 19 double + 38 single blocks, hidden 3072, 1024x1024 px -> 64x64
patches = 4096 image tokens + 512 T5 tokens, guidance-distilled (cfg 1: one stream). Wan 2.1 14B:
40 blocks, dim 5120; 480x832 px x 81 frames -> latent 21x60x104, patch (1, 2, 2) -> 21x30x52 = 32760
tokens, CFG batched (two rows). Wan 2.1 1.3B: 30 blocks, dim 1536, same tokens. PixArt-α/Σ: 28 blocks,
hidden 1152, 3 branches, 4096 tokens at 1024 px. SD3.5 Large: 38 joint blocks, hidden 2432, 4096 image +
333 text tokens (the last block's text half, which never runs, is counted). Qwen-Image: 60 joint blocks,
inner dim 3072 (24 x 128); 1328x1328 px -> latent 166x166, patch 2 -> 83x83 = 6889 image tokens + 256 text
tokens (assumed prompt length), true CFG (two rows). Flux.2 [dev]: 8 double + 48 single blocks, hidden 6144
(48 x 128); 1024x1024 px -> 64x64 = 4096 image tokens (patch 1 on the 16x latent) + 512 text tokens,
guidance-distilled (one row). HunyuanVideo 1.0: 20 double + 40 single blocks, hidden 3072; 720x1280 px x 129
frames -> latent 33x90x160, patch (1, 2, 2) -> 33x45x80 = 118800 tokens + 256 text tokens, embedded guidance
(one row); its single blocks keep no attention half. Z-Image Turbo: 30 blocks, dim 3840, 2 branches; 1024 px
-> 4096 image tokens + 128 caption tokens (both padded to 32), distilled (one row). Activations bf16.
Modes: full cache; ``+sel`` keeps the deep blocks' scoring state when the schedule has selective
steps (input reference + int32 refresh steps); light cache (deep blocks + one residual per lane);
``device, cpu cache``: what the device holds with the CPU cache (two block entries in flight).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from procache_core.memory import double_single_layout, estimate_bytes, single_stream_layout
from procache_core.settings import SelectiveSettings

from .common import RESULTS, machine_info, md_table, write_json

GIB = 2 ** 30

CASES = {
    "PixArt-α/Σ 1024x1024 (CFG)": dict(layout=single_stream_layout(28, 4096, 1152, 3), rows=2),
    "SD3.5 Large 1024x1024 (CFG)": dict(layout=double_single_layout(38, 0, 4096, 333, 2432), rows=2),
    "Flux.1-dev 1024x1024 (cfg 1)": dict(layout=double_single_layout(19, 38, 4096, 512, 3072), rows=1),
    "Wan 2.1 14B 480p x 81 frames (CFG)": dict(layout=single_stream_layout(40, 32760, 5120, 3), rows=2),
    "Wan 2.1 1.3B 480p x 81 frames (CFG)": dict(layout=single_stream_layout(30, 32760, 1536, 3), rows=2),
    "Qwen-Image 1328x1328 (CFG)": dict(layout=double_single_layout(60, 0, 6889, 256, 3072), rows=2),
    "Flux.2 [dev] 1024x1024 (cfg 1)": dict(layout=double_single_layout(8, 48, 4096, 512, 6144), rows=1),
    "HunyuanVideo 720p x 129 frames (cfg 1)": dict(
        layout=double_single_layout(20, 40, 118800, 256, 3072, single_aux=False), rows=1),
    "Z-Image Turbo 1024x1024 (cfg 1)": dict(layout=single_stream_layout(30, 4096 + 128, 3840, 2), rows=1),
}


def sizes(elem_bytes: int = 2) -> list[dict]:
    out = []
    for name, c in CASES.items():
        layout, rows = c["layout"], c["rows"]
        first = SelectiveSettings().first_selective_block(len(layout))
        kw = dict(rows=rows, elem_bytes=elem_bytes, first_selective_block=first)
        full = estimate_bytes(layout, light=False, track_tokens=False, **kw)
        full_sel = estimate_bytes(layout, light=False, **kw)
        light_sel = estimate_bytes(layout, light=True, **kw)
        block = max(rows * b.tokens * b.width * b.branches for b in layout) * elem_bytes
        out.append({"case": name, "blocks": len(layout), "rows": rows, "first_selective_block": first,
                    "full_mib": full / 2 ** 20, "full_sel_mib": full_sel / 2 ** 20,
                    "light_sel_mib": light_sel / 2 ** 20, "cpu_cache_device_mib": 2 * block / 2 ** 20})
    return out


def cpu_cache_speed(depth: int = 28, latent: int = 32, steps: int = 20, repeats: int = 3, device: str = "cpu",
                    log=print) -> dict:
    """Wall time of the same ProCache run with the cache on the device vs in CPU memory (interleaved)."""
    from procache_core.engine import CacheRun
    from procache_core.memory import CacheMemory
    from procache_core.reference_dit import DiT_XL_2, ddim_sample

    from .common import interleaved, median
    from .speed import DIT_PRESET, paper_schedule

    torch.manual_seed(0)
    model = DiT_XL_2(depth=depth, input_size=latent, in_channels=4, zero_init=False).to(device).eval()
    sched = paper_schedule(DIT_PRESET, steps)
    noise = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.tensor([1], device=device)
    modes = {"device cache": CacheMemory("device"), "cpu cache": CacheMemory("cpu"),
             "light cache": CacheMemory("device", light=True)}
    outs, peaks = {}, {}

    def run(name: str):
        r = CacheRun(sched, SelectiveSettings(), num_blocks=depth, memory=modes[name])
        outs[name] = ddim_sample(model, noise, labels, steps=steps, cfg_scale=1.5, cache_run=r)
        r.close()
        peaks[name] = r.stats.peak_cache_bytes_by_device

    log(f"  DiT-XL/2 depth {depth}, {(latent // 2) ** 2} tokens, CFG, T={steps} ({sched.to_string()}): warm-up")
    run("device cache")
    times, cpu = interleaved(list(modes), run, repeats, device, log=log)
    base = median(times["device cache"])
    return {"depth": depth, "tokens": (latent // 2) ** 2, "steps": steps, "schedule": sched.to_string(),
            "device": device, "repeats": repeats,
            "wall_s": {m: median(t) for m, t in times.items()}, "cpu_s": {m: median(t) for m, t in cpu.items()},
            "cpu_runs": cpu, "wall_runs": times,
            "ratio_vs_device_cache": {m: median(t) / base for m, t in times.items()},
            "cpu_ratio_vs_device_cache": {m: median(cpu[m]) / median(cpu["device cache"]) for m in cpu},
            "bitwise_equal_cpu_vs_device": bool(torch.equal(outs["cpu cache"], outs["device cache"])),
            "peak_cache_mib_by_device": {m: {d: n / 2 ** 20 for d, n in p.items()} for m, p in peaks.items()}}


def report(rows: list[dict], speed: dict | None, info: dict) -> str:
    measured = (speed or {}).get("measured") or {}
    kept = speed is not None and measured.get("date_utc") != info.get("date_utc")
    head = "Generated by `python -m benchmarks.memory" + ("`" if kept or not speed else " --speed`") + \
        f" ({info.get('date_utc')}, commit {info.get('git_commit')})"
    if kept:
        head += (f"; the speed section is from the last `--speed` run ({measured.get('date_utc', 'date unknown')}, "
                 f"commit {measured.get('git_commit', 'unknown')})")
    lines = ["# Cache memory", "", head + ".", "",
             "## Cache size from shapes (bf16, default selective settings: deepest 25% of the blocks)", "",
             md_table(["case", "engine blocks", "rows", "full cache MiB", "full + selective state MiB",
                       "light (+ selective state) MiB", "on device with the CPU cache MiB"],
                      [[r["case"], r["blocks"], r["rows"], r["full_mib"], r["full_sel_mib"], r["light_sel_mib"],
                        r["cpu_cache_device_mib"]] for r in rows]), ""]
    if speed:
        lines += [f"## Speed cost of the CPU cache (reference DiT-XL/2, {speed['depth']} blocks, {speed['tokens']} "
                  f"tokens, CFG, T={speed['steps']}, {speed['device']}, median of {speed['repeats']} interleaved runs)",
                  "", md_table(["cache", "wall s", "wall / device cache", "process CPU s", "CPU / device cache",
                                "peak cache MiB by device"],
                               [[m, speed["wall_s"][m], speed["ratio_vs_device_cache"][m], speed["cpu_s"][m],
                                 speed["cpu_ratio_vs_device_cache"][m],
                                 ", ".join(f"{d} {v:.0f}" for d, v in speed["peak_cache_mib_by_device"][m].items())]
                                for m in speed["wall_s"]]), "",
                  f"CPU cache output bitwise equal to the device cache: {speed['bitwise_equal_cpu_vs_device']}. "
                  "Per-run process CPU times (one torch thread): "
                  + "; ".join(f"{m} {', '.join(f'{v:.1f}' for v in vs)}" for m, vs in speed.get("cpu_runs", {}).items())
                  + ". On this shared 2-core machine the wall clock mostly measures waiting for a core; the "
                  "process CPU time is the steadier figure, and its run-to-run spread is about as large as the "
                  "differences between the rows.",
                  "On a machine without a GPU the model's device is CPU memory too, so the CPU cache measures "
                  "the cost of the extra copies (store, load, write-back) that the transfer path adds; on CUDA "
                  "the loads run on a side stream one block ahead. Light cache: shallow blocks skipped on "
                  "reused steps (less work as well as less memory; different output, see docs/runtime.md).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", action="store_true", help="also time the CPU cache on the reference DiT")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--depth", type=int, default=28)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latent", type=int, default=16, help="latent side (16: 64 tokens, 32: 256 tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    rows = sizes()
    raw = a.out / "raw" / "memory.json"
    info = machine_info(a.device)
    if a.speed:
        speed = cpu_cache_speed(depth=a.depth, latent=a.latent, steps=a.steps, repeats=a.repeats, device=a.device)
        speed["measured"] = {k: info.get(k) for k in ("date_utc", "git_commit")}
    else:  # sizes only: keep the last measured timing, with when and at which commit it was measured
        old = json.loads(raw.read_text()) if raw.exists() else {}
        speed = old.get("cpu_cache_speed")
        if speed is not None and "measured" not in speed:
            speed["measured"] = {k: (old.get("machine") or {}).get(k) for k in ("date_utc", "git_commit")}
    info["bench_seconds"] = round(time.time() - t0, 1)
    write_json(raw, {"machine": info, "sizes": rows, "cpu_cache_speed": speed})
    text = report(rows, speed, info)
    (a.out / "memory.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
