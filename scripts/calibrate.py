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
from procache_core.errors import ProCacheError  # noqa: E402
from procache_core.baselines import uniform_schedule  # noqa: E402
from procache_core.presets import Preset, dump_preset, validate_preset_name  # noqa: E402
from procache_core.schedule import Schedule  # noqa: E402
from workflow_tools import (WorkflowError, ensure_save_latent, nodes_of, only_latent_outputs,  # noqa: E402
                            sampler_steps, set_schedule_text, set_seed, without_procache)


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
    prompt = only_latent_outputs(load_workflow(args.workflow))
    check_workflow(prompt)  # before any host starts: a bad workflow fails in milliseconds
    steps = sampler_steps(prompt)
    budget = args.budget if args.budget is not None else (
        search.budget_for_speedup(steps, args.speedup, args.vmin, args.vmax) if args.speedup
        else search.budget_for_speedup(steps, 1 / 0.35, args.vmin, args.vmax))
    candidates = search.sample_patterns(steps, budget, args.vmin, args.vmax, args.k, args.seed)
    if args.selective:
        candidates = [c.with_selective(True) for c in candidates]
    baseline = uniform_schedule(steps, budget)
    if args.selective:
        baseline = baseline.with_selective(True)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = split_candidates(len(candidates), rank, world)
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
    rows = merge_rows(_gather(rows_mine, world))
    if rank != 0:
        return 0
    higher_better = proxy.HIGHER_IS_BETTER[args.metric]
    best = rows[proxy.best_index([r["score"] for r in rows], args.metric)]  # NaN never wins
    uni = base_rows[0] if base_rows else None
    uniform_wins = bool(uni) and uni["score"] != best["score"] and proxy.best_index(
        [best["score"], uni["score"]], args.metric) == 1
    sched = Schedule.from_string(uni["actions"] if uniform_wins else best["actions"])
    preset = Preset(name=name, schedule=sched, family=args.family, model=args.workflow.stem,
                    selective=_default_selective(), provenance={
                        "kind": "searched", "source": "scripts/calibrate.py", "sampler": _sampler_desc(prompt),
                        "budget": budget,
                        "noise_axis": "not recorded: runs as written at this step count (full denoise)",
                        "chosen": "uniform (scored better than every candidate)" if uniform_wins else "best candidate",
                        "objective": f"{args.metric} vs full compute over seeds {args.image_seeds}",
                        "date": _dt.date.today().isoformat(),
                        "notes": f"best of {len(rows)} constrained candidates (vmin={args.vmin}, vmax={args.vmax}, seed={args.seed})"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(dump_preset(preset))
    tmp.replace(args.out)  # never leaves a half-written preset
    report = {"workflow": str(args.workflow), "steps": steps, "budget": budget, "metric": args.metric,
              "chosen": "uniform" if uniform_wins else "best",
              "higher_is_better": higher_better, "candidates": rows, "best": best,
              "uniform_baseline": base_rows[0] if base_rows else None,
              "best_beats_uniform": bool(base_rows) and proxy.best_index(
                  [base_rows[0]["score"], best["score"]], args.metric) == 1
              and base_rows[0]["score"] != best["score"]}
    report_path = args.report or args.out.with_suffix(".report.json")
    report_path.write_text(json.dumps(report, indent=2))
    print(f"[calibrate] best {best['actions']} ({args.metric}={best['score']:.5f}); uniform "
          f"{base_rows[0]['actions']} ({args.metric}={base_rows[0]['score']:.5f})")
    print(f"[calibrate] wrote {args.out} and {report_path}")
    return 0


def load_workflow(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise WorkflowError(f"cannot read the workflow {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise WorkflowError(f"{path} is not an API-format workflow: use \"Save (API)\" in the ComfyUI menu")
    return data


def check_workflow(prompt: dict) -> None:
    """Everything the calibration needs from the graph, checked up front (raises WorkflowError)."""
    if not nodes_of(prompt, "ProCacheApply"):
        raise WorkflowError("the workflow has no ProCacheApply node: add ProCache Apply between the model "
                            "and the sampler")
    if not nodes_of(prompt, "ProCacheScheduleLoader"):
        raise WorkflowError("the workflow has no ProCacheScheduleLoader node: add ProCache Schedule Loader "
                            "and connect it to ProCache Apply")
    without_procache(prompt)
    sampler_steps(prompt)


def split_candidates(n: int, rank: int, world: int) -> list[int]:
    """Indices of the candidates process `rank` of `world` evaluates: every world-th from rank.

    Every index in range(n) lands in exactly one process; process loads differ by at most one.
    """
    if world < 1 or not 0 <= rank < world:
        raise WorkflowError(f"RANK={rank} / WORLD_SIZE={world} is not a valid process layout")
    return list(range(rank, n, world))


def merge_rows(parts: list[list[dict]]) -> list[dict]:
    """Rows gathered from every process, in candidate order; each index must appear exactly once."""
    rows = sorted((r for part in parts for r in part), key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(len(rows))):
        raise RuntimeError(f"gathered candidate indices {[r['index'] for r in rows]} are not 0..{len(rows) - 1}")
    return rows


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


def _gather(rows: list[dict], world: int) -> list[list[dict]]:
    """Every process's rows, one list per rank (torch.distributed gloo when world > 1)."""
    if world == 1:
        return [rows]
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    out: list = [None] * world
    dist.all_gather_object(out, rows)
    return list(out)


def cli(argv: list[str] | None = None) -> int:
    from comfy_client import PromptError

    try:
        return main(argv)
    except (WorkflowError, ProCacheError, PromptError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
