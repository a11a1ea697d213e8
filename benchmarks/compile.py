"""ProCache with the host's TorchCompileModel: wall time of five set-ups on one host Flux, in one process.

    python -m benchmarks.compile [--width 256] [--latent 64] [--steps 8] [--repeats 3]

The model is the host's ``comfy.ldm.flux.model.Flux`` (random weights, 2 double + 4 single blocks),
driven through ProCache's Flux adapter the way the runtime bridge drives it (tests/host/_families.py:
``CacheRun.begin_step`` / ``set_stream`` per step, the run on the active stack). Set-ups:

(a) eager, no cache; (b) ``torch.compile(dm)`` (what TorchCompileModel does), no cache;
(c) ProCache, eager; (d) compile + ProCache with its blocks eager (``block_compile=None``: the state
before branch compilation); (e) compile + ProCache with the branch maths compiled with the host's
settings (``adapters/compiled.py``).

Compiled set-ups run once untimed first (compilation). The timed runs are interleaved (order rotated
per repeat) and the median is reported as a ratio against (a) of the same process. Writes
``benchmarks/results/compile_cpu.md``. Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "host"))

from .common import raw_stamp, run_stamp  # noqa: E402


def build(width: int, seed: int = 0):
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    heads = max(1, width // 64)
    hd = width // heads
    axes = [hd - 2 * (3 * hd // 8 // 2 * 2), 3 * hd // 8 // 2 * 2, 3 * hd // 8 // 2 * 2]
    dm = Flux(in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=128, hidden_size=width, mlp_ratio=4.0,
              num_heads=heads, depth=2, depth_single_blocks=4, axes_dim=axes, theta=10000, patch_size=2,
              qkv_bias=True, guidance_embed=False, operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(dm.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5 if p.ndim >= 2 else 10))
    return dm.eval()


TITLE = "# ProCache with TorchCompileModel (CPU)"


def with_section(text: str, width: int, section: str) -> str:
    """The results file with the ``## Hidden <width>`` section replaced (or added, sections kept in width
    order); every other section (other widths, the hand-written ``## Reading``) is kept as it is."""
    parts = re.split(r"(?m)^(?=## )", text)
    kept = [p.strip() for p in parts if p.startswith("## ")]
    hidden = {int(m.group(1)): p for p in kept if (m := re.match(r"## Hidden (\d+)", p))}
    hidden[width] = section.strip()
    others = [p for p in kept if not re.match(r"## Hidden \d+", p)]
    return "\n\n".join([TITLE, *(hidden[w] for w in sorted(hidden)), *others]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_cpu.md"))
    args = ap.parse_args()
    stamp = run_stamp()  # the code the run starts with

    from _families import patched_run  # loads the host and the pack in process

    from torch._dynamo.utils import counters

    dm = build(args.width)
    cdm = torch.compile(dm, backend="inductor")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, args.latent, args.latent, generator=g)
    ctx, y = torch.randn(1, 32, 128, generator=g), torch.randn(1, 64, generator=g)
    t = torch.tensor([0.5])
    kw = {"backend": "inductor", "options": None, "mode": None, "fullgraph": False, "dynamic": None}
    schedule = ("FCCS" * args.steps)[: args.steps]

    def plain(model):
        def go():
            with torch.no_grad():
                for _ in range(args.steps):
                    model(x, t, ctx, y=y, transformer_options={})
        return go

    def cached(model, block_kw):
        def go():
            patched_run("flux", dm, schedule, lambda _f, _dm, to: model(x, t, ctx, y=y, transformer_options=to),
                        ratio=0.5, block_compile=block_kw)
        return go

    setups = {"a: eager, no cache": plain(dm), "b: compile only": plain(cdm), "c: ProCache only": cached(dm, None),
              "d: compile + ProCache, blocks eager": cached(cdm, None),
              "e: compile + ProCache, branch maths compiled": cached(cdm, kw)}
    warm: dict[str, float] = {}
    graphs: dict[str, int] = {}
    for name, go in setups.items():
        before = counters["stats"]["unique_graphs"]
        s = time.perf_counter()
        go()
        warm[name] = time.perf_counter() - s
        graphs[name] = counters["stats"]["unique_graphs"] - before
    times: dict[str, list[float]] = {k: [] for k in setups}
    names = list(setups)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            s = time.perf_counter()
            setups[name]()
            times[name].append(time.perf_counter() - s)
    after = counters["stats"]["unique_graphs"]
    base = statistics.median(times[names[0]])
    lines = [
        f"## Hidden {args.width}",
        "",
        f"{raw_stamp(stamp, 'python -m benchmarks.compile')} "
        f"`python -m benchmarks.compile --width {args.width} --latent {args.latent} --steps {args.steps} "
        f"--repeats {args.repeats}` — host Flux (hidden {args.width}, 2 double + 4 single blocks, "
        f"{(args.latent // 2) ** 2} image + 32 text tokens, batch 1, random weights), schedule `{schedule}`, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, a shared 2-core machine.",
        "",
        "Median of the interleaved timed runs; speed-up = time of (a) / time of the set-up, same process.",
        "First run = the untimed warm-up (includes compilation); new graphs = dynamo graphs that run added.",
        "",
        "| set-up | median s | speed-up vs (a) | first run s | new graphs |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        m = statistics.median(times[name])
        lines.append(f"| {name} | {m:.3f} | {base / m:.2f}x | {warm[name]:.1f} | {graphs[name]} |")
    lines += ["", f"Graphs after the warm-ups: {sum(graphs.values())}; after the timed runs: {after} "
              "(equal: nothing recompiled while timing)."]
    out = Path(args.out)
    out.write_text(with_section(out.read_text() if out.is_file() else "", args.width, "\n".join(lines)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
