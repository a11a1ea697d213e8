"""Headless schedule search on a saved workflow, through the real ComfyUI host.

    python scripts/calibrate.py WORKFLOW.api.json --budget 8 -k 5 --out my-preset.yaml

The workflow (API format, "Save (API)" in the UI) must contain ProCache Schedule Loader + ProCache
Apply before one KSampler/KSamplerAdvanced. The tool runs the graph once with ProCache bypassed (the
full-compute reference), then once per constrained candidate schedule, scores each sampled latent
against the reference with the proxy metric and writes the best as a preset plus a JSON report.

With `torchrun --nproc-per-node N scripts/calibrate.py ...` each process starts its own host on its
own GPU (CUDA_VISIBLE_DEVICES = LOCAL_RANK) and evaluates every N-th candidate; scores are gathered
on rank 0. Without torchrun (one machine, one process) candidates run in turn.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from comfy_client import ComfyClient, ComfyServer, load_latent  # noqa: E402
from procache_core import proxy, search  # noqa: E402
from procache_core.baselines import uniform_schedule  # noqa: E402
from procache_core.presets import Preset, dump_preset, validate_preset_name  # noqa: E402
from procache_core.schedule import Schedule  # noqa: E402
from workflow_tools import (WorkflowError, ensure_save_latent, only_latent_outputs, sampler_steps,  # noqa: E402
                            set_schedule_text, set_seed, without_procache)


def run_latent(client: ComfyClient, prompt: dict, prefix: str):
    entry = client.run(ensure_save_latent(prompt, prefix), timeout=3600)
    files = client.output_files(entry, "latents")
    if not files:
        raise WorkflowError("the run wrote no latent; does the KSampler output reach SaveLatent?")
    return load_latent(files[-1]).double()


def evaluate(client: ComfyClient, prompt: dict, schedules: list[Schedule], seeds: list[int],
             metric: str, tag: str) -> tuple[list[dict], ...]:
    """Reference latents per seed, then one score per schedule (mean over seeds)."""
    refs = {s: run_latent(client, set_seed(without_procache(prompt), s), f"{tag}_ref_{s}") for s in seeds}
    rows = []
    for i, sched in enumerate(schedules):
        per_seed = []
        for s in seeds:
            p = set_schedule_text(set_seed(copy.deepcopy(prompt), s), sched.to_string())
            lat = run_latent(client, p, f"{tag}_cand{i}_{s}")
            per_seed.append(proxy.METRICS[metric](lat.numpy(), refs[s].numpy()))
        rows.append({"actions": sched.to_string(), "score": float(sum(per_seed) / len(per_seed)),
                     "per_seed": [float(v) for v in per_seed]})
        print(f"[calibrate] {tag} {i + 1}/{len(schedules)} {sched.to_string()} {metric}={rows[-1]['score']:.5f}",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Search the best ProCache schedule for a saved workflow.")
    ap.add_argument("workflow", type=Path, help="API-format workflow JSON with ProCache nodes")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--budget", type=int, help="number of full steps")
    g.add_argument("--speedup", type=float, help="target speed-up (sets the budget)")
    ap.add_argument("--vmin", type=int, default=1)
    ap.add_argument("--vmax", type=int, default=4)
    ap.add_argument("-k", type=int, default=5, help="candidates to evaluate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the candidate sampler")
    ap.add_argument("--image-seeds", type=int, nargs="+", default=[0], help="sampler seeds to average over")
    ap.add_argument("--metric", choices=sorted(proxy.METRICS), default="rel_l2")
    ap.add_argument("--selective", action=argparse.BooleanOptionalAction, default=True,
                    help="inject selective steps into the candidates (paper Eq. 7)")
    ap.add_argument("--name", default=None, help="preset name (default: from the output file name)")
    ap.add_argument("--family", default="any")
    ap.add_argument("--out", type=Path, required=True, help="preset YAML to write")
    ap.add_argument("--report", type=Path, default=None, help="JSON report (default: next to --out)")
    ap.add_argument("--server", default=None, help="URL of a running ComfyUI on this machine (default: start the bundled host)")
    ap.add_argument("--output-dir", type=Path, default=None, help="with --server: that ComfyUI's output folder")
    args = ap.parse_args(argv)

    name = args.name or args.out.stem
    validate_preset_name(name)
    prompt = only_latent_outputs(json.loads(args.workflow.read_text()))
    steps = sampler_steps(prompt)
    budget = args.budget if args.budget is not None else (
        search.budget_for_speedup(steps, args.speedup) if args.speedup else max(1, round(steps * 0.35)))
    candidates = search.sample_patterns(steps, budget, args.vmin, args.vmax, args.k, args.seed)
    if args.selective:
        candidates = [c.with_selective(True) for c in candidates]
    baseline = uniform_schedule(steps, budget)
    if args.selective:
        baseline = baseline.with_selective(True)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = list(range(rank, len(candidates), world))
    server = None
    if args.server:
        if args.output_dir is None:
            raise WorkflowError("--server needs --output-dir: the ComfyUI output folder, to read the latents")
        client = ComfyClient(args.server.rstrip("/"), output_dir=args.output_dir)
    else:
        if world > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("LOCAL_RANK", str(rank))
        server = ComfyServer(cpu=not _cuda_available()).start()
        client = server.client()
    try:
        rows_mine = evaluate(client, prompt, [candidates[i] for i in mine], args.image_seeds, args.metric, f"r{rank}")
        base_rows = evaluate(client, prompt, [baseline], args.image_seeds, args.metric, f"r{rank}u") if rank == 0 else []
    finally:
        if server:
            server.stop()
    for i, row in zip(mine, rows_mine):
        row["index"] = i
    rows = _gather(rows_mine, world)
    if rank != 0:
        return 0
    rows.sort(key=lambda r: r["index"])
    higher_better = proxy.HIGHER_IS_BETTER[args.metric]
    best = (max if higher_better else min)(rows, key=lambda r: r["score"])
    sched = Schedule.from_string(best["actions"])
    preset = Preset(name=name, schedule=sched, family=args.family, model=args.workflow.stem,
                    selective=_default_selective(), provenance={
                        "source": "scripts/calibrate.py", "sampler": _sampler_desc(prompt), "budget": budget,
                        "objective": f"{args.metric} vs full compute over seeds {args.image_seeds}",
                        "date": _dt.date.today().isoformat(),
                        "notes": f"best of {len(rows)} constrained candidates (vmin={args.vmin}, vmax={args.vmax}, seed={args.seed})"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(dump_preset(preset))
    tmp.replace(args.out)  # never leaves a half-written preset
    report = {"workflow": str(args.workflow), "steps": steps, "budget": budget, "metric": args.metric,
              "higher_is_better": higher_better, "candidates": rows, "best": best,
              "uniform_baseline": base_rows[0] if base_rows else None}
    report_path = args.report or args.out.with_suffix(".report.json")
    report_path.write_text(json.dumps(report, indent=2))
    print(f"[calibrate] best {best['actions']} ({args.metric}={best['score']:.5f}); uniform "
          f"{base_rows[0]['actions']} ({args.metric}={base_rows[0]['score']:.5f})")
    print(f"[calibrate] wrote {args.out} and {report_path}")
    return 0


def _default_selective():
    from procache_core.settings import SelectiveSettings

    return SelectiveSettings()


def _sampler_desc(prompt: dict) -> str:
    from workflow_tools import sampler_node

    n = prompt[sampler_node(prompt)]["inputs"]
    return f"{n.get('sampler_name')}/{n.get('scheduler')}/{n.get('steps')} steps/cfg {n.get('cfg')}"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _gather(rows: list[dict], world: int) -> list[dict]:
    if world == 1:
        return rows
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    out: list = [None] * world
    dist.all_gather_object(out, rows)
    return [r for part in out for r in part]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WorkflowError as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        sys.exit(2)
