"""In-host quality bench: the trained digits models (Flux and PixArt-α in the host's own classes) sampled by
the REAL ComfyUI server through its own samplers, every caching method against full compute.

For each model and each sampler case (euler/normal, dpmpp_2m/karras, heun/normal at denoise 1, and an
img2img case at denoise 0.6 from real digits), with the same seed, prompts and latent:

- full                    plain KSampler
- procache (paper)        the paper preset of the family scaled to the step count, S steps as reuse
- procache (searched)     the schedule the ProCache Schedule Search node picks on this model and sampler
                          (same budget, K = 3, vmin 1, vmax 4; it calibrates at denoise 1 on the proxy
                          seed ``search_on_seed``, never on the evaluation seed ``seed``: the row is judged
                          on samples the search did not see)
- procache+sel            the paper-style schedule with Selective Compute Settings (pack defaults)
- uniform                 full every N-th step, same number of full steps as the paper-style schedule
- easycache / lazycache   the host's nodes over a threshold sweep (start 0.15, end 0.95); EasyCache with the
                          model's input copied first (test node ProCacheTestCopyModelInput: in fp32 the
                          host's EasyCache corrupts every step it skips, see tests/host_nodes/nodes_copy_model_input.py;
                          in fp16/bf16 it does not) and, for the record, as shipped

Metrics on the decoded 32x32 images (the demo's linear map): PSNR / SSIM against full compute, the
Fréchet distance in the digits feature net's space to the full-compute samples (FD-full) and to the real
digits (FD-real), the feature net's label accuracy, the block-evaluation ratio (ProCache Stats for the
block caches; for EasyCache/LazyCache the model calls they skipped, from the server log, over the calls
of full compute) and the wall speed-up (host-reported execution time of the prompt against full compute
timed before and after the methods of the case).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import host_digits as hd
from .quality import split_seeds

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    {"name": "euler/normal", "sampler": "euler", "scheduler": "normal", "denoise": 1.0},
    {"name": "dpmpp_2m/karras", "sampler": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0},
    {"name": "heun/normal", "sampler": "heun", "scheduler": "normal", "denoise": 1.0},
    {"name": "img2img euler/normal denoise 0.6", "sampler": "euler", "scheduler": "normal", "denoise": 0.6},
]
THRESHOLDS = (0.05, 0.15, 0.4, 1.0)  # 1.0: so the sweeps reach the ~20 % block budgets of the ProCache rows
SELECTIVE = {"enabled": True, "depth_fraction": 0.25, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
             "w_output_norm": 0.25, "w_spatial": 0.5, "tie_break": "index", "image_first": False}  # the paper's picks


def paper_schedule(family: str, steps: int) -> str:
    """The family's paper preset scaled to `steps` (index-proportional), selective steps as reuse."""
    from procache_core.presets import load_preset

    sched = load_preset(ROOT / "schedules" / f"{hd.PAPER_PRESET[family]}.yaml").schedule
    if len(sched) != steps:
        sched = sched.remap(steps)
    return sched.to_string().replace("S", "C")


def uniform_schedule(steps: int, budget: int) -> str:
    from .quality import uniform_string

    return uniform_string(steps, budget)


