"""Every committed results table and the command that makes it, run in one go (``make bench-quick``).

    python -m benchmarks.regenerate                 # every CPU generator below, in order (hours on 2 cores)
    python -m benchmarks.regenerate --list          # what each one writes and roughly how long it takes
    python -m benchmarks.regenerate --only forecast,drift_guard
    python -m benchmarks.regenerate --skip deep,selective

Issue #28 asks that no committed number be older than the code it describes. Each generator stamps what
it writes with the commit and date it ran at (``make results-age`` reads those stamps back); this module
holds the one list of generators, so a results file without one is caught by
tests/core/test_regenerate.py. ``make bench-peers`` (it needs the peer checkouts) is the one table this
command leaves out; ``templates.md`` comes from the test suite's template runs (see ``MADE_ELSEWHERE``).
After the generators, the results README is rebuilt from the raw files (``benchmarks.run --report-only``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Generator:
    name: str
    argv: tuple[str, ...]              # after ``python -m``
    writes: tuple[str, ...]            # paths under benchmarks/results/ (README.md: the sections it feeds)
    minutes: int                       # on an idle 2-core CPU, roughly
    parallel_with: tuple[tuple[str, ...], ...] = field(default=())  # more argvs run beside ``argv``


GENERATORS: tuple[Generator, ...] = (
    Generator("quick", ("benchmarks.run", "--quick", "--device", "cpu"),
              ("README.md", "raw/quality_quick.json", "raw/host_quality_quick.json", "raw/speed_quick_cpu.json",
               "quality_vs_speedup.png", "samples.png", "speed_cpu.png"), 30),
    Generator("deep", ("benchmarks.run", "--deep", "--deep-cases", "dit", "--device", "cpu", "--threads", "1"),
              ("raw/speed_deep_cpu_dit.json", "raw/speed_deep_cpu_pixart.json", "speed_deep_cpu.png"), 40,
              parallel_with=(("benchmarks.run", "--deep", "--deep-cases", "pixart", "--device", "cpu",
                              "--threads", "1"),)),
    Generator("selective", ("benchmarks.selective",), ("raw/selective_quick.json",), 25),
    Generator("selective_all_blocks",
              ("benchmarks.selective", "--budgets", "13,17", "--out",
               str(RESULTS / "raw" / "selective_quick_allblocks.json"), "--only",
               "off (S run as C);constant 0.3, all blocks;constant 0.3, all blocks, staleness only"),
              ("raw/selective_quick_allblocks.json",), 17),
    Generator("selective_why", ("benchmarks.selective_why",), ("raw/selective_why_B10.json",), 3),
    Generator("noise_axis", ("benchmarks.noise_axis",), ("raw/noise_axis.json",), 9),
    Generator("search_space", ("benchmarks.search_space",), ("search_space_cpu.md", "raw/search_space.json"), 10),
    Generator("search_host", ("benchmarks.search_host",), ("search_host_cpu.md", "raw/search_host.json"), 10),
    Generator("forecast", ("benchmarks.forecast",), ("forecast_cpu.md", "raw/forecast_cpu.json"), 2),
    Generator("token_picks", ("benchmarks.token_picks",), ("token_picks_cpu.md", "raw/token_picks_cpu.json"), 2),
    Generator("drift_guard", ("benchmarks.drift_guard",), ("drift_guard_cpu.md", "raw/drift_guard_cpu.json"), 2),
    Generator("step_cost", ("benchmarks.step_cost",), ("step_cost_cpu.md", "raw/step_cost_cpu.json"), 5),
    Generator("few_step", ("benchmarks.few_step",), ("few_step_cpu.md", "raw/few_step_cpu.json"), 5),
    Generator("memory", ("benchmarks.memory", "--speed"), ("memory.md", "raw/memory.json"), 5),
    Generator("compile", ("benchmarks.compile", "--width", "256"), ("compile_cpu.md",), 4),
    Generator("compile_512", ("benchmarks.compile", "--width", "512"), ("compile_cpu.md",), 6),
    Generator("faults", ("benchmarks.faults",), ("faults_cpu.md", "raw/faults_cpu.json", "sections/faults.md"), 8),
    Generator("load", ("benchmarks.load",), ("load_cpu.md", "raw/load_cpu.json", "sections/load.md"), 15),
)

# results files no generator above writes, and where they come from instead
MADE_ELSEWHERE: dict[str, str] = {
    "peers_cpu.md": "make bench-peers PEERS=<folder of peer checkouts> (benchmarks/peers.py)",
    "peers_cpu.png": "make bench-peers (benchmarks/peers.py)",
    "raw/peers_cpu.json": "make bench-peers (benchmarks/peers.py)",
    "templates.md": "the template runs of make test (tests/web/test_accelerate_command.py, "
                    "tests/host/test_accelerate_script.py), written up by hand with the commit they ran at",
    "notes/load.md": "hand-written history of the load bench (its runs are in raw/load_cpu_*.json)",
    "raw/load_cpu_before_fix.json": "an earlier run of benchmarks/load.py kept for the history in notes/load.md",
    "raw/load_cpu_run2.json": "an earlier run of benchmarks/load.py kept for the history in notes/load.md",
    "raw/load_cpu_run3_gc.json": "an earlier run of benchmarks/load.py kept for the history in notes/load.md",
    "raw/load_cpu_run4_3pairs.json": "an earlier run of benchmarks/load.py kept for the history in notes/load.md",
    "notes/noise_axis.md": "hand-written reading of an earlier noise-axis run (raw/noise_axis_n100.json)",
    "raw/noise_axis_n100.json": "an earlier run of benchmarks/noise_axis.py kept for the reading in notes/noise_axis.md",
}

REPORT = ("benchmarks.run", "--report-only", "--quick", "--device", "cpu")


def pick(only: str, skip: str) -> list[Generator]:
    """The generators to run, in list order; a clear error for a name that is not one of them."""
    names = {g.name for g in GENERATORS}
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    dropped = [n.strip() for n in skip.split(",") if n.strip()]
    unknown = [n for n in wanted + dropped if n not in names]
    if unknown:
        raise SystemExit(f"--only/--skip: unknown generator(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(sorted(names))} (python -m benchmarks.regenerate --list)")
    return [g for g in GENERATORS if (not wanted or g.name in wanted) and g.name not in dropped]


def listing() -> str:
    rows = [f"{g.name:<22} ~{g.minutes:>3} min  python -m {' '.join(g.argv[:4])}{' ...' if len(g.argv) > 4 else ''}"
            f"  -> {', '.join(g.writes)}" for g in GENERATORS]
    rows += [f"{'(not run here)':<22}          {path}: {how}" for path, how in MADE_ELSEWHERE.items()]
    return "\n".join(rows)


def run_generator(g: Generator, python: str, nice: int) -> int:
    """Run one generator (and its parallel partners) from the checkout's root; the highest return code."""
    cmds = [[*(["nice", "-n", str(nice)] if nice else []), python, "-m", *argv] for argv in (g.argv, *g.parallel_with)]
    procs = [subprocess.Popen(c, cwd=ROOT) for c in cmds]
    return max(p.wait() for p in procs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma list of generator names (default: all)")
    ap.add_argument("--skip", default="", help="comma list of generator names to leave out")
    ap.add_argument("--list", action="store_true", help="print the generators and exit")
    ap.add_argument("--nice", type=int, default=10)
    a = ap.parse_args(argv)
    if a.list:
        print(listing())
        return 0
    todo = pick(a.only, a.skip)
    failed: list[str] = []
    t0 = time.time()
    for g in todo:
        s = time.time()
        print(f"[regenerate] {g.name}: python -m {' '.join(g.argv)} (about {g.minutes} min)", flush=True)
        rc = run_generator(g, sys.executable, a.nice)
        print(f"[regenerate] {g.name}: rc={rc} in {time.time() - s:.0f} s", flush=True)
        if rc:
            failed.append(g.name)
    rc = subprocess.call([sys.executable, "-m", *REPORT], cwd=ROOT)
    print(f"[regenerate] README rebuilt from the raw files (rc={rc}); {len(todo)} generator(s) in "
          f"{time.time() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    subprocess.call([sys.executable, str(ROOT / "scripts" / "results_age.py")], cwd=ROOT)
    return 1 if failed or rc else 0


if __name__ == "__main__":
    raise SystemExit(main())