def _init_images(n_per_digit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits, `n_per_digit` of each in the order 0..9, 0..9, ... (the bench's prompt order)."""
    from .data import load_digits_images

    img, lab = load_digits_images(32)
    idx = [int((lab == d).nonzero()[r]) for r in range(n_per_digit) for d in range(10)]
    return img[idx], lab[idx]


def _save_tiff(img: torch.Tensor, path: Path) -> torch.Tensor:
    """Multi-page TIFF (LoadImage gives the pages as one batch); returns the 8-bit images as loaded."""
    from PIL import Image

    arr = ((img[:, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    frames = [Image.fromarray(a).convert("RGB") for a in arr]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1)[:, None]


def _best_schedule(report: str) -> str:
    for line in report.splitlines():
        if line.startswith("*"):
            parts = line[1:].split()
            return parts[1] if parts[0] == "profile" else parts[0]
    raise ValueError(f"no best schedule in the search report:\n{report}")


def _search_report(entry: dict) -> str:
    for out in entry.get("outputs", {}).values():
        for t in out.get("text", []) or []:
            if isinstance(t, str) and t.startswith("ProCache search"):
                return t
    raise ValueError("the ProCache Schedule Search node reported nothing")


def _server_cls():
    sys.path.insert(0, str(ROOT / "scripts"))
    from comfy_client import ComfyServer

    return ComfyServer


def run(quick: bool = True, log=print, families=("flux", "pixart"), cases=None, steps: int = 20,
        repeat: int | None = None, thresholds=THRESHOLDS, cfg: float = hd.CFG, search_k: int = 3,
        workdir: Path | None = None, seed: int = 0, search_on_seed: int = 1) -> dict[str, Any]:
    import tempfile

    from .data import features, load_digits_images, load_or_train_featnet

    split_seeds(search_on_seed, seed, names=("search_on_seed", "seed"))  # refused before any work
    hd.ensure_host()
    cases = cases or CASES
    repeat = repeat or (3 if quick else 20)
    digits = "0123456789"
    labels = hd.labels_of(digits, repeat)
    featnet, feat_info = load_or_train_featnet(log=log)
    real, _ = load_digits_images(32)
    f_real = features(featnet, real).numpy()
    t_start = time.time()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="procache-hostq-"))
    ComfyServer = _server_cls()
    results: dict[str, Any] = {"steps": steps, "cfg": cfg, "n_samples": len(labels), "thresholds": list(thresholds),
                               "selective": SELECTIVE, "search_k": search_k, "families": {}, "featnet": feat_info,
                               "seed": seed, "search_on_seed": search_on_seed}
    with ComfyServer(workdir=workdir) as srv:
        client = srv.client()
        init_img, _ = _init_images(repeat)
        init_loaded = _save_tiff(init_img, workdir / "input" / "digits_init.tiff")
        for fam in families:
            paper = paper_schedule(fam, steps)
            budget = paper.count("F")
            uniform = uniform_schedule(steps, budget)
            info = _model_info(fam)
            log(f"[host-quality] {fam}: paper-style {paper} (B={budget}), uniform {uniform}; "
                f"model {info.get('steps_total', info.get('steps_run'))} training steps")
            # warm-up: loads the model once so no timed prompt pays for it
            client.run(hd.digits_prompt(fam, digits="0", steps=2, cfg=cfg, prefix="warm"), timeout=900)
            fam_res = {"paper_schedule": paper, "budget": budget, "uniform_schedule": uniform, "model": info,
                       "cases": []}
            for case in cases:
                fam_res["cases"].append(_run_case(client, srv, fam, case, steps, cfg, repeat, digits, labels, paper,
                                                  uniform, budget, thresholds, search_k, featnet, f_real,
                                                  init_loaded, log, seed, search_on_seed))
            results["families"][fam] = fam_res
    results["seconds"] = round(time.time() - t_start, 1)
    results["verdicts"] = verdicts(results)
    return results


def _model_info(fam: str) -> dict:
    import json

    from safetensors import safe_open

    path = ROOT / "nodes" / "demo" / "weights" / f"digits_{fam}.safetensors"
    with safe_open(str(path), "pt") as f:
        info = json.loads((f.metadata() or {}).get("procache_demo", "{}"))
    return {k: v for k, v in info.items() if k != "loss_curve"}


def _run_case(client, srv, fam, case, steps, cfg, repeat, digits, labels, paper, uniform, budget, thresholds,
              search_k, featnet, f_real, init_loaded, log, seed: int = 0, search_on_seed: int = 1) -> dict:
    from .data import features

    base = dict(digits=digits, repeat=repeat, steps=steps, cfg=cfg, sampler=case["sampler"],
                scheduler=case["scheduler"], denoise=case["denoise"], seed=seed)
    if case["denoise"] < 1.0:
        base["init_image"] = "digits_init.tiff"

    def sample(prefix: str, **kw) -> tuple[torch.Tensor, dict, float]:
        entry = client.run(hd.digits_prompt(fam, prefix=prefix, **base, **kw), timeout=1800)
        x = hd.decode_latent_file(client.output_files(entry, "latents")[0])
        return x, entry, hd.exec_seconds(entry)

    log(f"[host-quality] {fam} {case['name']}")
    x_full, _, t_full0 = sample("full")
    f_full = features(featnet, x_full).numpy()

    def evaluate(x: torch.Tensor) -> dict:
        return hd.sample_metrics(featnet, labels, x, x_full, f_full, f_real)

    rows: list[dict] = []
    full_metrics = evaluate(x_full)
    evals_full = None

    def add_block_row(method: str, label: str, actions: str | None, entry: dict, x: torch.Tensor, t: float,
                      extra: dict | None = None) -> dict:
        nonlocal evals_full
        st = hd.parse_stats(hd.stats_text(entry))
        evals_full = evals_full or st["model_evals"]
        row = {"method": method, "label": label, "schedule": actions, "block_eval_fraction": st["block_eval_fraction"],
               "steps_full": st["full"], "steps_selective": st["selective"], "steps_cached": st["cached"],
               "model_evals": st["model_evals"], "seconds": t, **evaluate(x), **(extra or {})}
        rows.append(row)
        return row

    x, e, t = sample("pc", procache={"actions": paper})
    add_block_row("procache", "procache (paper-style)", paper, e, x, t)
    # the calibration node on this model, sampler and prompt (denoise 1); its pick is then sampled on its own
    t0 = time.perf_counter()
    se = client.run(hd.digits_prompt(fam, prefix="search", **{**base, "init_image": None, "denoise": 1.0,
                                                              "seed": search_on_seed},
                                     search={"budget": budget, "k": search_k}), timeout=3600)
    search_s = time.perf_counter() - t0
    report = _search_report(se)
    picked = _best_schedule(report)
    x, e, t = sample("pcs", procache={"actions": picked})
    add_block_row("procache-searched", "procache (search node)", picked, e, x, t,
                  {"search_seconds": round(search_s, 2), "search_report": report})
    x, e, t = sample("pcsel", procache={"actions": paper, "selective": SELECTIVE})
    add_block_row("procache+sel", "procache+sel (paper-style)", paper, e, x, t)
    x, e, t = sample("uni", procache={"actions": uniform})
    add_block_row("uniform", f"uniform B={budget}", uniform, e, x, t)
    # EasyCache twice: with the model's input copied (what the host does in fp16/bf16; the verdict uses these)
    # and as shipped, whose skipped steps are corrupted in fp32 (tests/host_nodes/nodes_copy_model_input.py says how)
    for kind, method, label, copy_input in (("EasyCache", "easycache", "easycache", True),
                                            ("EasyCache", "easycache-as-shipped", "easycache as shipped", False),
                                            ("LazyCache", "lazycache", "lazycache", False)):
        for thr in thresholds:
            before = len(hd.hostcache_skipped(srv.log(), kind))
            x, e, t = sample(method, hostcache=(kind, thr, copy_input))
            skipped = _wait_skipped(srv, kind, before)
            ratio = 1.0 - skipped / evals_full
            rows.append({"method": method, "label": f"{label} thr={thr}", "threshold": thr,
                         "block_eval_fraction": ratio, "model_evals": evals_full - skipped, "seconds": t,
                         **evaluate(x)})
    _, _, t_full1 = sample("full2")
    t_full = (t_full0 + t_full1) / 2
    for r in rows:
        r["wall_speedup"] = t_full / r["seconds"] if r["seconds"] > 0 else float("nan")
    full_row = {"method": "full", "label": "full", "block_eval_fraction": 1.0, "model_evals": evals_full,
                "seconds": t_full, "seconds_runs": [t_full0, t_full1], "wall_speedup": 1.0, **full_metrics}
    for r in [full_row] + rows:
        log(f"    {r['label']:<30s} blocks {r['block_eval_fraction']:.3f}  PSNR {r['psnr']:6.2f}  "
            f"SSIM {r['ssim']:.4f}  FD-full {r['fd_full']:7.3f}  acc {r['label_acc']:.3f}  "
            f"wall {r['wall_speedup']:.2f}x")
    return {**case, "rows": [full_row] + rows}


def _wait_skipped(srv, kind: str, before: int, timeout: float = 10.0) -> int:
    """The skipped-call count the host logged for the run that just finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = hd.hostcache_skipped(srv.log(), kind)
        if len(found) > before:
            return found[before]
        time.sleep(0.1)
    raise RuntimeError(f"{kind} logged no 'skipped' line for the last run")


def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    from .quality import _interp as interp

    return interp(points, x)


def verdicts(results: dict) -> list[dict]:
    """Per model and case: each ProCache row against uniform (same budget) and against the EasyCache /
    LazyCache curves interpolated at ProCache's block-evaluation ratio (PSNR higher, FD-full lower)."""
    out = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            rows = case["rows"]
            uni = next(r for r in rows if r["method"] == "uniform")
            curves = {k: sorted((r["block_eval_fraction"], r["psnr"], r["fd_full"]) for r in rows if r["method"] == k)
                      for k in ("easycache", "lazycache")}
            for r in rows:
                if not r["method"].startswith("procache"):
                    continue
                v = {"family": fam, "case": case["name"], "method": r["label"], "ratio": r["block_eval_fraction"],
                     "psnr": r["psnr"], "fd_full": r["fd_full"], "wall_speedup": r["wall_speedup"],
                     "uniform_psnr": uni["psnr"], "uniform_ratio": uni["block_eval_fraction"],
                     "beats_uniform": r["psnr"] >= uni["psnr"] and r["fd_full"] <= uni["fd_full"]}
                for k, pts in curves.items():
                    ratio = r["block_eval_fraction"]
                    p = _interp([(a, b) for a, b, _ in pts], ratio)
                    f = _interp([(a, c) for a, _, c in pts], ratio)
                    v[f"{k}_psnr"] = p
                    v[f"{k}_fd_full"] = f
                    v[f"{k}_note"] = "interpolated"
                    if p is not None:
                        v[f"beats_{k}"] = r["psnr"] >= p and r["fd_full"] <= f
                    else:
                        # the sweep does not reach this ratio: when its cheapest point still computes more
                        # and is worse on both metrics, ProCache dominates it; otherwise no verdict
                        above = [q for q in pts if q[0] > ratio]
                        v[f"beats_{k}"] = None
                        if above:
                            a, b, c = min(above)
                            v[f"{k}_psnr"], v[f"{k}_fd_full"] = b, c
                            v[f"{k}_note"] = f"its lowest ratio {a:.3f}"
                            if b < r["psnr"] and c > r["fd_full"]:
                                v[f"beats_{k}"] = True
                out.append(v)
    return out


def section(results: dict, commit: str | None = None) -> list[str]:
    """Markdown section of the results README."""
    from .common import fmt_num, md_table

    lines = ["## Quality inside the host (trained Flux and PixArt-α digits models, ComfyUI's own samplers)", "",
             "Generated by `python -m benchmarks.run --quick --only host` (also part of `make bench-quick`)"
             + (f" at commit `{commit}`" if commit else "") + f", {results.get('seconds')} s. "
             "Models: the pack's demo models (`nodes/demo`, trained by `benchmarks/train_host_digits.py`), sampled by the "
             f"real ComfyUI server at {results['steps']} steps, CFG {results['cfg']}, {results['n_samples']} samples "
             f"(digits 0-9 in turn, seed {results.get('seed', 0)}"
             + (f"; the search node calibrates on seed {results['search_on_seed']}, so its row is judged on held-out "
                "samples" if "search_on_seed" in results else "; the search node calibrated on the same seed")
             + "); metrics on the decoded 32x32 images. *blocks* = block-evaluation ratio "
             "(ProCache Stats; for EasyCache/LazyCache the share of model calls they did not skip); *wall* = full-compute "
             "execution time (mean of a run before and after the methods) / the method's, as the host reports it — "
             "at this model size the sampler and the server's per-step overhead are a large share of it. "
             "*easycache* rows run the host's EasyCache on a copy of the model's input (test node "
             "ProCacheTestCopyModelInput): as shipped in ComfyUI 0.3.75 its skip path adds the cached difference "
             "into the model's input in place and returns it, and for a flow model running in fp32 (these models, "
             "any CPU run) the host then computes the denoised latent from that altered input, so every skipped "
             "step is wrong (*easycache as shipped* rows); in fp16/bf16 the host hands the model a copy anyway. "
             "The verdict compares against the copied-input rows.", ""]
    for fam, fr in results["families"].items():
        m = fr["model"]
        lines += [f"### {fam}", "",
                  f"Host config `{m.get('unet_config')}`, {m.get('params')} parameters, "
                  f"{m.get('steps_total', m.get('steps_run'))} training steps "
                  f"({m.get('train_seconds_total', m.get('train_seconds'))} s on a shared CPU)"
                  + (f", model type {m['model_type']}" if m.get("model_type") else "")
                  + f". Paper-style schedule `{fr['paper_schedule']}` "
                  f"(B = {fr['budget']} full steps), uniform `{fr['uniform_schedule']}`."
                  + _untrained_note(fr) + _inactive_note(fam, fr), ""]
        for case in fr["cases"]:
            lines += [f"**{case['name']}**", ""]
            rows = [[r["label"], r.get("schedule") or ("" if r["method"] != "full" else "all full"),
                     fmt_num(r["block_eval_fraction"], 3), fmt_num(r["wall_speedup"]), fmt_num(r["psnr"]), fmt_num(r["ssim"], 4),
                     fmt_num(r["fd_full"], 3), fmt_num(r["fd_real"], 3), fmt_num(r["label_acc"], 3)] for r in case["rows"]]
            lines.append(md_table(["method", "schedule", "blocks", "wall", "PSNR", "SSIM", "FD-full", "FD-real",
                                   "label acc"], rows))
            lines.append("")
    lines += ["### Verdict at matched block-evaluation ratio", "",
              "A ProCache row *beats* a baseline when both its PSNR is at least and its FD-full at most the baseline's "
              "(EasyCache/LazyCache interpolated on their threshold sweep at ProCache's ratio; where the sweep does not "
              "reach that ratio, its cheapest point is shown and ProCache beats it only if that point computes more "
              "and is worse on both metrics, otherwise n/a).", ""]
    results = {**results, "verdicts": verdicts(results)}
    yn = {None: "n/a", True: "yes", False: "NO"}

    def base(v, k):
        note = v.get(f"{k}_note", "interpolated")
        return fmt_num(v[f"{k}_psnr"]) + ("" if note == "interpolated" or v[f"{k}_psnr"] is None else f" ({note})")

    vrows = [[v["family"], v["case"], v["method"], fmt_num(v["ratio"], 3), fmt_num(v["psnr"]),
              fmt_num(v["uniform_psnr"]), yn[v["beats_uniform"]],
              base(v, "easycache"), yn[v["beats_easycache"]], base(v, "lazycache"), yn[v["beats_lazycache"]]]
             for v in results["verdicts"]]
    lines.append(md_table(["model", "case", "ProCache", "blocks", "PSNR", "uniform PSNR", "beats uniform",
                           "EasyCache PSNR", "beats EasyCache", "LazyCache PSNR", "beats LazyCache"], vrows))
    lines += ["", plain_verdict(results), ""]
    return lines


def _untrained_note(fr: dict) -> str:
    accs = [r["label_acc"] for c in fr["cases"] for r in c["rows"] if r["method"] == "full"]
    if accs and max(accs) < 0.9:
        return (f" **This model does not draw digits yet** (full-compute label accuracy {max(accs):.2f}; see "
                "nodes/demo/README.md): its rows measure how closely each cache follows full compute, nothing more.")
    return ""


def _inactive_note(fam: str, fr: dict) -> str:
    """Says so when a host cache never skipped anything on this model (its rows then equal full compute)."""
    rows = [r for c in fr["cases"] for r in c["rows"] if r["method"] == "easycache"]
    if not rows or any(r["block_eval_fraction"] < 1.0 for r in rows):
        return ""
    why = (" (the host's `PixArtMS.forward` does not run the DIFFUSION_MODEL wrappers through which EasyCache works; "
           "not every model class of the host runs them)") if fam == "pixart" else ""
    return f" The host's EasyCache never skipped a step on this model at any threshold{why}: its rows are full compute."


def plain_verdict(results: dict) -> str:
    vs = results["verdicts"]
    if not vs:
        return ""
    parts = []
    for k, name in (("beats_uniform", "uniform reuse"), ("beats_easycache", "EasyCache"), ("beats_lazycache", "LazyCache")):
        comp = [v for v in vs if v[k] is not None]
        won = [v for v in comp if v[k]]
        lost = [f"{v['family']} {v['case']} {v['method']}" for v in comp if not v[k]]
        parts.append(f"against {name} ProCache wins {len(won)} of {len(comp)} comparable rows"
                     + (f" (not: {'; '.join(lost)})" if lost else ""))
    return "**Verdict:** " + "; ".join(parts) + "."
