"""`make bench-peers PEERS=<folder>`: ProCache against the caching packs users install instead, on the same
trained digits models, through the same real ComfyUI server, in the same run.

Peers (each a checkout the user provides in <folder>, found by its folder name; a missing one is skipped
with one line): ComfyUI-TeaCache (node TeaCache, knob rel_l1_thresh), Comfy-WaveSpeed (First Block Cache,
node ApplyFBCacheOnModel, knob residual_diff_threshold) and ComfyUI-MagCache (node MagCache, knobs
magcache_thresh and magcache_K; its calibration node MagCacheCalibration is run on our model and the
ratios it prints are fed back to MagCache in a second sweep). The peers are loaded from a custom-nodes
folder of the bench server's own (``--extra-model-paths-config``), never linked into the host's
custom_nodes; their missing Python requirements are installed once into ``.host/peer-deps`` (pip
``--target``, no dependency pulled in that the venv already has) and put on the server's PYTHONPATH.

Every row is one KSampler run of the digits model (seed 0, digits 0-9) with the same prompt, latent and
sampler, measured like the in-host quality bench (benchmarks/host_quality.py, whose metrics and prompt
builder this reuses): wall speed-up (host-reported execution time against full compute timed before
and after the methods), block-evaluation ratio (ProCache Stats for ProCache; for the peers the calls of
the host's block modules counted by forward pre-hooks, tests/host_nodes/bench_block_counts.py), PSNR / SSIM to full
compute, Fréchet distance to the full-compute samples and to real digits, and label accuracy.
Comparison is at matched compute speed-up (1 / block ratio): ProCache's curve over its budgets is
interpolated at each peer row's speed-up, and at each peer's best quality the speed-up ProCache reaches
at the same PSNR is reported.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .common import block_marks, fmt_num, write_readme_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_DEPS = ROOT / ".host" / "peer-deps"
CASES = [
    {"name": "euler/normal", "sampler": "euler", "scheduler": "normal", "denoise": 1.0},
    {"name": "dpmpp_2m/karras", "sampler": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0},
    {"name": "heun/normal", "sampler": "heun", "scheduler": "normal", "denoise": 1.0},
    {"name": "img2img euler/normal denoise 0.6", "sampler": "euler", "scheduler": "normal", "denoise": 0.6},
]
INIT_IMAGE = "digits_init.tiff"   # real digits for the img2img case, written into the bench server's input folder
PROCACHE_PRESETS = {"flux": ("flux-28-quality", "flux-28-balanced", "flux-28-fast"),
                    "pixart": ("pixart-alpha-20-quality", "pixart-alpha-20-balanced", "pixart-alpha-20-fast")}


@dataclass
class Peer:
    """One peer pack: its folder name, the node it adds, the knob sweep, and which of our families it takes.

    families maps our family name to the pack's own model-type choice (None where the node has no such
    input); unsupported maps a family to the reason the pack cannot run it (written beside its row)."""

    name: str
    folder: str
    node: str
    knob: str
    sweep: list[dict]
    families: dict[str, str | None]
    unsupported: dict[str, str] = field(default_factory=dict)
    caveats: dict[str, str] = field(default_factory=dict)
    fixed: Callable[[str | None], dict] = lambda model_type: {}

    def inputs(self, family: str, setting: dict) -> dict:
        return {**self.fixed(self.families.get(family)), **setting}


PEERS = [
    Peer("TeaCache", "ComfyUI-TeaCache", "TeaCache", "rel_l1_thresh",
         [{"rel_l1_thresh": t} for t in (0.15, 0.2, 0.25, 0.4, 0.6, 0.8)],
         {"flux": "flux"},
         {"pixart": "no PixArt model_type in the TeaCache node (its choices: flux, ltxv, lumina_2, hunyuan_video, "
                    "hidream, wan2.1)"},
         {"flux": "rescaling polynomial fit to the released FLUX.1 weights, not ours; the node cannot refit it"},
         lambda mt: {"model_type": mt, "start_percent": 0.0, "end_percent": 1.0, "cache_device": "cpu"}),
    Peer("FBCache", "Comfy-WaveSpeed", "ApplyFBCacheOnModel", "residual_diff_threshold",
         [{"residual_diff_threshold": t} for t in (0.12, 0.25, 0.3, 0.4, 0.5, 0.7)],
         {"flux": None, "pixart": None}, {}, {},
         lambda mt: {"object_to_patch": "diffusion_model", "start": 0.0, "end": 1.0,
                     "max_consecutive_cache_hits": -1}),
    Peer("MagCache", "ComfyUI-MagCache", "MagCache", "magcache_thresh/magcache_K",
         [{"magcache_thresh": t, "magcache_K": k} for k in (2, 4) for t in (0.03, 0.06, 0.12, 0.24)],
         {"flux": "flux"},
         {"pixart": "no PixArt model_type in the MagCache node (its choices: flux, chroma, qwen_image, "
                    "hunyuan_video, wan2.1)"},
         {"flux": "magnitude ratios of the released FLUX.1 weights (28 steps, interpolated)"},
         lambda mt: {"model_type": mt, "retention_ratio": 0.2, "start_step": 0, "end_step": -1}),
]


# ---------------------------------------------------------------------------------------------- discovery

def peer_source(path: Path) -> dict:
    """Repository URL and commit of a peer checkout (what the results cite)."""
    def git(*args: str) -> str | None:
        r = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None

    return {"url": git("remote", "get-url", "origin"), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain"))}


def discover(peers_dir: Path | None, peers: list[Peer] = PEERS) -> tuple[list[tuple[Peer, Path, dict]], list[str]]:
    """The peers whose folder exists under peers_dir, with their source; one skip line for each missing one."""
    found, skipped = [], []
    for p in peers:
        path = Path(peers_dir) / p.folder if peers_dir else None
        if path is None or not path.is_dir():
            where = f"in {peers_dir}" if peers_dir else "(no PEERS folder given)"
            skipped.append(f"[bench-peers] skip {p.name}: no folder {p.folder} {where}")
            continue
        found.append((p, path.resolve(), peer_source(path)))
    return found, skipped


# ----------------------------------------------------------------------------------- requirements set-up

def _requirements(path: Path) -> list[str]:
    req = path / "requirements.txt"
    if not req.exists():
        return []
    return [ln.split("#", 1)[0].strip() for ln in req.read_text().splitlines()
            if ln.split("#", 1)[0].strip() and not ln.strip().startswith("-")]


def _missing(reqs: list[str], target: Path) -> list[str]:
    """Requirements not satisfied by this interpreter's packages nor by the target folder."""
    from importlib import metadata

    from packaging.requirements import Requirement

    have = {}
    for dist in list(metadata.distributions()) + list(metadata.distributions(path=[str(target)])):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        have.setdefault(name, dist.version)
    out = []
    for spec in reqs:
        r = Requirement(spec)
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue
        v = have.get(r.name.lower().replace("_", "-"))
        if v is None or (r.specifier and not r.specifier.contains(v, prereleases=True)):
            out.append(str(r))
    return out


def ensure_peer_deps(paths: list[Path], target: Path = PEER_DEPS, log=print) -> list[str]:
    """Installs what the peers' requirements.txt need and the interpreter lacks into `target` (idempotent),
    following each installed package's own requirements, never replacing one the venv already has."""
    from importlib import metadata

    todo = list(dict.fromkeys(_missing([r for p in paths for r in _requirements(p)], target)))
    installed: list[str] = []
    for _ in range(5):
        if not todo:
            break
        log(f"[bench-peers] installing into {target}: {' '.join(todo)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                        str(target), "--no-deps", *todo], check=True)
        installed += todo
        reqs = [r for d in metadata.distributions(path=[str(target)]) for r in (d.requires or [])]
        todo = list(dict.fromkeys(_missing(reqs, target)))
    return installed


# ------------------------------------------------------------------------------------------ comparison

def compute_speedup(row: dict) -> float:
    b = row.get("block_eval_fraction")
    return 1.0 / b if b else float("nan")


def procache_curve(rows: list[dict]) -> list[tuple[float, float, float]]:
    """(compute speed-up, PSNR, FD-full) of ProCache's settings on their upper envelope, by speed-up: a
    setting for which another one is both faster and higher in PSNR is left out (see `dominated`)."""
    pts = sorted(((compute_speedup(r), r["psnr"], r["fd_full"]) for r in rows if r["method"] == "procache"),
                 reverse=True)
    out, best = [], -math.inf
    for s, p, f in pts:
        if p > best:
            out.append((s, p, f))
            best = p
    return out[::-1]


def dominated(rows: list[dict]) -> dict[str, str]:
    """ProCache rows off the envelope -> the label of a ProCache row that is faster and higher in PSNR."""
    pc = [r for r in rows if r["method"] == "procache"]
    out = {}
    for r in pc:
        better = [q for q in pc if compute_speedup(q) > compute_speedup(r) and q["psnr"] > r["psnr"]]
        if better:
            out[r["label"]] = max(better, key=lambda q: q["psnr"])["label"]
    return out


def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    from .quality import _interp as interp

    return interp(points, x)


def speedup_at_quality(curve: list[tuple[float, float, float]], psnr: float) -> float | None:
    """The largest speed-up on ProCache's piecewise-linear (speed-up, PSNR) curve whose PSNR is at least
    `psnr`; None when no ProCache point or segment reaches it."""
    best = None
    for s, p, _ in curve:
        if p >= psnr:
            best = s if best is None else max(best, s)
    for (s0, p0, _), (s1, p1, _) in zip(curve, curve[1:]):
        if (p0 - psnr) * (p1 - psnr) < 0:
            s = s0 + (s1 - s0) * (psnr - p0) / (p1 - p0)
            best = s if best is None else max(best, s)
    return best


def matched(row: dict, curve: list[tuple[float, float, float]]) -> dict:
    """ProCache at the peer row's compute speed-up: interpolated PSNR and FD-full and who wins (higher PSNR
    and lower FD-full; None = ProCache's budgets do not span that speed-up, or the two metrics disagree)."""
    s = compute_speedup(row)
    p = _interp([(a, b) for a, b, _ in curve], s)
    f = _interp([(a, c) for a, _, c in curve], s)
    out = {"speedup": s, "procache_psnr": p, "procache_fd_full": f, "winner": None}
    if p is None:
        lo = curve[0][0] if curve else float("nan")
        hi = curve[-1][0] if curve else float("nan")
        out["note"] = f"outside ProCache's range {lo:.2f}-{hi:.2f}x"
        # a peer row slower than all of ProCache's and worse than ProCache's slowest point loses outright
        if curve and s < lo and row["psnr"] < curve[0][1] and row["fd_full"] > curve[0][2]:
            out["winner"] = "procache"
        # a peer row faster than all of ProCache's and better than ProCache's fastest point wins outright
        if curve and s > hi and row["psnr"] > curve[-1][1] and row["fd_full"] < curve[-1][2]:
            out["winner"] = "peer"
        return out
    if p >= row["psnr"] and f <= row["fd_full"]:
        out["winner"] = "procache"
    elif p < row["psnr"] and f > row["fd_full"]:
        out["winner"] = "peer"
    else:
        out["note"] = "metrics disagree"
    return out


MIN_USEFUL_SPEEDUP = 1.5


def peer_summary(rows: list[dict], peer: str, min_speedup: float = MIN_USEFUL_SPEEDUP) -> dict | None:
    """A peer's best-quality row (highest PSNR among its rows with a compute speed-up of at least
    `min_speedup`, or among all rows that save compute when none does), the speed-up ProCache reaches at
    that PSNR, and the rows where either beats the other at matched speed-up."""
    curve = procache_curve(rows)
    mine = [r for r in rows if r["method"] == peer]
    saving = [r for r in mine if r["block_eval_fraction"] < 1.0 - 1e-9]
    saving = [r for r in saving if compute_speedup(r) >= min_speedup - 1e-9] or saving
    if not mine:
        return None
    out: dict[str, Any] = {"peer": peer, "rows": len(mine), "saving_rows": len(saving)}
    if saving:
        best = max(saving, key=lambda r: (r["psnr"], -r["fd_full"]))
        out.update(best_label=best["label"], best_psnr=best["psnr"], best_fd_full=best["fd_full"],
                   best_speedup=compute_speedup(best), best_wall=best.get("wall_speedup"),
                   best_cpu=best.get("cpu_speedup"),
                   procache_speedup_at_best=speedup_at_quality(curve, best["psnr"]))
    out["peer_wins"] = [r["label"] for r in mine if matched(r, curve)["winner"] == "peer"]
    out["procache_wins"] = [r["label"] for r in mine if matched(r, curve)["winner"] == "procache"]
    return out


# ------------------------------------------------------------------------------------------ the server

def _bench_nodes_dir(workdir: Path, found: list[tuple[Peer, Path, dict]]) -> Path:
    """A custom-nodes folder of the bench server's own: links to the peers and to the bench counter nodes."""
    nodes = workdir / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    for _, path, _ in found:
        (nodes / path.name).symlink_to(path, target_is_directory=True)
    # a single-file custom node (the host loads ``<name>.py`` entries as modules)
    (nodes / "ProCacheBenchPeerNodes.py").symlink_to(ROOT / "tests" / "host_nodes" / "bench_block_counts.py")
    cfg = workdir / "extra_paths.yaml"
    cfg.write_text(f"procache_bench_peers:\n  custom_nodes: {nodes}\n")
    return cfg


def import_failures(log_text: str, found: list[tuple[Peer, Path, dict]], node_names: set[str]) -> dict[str, str]:
    """Per peer whose node the server does not list: the exception the host logged when importing its folder."""
    out = {}
    lines = log_text.splitlines()
    for p, path, _ in found:
        if p.node in node_names:
            continue
        why = "its node is not listed by /object_info"
        for ln in lines:   # the host logs the traceback, then "Cannot import <path> module for custom nodes: <e>"
            if "Cannot import" in ln and path.name in ln:
                why = ln.split("module for custom nodes:", 1)[-1].strip() or ln.strip()
        out[p.name] = why
    return out


def server_cpu_seconds(srv) -> float:
    """User + system CPU time of the server process so far (all its threads), from /proc. Far less
    sensitive than the wall clock to other processes on a shared machine."""
    fields = Path(f"/proc/{srv.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_console(client) -> str:
    """What the server printed lately, as its log interceptor holds it (GET /internal/logs/raw)."""
    r = client.get("/internal/logs/raw")
    r.raise_for_status()
    return "".join(str(e.get("m", "")) for e in r.json().get("entries", []))


def _count_line(entry: dict) -> dict | None:
    import re

    for out in entry.get("outputs", {}).values():
        for t in out.get("text", []) or []:
            m = re.search(r"model_calls=(\d+) block_calls=(\d+) blocks_per_call=(\d+)", str(t))
            if m:
                return {"model_calls": int(m[1]), "block_calls": int(m[2]), "blocks_per_call": int(m[3])}
    return None


def with_counter(prompt: dict, token: str) -> dict:
    """The prompt with the bench counter around the model: Start after the loader, Report after the sampler."""
    p = {k: {**v, "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    for node in p.values():
        if node["inputs"].get("model") == ["model", 0]:
            node["inputs"]["model"] = ["count", 0]
    p["count"] = {"class_type": "ProCacheBenchCountStart", "inputs": {"model": ["model", 0], "token": token}}
    p["report"] = {"class_type": "ProCacheBenchCountReport",
                   "inputs": {"samples": ["sampler", 0], "model": p["sampler"]["inputs"]["model"]}}
    return p


def with_peer(prompt: dict, node: str, inputs: dict, extra: list[tuple[str, dict]] = ()) -> dict:
    """The prompt with a peer's node (then `extra` nodes, e.g. the MagCache ratio override) on the model."""
    p = dict(prompt)
    p["peer"] = {"class_type": node, "inputs": {"model": ["model", 0], **inputs}}
    last = "peer"
    for i, (cls, inp) in enumerate(extra):
        p[f"peer_extra{i}"] = {"class_type": cls, "inputs": {"model": [last, 0], **inp}}
        last = f"peer_extra{i}"
    p["sampler"] = {**p["sampler"], "inputs": {**p["sampler"]["inputs"], "model": [last, 0]}}
    return p


def parse_mag_ratios(log_text: str) -> list[float] | None:
    """The last `mag_ratios` list MagCacheCalibration printed (the print may share its line with a progress
    bar, so the label is matched anywhere on its line)."""
    import re

    found = re.findall(r"mag_ratios[ \t]*\r?\n[ \t]*(\[[^\]\n]*\])", log_text)
    if not found:
        return None
    try:
        return [float(v) for v in json.loads(found[-1])]
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------ run

def run(peers_dir: Path | None, families=("flux",), cases=None, steps: int = 20, repeat: int = 3,
        cfg: float | None = None, log=print, workdir: Path | None = None, timing_runs: int = 3,
        paired: bool = True) -> dict[str, Any]:
    from . import host_digits as hd
    from .data import features, load_digits_images, load_or_train_featnet

    sys.path.insert(0, str(ROOT / "scripts"))
    from comfy_client import ComfyServer, PromptError

    cfg = hd.CFG if cfg is None else cfg
    cases = cases or CASES
    found, skipped = discover(peers_dir)
    for line in skipped:
        log(line)
    deps = ensure_peer_deps([path for _, path, _ in found], log=log) if found else []
    hd.ensure_host()
    digits = "0123456789"
    labels = hd.labels_of(digits, repeat)
    featnet, feat_info = load_or_train_featnet(log=log)
    real, _ = load_digits_images(32)
    f_real = features(featnet, real).numpy()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="procache-peers-"))
    extra_cfg = _bench_nodes_dir(workdir, found)
    results: dict[str, Any] = {
        "steps": steps, "cfg": cfg, "n_samples": len(labels), "timing_runs": timing_runs, "paired": paired, "skipped": skipped, "installed_deps": deps,
        "peers": {p.name: {"folder": p.folder, "node": p.node, "knob": p.knob, **src} for p, _, src in found},
        "families": {}, "featnet": feat_info}
    t_start = time.time()
    old_pp = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PEER_DEPS)] + ([old_pp] if old_pp else []))
    try:
        with ComfyServer(workdir=workdir, extra_args=["--extra-model-paths-config", str(extra_cfg)]) as srv:
            client = srv.client()
            if any(c["denoise"] < 1.0 for c in cases):
                from .host_quality import _init_images, _save_tiff

                (workdir / "input").mkdir(parents=True, exist_ok=True)
                _save_tiff(_init_images(repeat)[0], workdir / "input" / INIT_IMAGE)
            names = set(client.object_info().keys())
            if "ProCacheBenchCountStart" not in names:
                raise RuntimeError(f"the bench counter nodes did not load:\n{srv.log()[-3000:]}")
            failures = import_failures(srv.log(), found, names)
            for name, why in failures.items():
                log(f"[bench-peers] {name} did not import on this host: {why}")
                results["peers"][name]["import_error"] = why
            live = [(p, path) for p, path, _ in found if p.name not in failures]
            for fam in families:
                client.run(hd.digits_prompt(fam, digits="0", steps=2, cfg=cfg, prefix="warm"), timeout=900)
                fam_res = {"cases": [], "mag_ratios": None}
                for case in cases:
                    fam_res["cases"].append(_run_case(client, srv, fam, case, steps, cfg, repeat, digits, labels,
                                                      featnet, f_real, found, live, failures, fam_res, log,
                                                      PromptError, timing_runs, paired))
                results["families"][fam] = fam_res
    finally:
        if old_pp is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_pp
    results["seconds"] = round(time.time() - t_start, 1)
    return results


def _run_case(client, srv, fam, case, steps, cfg, repeat, digits, labels, featnet, f_real, found, live, failures,
              fam_res, log, PromptError, timing_runs: int = 3, paired: bool = True) -> dict:
    import torch

    from . import host_digits as hd
    from .data import features

    base = dict(digits=digits, repeat=repeat, steps=steps, cfg=cfg, sampler=case["sampler"],
                scheduler=case["scheduler"], denoise=case["denoise"], seed=0)
    if case["denoise"] < 1.0:
        base["init_image"] = INIT_IMAGE

    full_prompt = hd.digits_prompt(fam, prefix="fullref", **base)

    def timed(prompt: dict) -> tuple[dict, float, float]:
        c0 = server_cpu_seconds(srv)
        entry = client.run(with_counter(prompt, uuid.uuid4().hex), timeout=1800)
        return entry, hd.exec_seconds(entry), server_cpu_seconds(srv) - c0

    def sample(prefix: str, prompt: dict, runs: int = timing_runs) -> tuple[torch.Tensor, dict, float]:
        """The first run's output and entry, and the median host-reported time over `runs` runs (the
        counter's token makes every run execute from the loader on). With `paired`, a full-compute run
        precedes each run and the row's speed-ups are the medians of the per-pair ratios, so load from
        other processes that drifts during the bench hits both sides of each ratio alike."""
        times, cpu, walls, cpus, first = [], [], [], [], None
        for _ in range(runs):
            if paired:
                _, tf, cf = timed(full_prompt)
            entry, t, c = timed(prompt)
            times.append(t)
            cpu.append(c)
            if paired:
                walls.append(tf / t if t > 0 else float("nan"))
                cpus.append(cf / c if c > 0 else float("nan"))
            first = first or entry
        x = hd.decode_latent_file(client.output_files(first, "latents")[0])
        cpu_s[id(first)] = statistics.median(cpu)
        if paired:
            pair_ratios[id(first)] = (statistics.median(walls), statistics.median(cpus))
        return x, first, statistics.median(times)

    pair_ratios: dict[int, tuple[float, float]] = {}
    cpu_s: dict[int, float] = {}
    log(f"[bench-peers] {fam} {case['name']}")
    x_full, e_full, t_full0 = sample("full", hd.digits_prompt(fam, prefix="full", **base))
    counts_full = _count_line(e_full)
    cpu_full0 = cpu_s[id(e_full)]
    f_full = features(featnet, x_full).numpy()

    def evaluate(x: torch.Tensor) -> dict:
        return hd.sample_metrics(featnet, labels, x, x_full, f_full, f_real)

    rows: list[dict] = []
    for preset in PROCACHE_PRESETS[fam]:
        x, e, t = sample("pc", hd.digits_prompt(fam, prefix="pc", procache={"preset": preset}, **base))
        st = hd.parse_stats(hd.stats_text(e))
        rows.append({"method": "procache", "label": f"procache {preset}", "setting": preset,
                     "block_eval_fraction": st["block_eval_fraction"], "model_evals": st["model_evals"],
                     "seconds": t, "cpu_seconds": cpu_s[id(e)], "_entry": id(e), **evaluate(x)})
    for budget in (None, round(0.7 * steps), round(0.85 * steps)):
        sched = paper_schedule(fam, steps, budget)
        label = "procache paper-style" + (f" B={budget}" if budget else "")
        x, e, t = sample("pcp", hd.digits_prompt(fam, prefix="pcp", procache={"actions": sched}, **base))
        st = hd.parse_stats(hd.stats_text(e))
        rows.append({"method": "procache", "label": label, "setting": sched,
                     "block_eval_fraction": st["block_eval_fraction"], "model_evals": st["model_evals"],
                     "seconds": t, "cpu_seconds": cpu_s[id(e)], "_entry": id(e), **evaluate(x)})
    plain = hd.digits_prompt(fam, prefix="peer", **base)
    for p, _path, _src in found:
        if p.name in failures:
            rows.append(_blank_row(p, f"did not import on host 0.3.75: {failures[p.name]}"))
            continue
        if fam in p.unsupported or fam not in p.families:
            rows.append(_blank_row(p, p.unsupported.get(fam, f"does not support {fam}")))
            continue
        variants: list[tuple[str, list]] = [("", [])]
        if p.name == "MagCache":
            ratios = _mag_calibrate(client, srv, fam, base, plain, fam_res, log, PromptError)
            if ratios:
                variants.append((" (our ratios)", [("ProCacheBenchMagRatios",
                                                    {"ratios": ",".join(f"{v:.5f}" for v in ratios)})]))
        for suffix, extra in variants:
            for setting in p.sweep:
                label = f"{p.name.lower()}{suffix} " + " ".join(f"{k}={v}" for k, v in setting.items())
                try:
                    x, e, t = sample(p.name.lower(), with_peer(plain, p.node, p.inputs(fam, setting), extra))
                except PromptError as exc:
                    # the node refuses this model whatever its knob: one row for the sweep
                    rows.append(_blank_row(p, f"error: {str(exc)[:300]}", label=f"{p.name.lower()}{suffix} (sweep)",
                                           method=p.name.lower() + ("+ourratios" if suffix else "")))
                    log(f"    {label}: {str(exc)[:200]}")
                    break
                c = _count_line(e)
                frac = c["block_calls"] / counts_full["block_calls"] if c and counts_full else float("nan")
                note = ("ratios from MagCacheCalibration on this model and sampler" if suffix
                        else p.caveats.get(fam, ""))
                rows.append({"method": p.name.lower() + ("+ourratios" if suffix else ""), "label": label,
                             "setting": setting, "note": note,
                             "block_eval_fraction": frac, "model_evals": c and c["model_calls"],
                             "seconds": t, "cpu_seconds": cpu_s[id(e)], "_entry": id(e), **evaluate(x)})
    _, e_full1, t_full1 = sample("full2", hd.digits_prompt(fam, prefix="full2", **base))
    t_full = (t_full0 + t_full1) / 2
    cpu_full = (cpu_full0 + cpu_s[id(e_full1)]) / 2
    for r in rows:
        r["wall_speedup"] = t_full / r["seconds"] if r.get("seconds") else float("nan")
        r["cpu_speedup"] = cpu_full / r["cpu_seconds"] if r.get("cpu_seconds") else float("nan")
        key = r.pop("_entry", None)
        if key in pair_ratios:   # paired: medians of the per-pair ratios
            r["wall_speedup"], r["cpu_speedup"] = pair_ratios[key]
            r["timing"] = "paired"
    full_row = {"method": "full", "label": "full", "block_eval_fraction": 1.0,
                "model_evals": counts_full and counts_full["model_calls"], "seconds": t_full,
                "seconds_runs": [t_full0, t_full1], "cpu_seconds": cpu_full,
                "cpu_seconds_runs": [cpu_full0, cpu_s[id(e_full1)]], "wall_speedup": 1.0, "cpu_speedup": 1.0,
                **evaluate(x_full)}
    for r in [full_row] + rows:
        if r.get("psnr") is None:
            log(f"    {r['label']:<44s} {r.get('note')}")
            continue
        log(f"    {r['label']:<44s} blocks {r['block_eval_fraction']:.3f}  PSNR {r['psnr']:6.2f}  "
            f"SSIM {r['ssim']:.4f}  FD-full {r['fd_full']:8.3f}  acc {r['label_acc']:.3f}  "
            f"wall {r['wall_speedup']:.2f}x  cpu {r['cpu_speedup']:.2f}x")
    return {**case, "counts_full": counts_full, "rows": [full_row] + rows}


def paper_schedule(family: str, steps: int, budget: int | None = None) -> str:
    """host_quality's paper-style schedule, or the paper preset carried to `steps` with `budget` full steps."""
    from .host_quality import paper_schedule as paper

    if budget is None:
        return paper(family, steps)
    from procache_core.presets import load_preset

    from . import host_digits as hd

    sched = load_preset(ROOT / "schedules" / f"{hd.PAPER_PRESET[family]}.yaml").schedule.remap(steps, budget)
    return sched.to_string().replace("S", "C")


def _blank_row(p: Peer, note: str, label: str | None = None, setting: dict | None = None,
               method: str | None = None) -> dict:
    return {"method": method or p.name.lower(), "label": label or p.name.lower(), "setting": setting, "note": note,
            "block_eval_fraction": None, "psnr": None, "ssim": None, "fd_full": None, "fd_real": None,
            "label_acc": None, "seconds": None}


def _calibration_key(base: dict) -> str:
    """Sampler/scheduler, plus the denoise when below 1 (an img2img run calibrates its own steps)."""
    key = f"{base['sampler']}/{base['scheduler']}"
    return key if base.get("denoise", 1.0) >= 1.0 else f"{key} denoise {base['denoise']:g}"


def _mag_calibrate(client, srv, fam, base, plain, fam_res, log, PromptError) -> list[float] | None:
    """MagCacheCalibration on our model with this case's sampler; its printed ratios, with the leading 1.0
    MagCache's own tables start with (the first step has no previous residual)."""
    try:
        client.run(with_counter(with_peer(plain, "MagCacheCalibration", {"model_type": "flux_calibration"}),
                                uuid.uuid4().hex), timeout=1800)
    except PromptError as exc:
        log(f"    MagCache calibration failed: {str(exc)[:200]}")
        return None
    # the print sits in the host's block-buffered stdout, but its log interceptor keeps every write at once
    ratios = parse_mag_ratios(server_console(client))
    if ratios is None:
        log("    MagCache calibration printed no mag_ratios")
        return None
    ratios = [1.0] + ratios
    fam_res.setdefault("mag_ratios", {})
    fam_res["mag_ratios"] = {**(fam_res["mag_ratios"] or {}), _calibration_key(base): ratios}
    log(f"    MagCache calibration on our model: {len(ratios)} ratios, {ratios[:6]}...")
    return ratios


# --------------------------------------------------------------------------------------------- report

def _caveat(row: dict, family: str) -> str:
    """What the peer's spec says about running it on this family (e.g. coefficients fit to other weights)."""
    if row["method"].endswith("+ourratios"):
        return "ratios from MagCacheCalibration on this model and sampler"
    return next((p.caveats.get(family, "") for p in PEERS if p.name.lower() == row["method"]), "")


def markdown(results: dict, commit: str | None = None) -> str:
    from .common import md_table

    lines = ["# ProCache against peer caching packs (CPU, real ComfyUI server)", "",
             f"Generated by `make bench-peers PEERS=<folder>` (benchmarks/peers.py)"
             + (f" at commit `{commit}`" if commit else "") + f", {results.get('seconds')} s. "
             f"Trained digits models of the pack (`nodes/demo`), {results['steps']} steps, CFG {results['cfg']}, "
             f"{results['n_samples']} samples (digits 0-9, seed 0), {results.get('timing_runs', 1)} KSampler runs per row "
             "(images of the first, median times) on one server. "
             "*blocks* = block-evaluation ratio (ProCache Stats; peers: host block-module calls counted by "
             "forward pre-hooks / those of full compute), *speed-up* = 1 / blocks, *CPU* = full-compute CPU time of the "
             "server process (user + system, /proc) / the row's, *wall* = the same with the execution time the "
             "host reports ("
             + ("median over the runs of the ratio to a full-compute run just before each"
                if results.get("paired") else "mean of the full-compute medians before and after the other rows")
             + "); at this model "
             "size the sampler's and the server's per-step overhead is a large, noisy share of both (the machine is "
             "shared with other jobs), so the "
             "comparison is made at matched compute speed-up (ProCache's PSNR and FD-full interpolated linearly "
             "between its settings on their upper envelope). ProCache rows: its flux presets (quality, balanced, "
             "fast; picked from the dropdown, remapped to the sampler's steps) and the paper-style schedule.", "",
             "## Peers", ""]
    prow = []
    for name, info in results["peers"].items():
        prow.append([name, info.get("url") or "n/a", (info.get("commit") or "n/a")
                     + (" (modified)" if info.get("dirty") else ""), f"`{info['node']}`", info["knob"],
                     info.get("import_error") or "imports"])
    lines.append(md_table(["peer", "repository", "commit", "node", "knob", "on host 0.3.75"], prow))
    lines.append("")
    for s in results.get("skipped", []):
        lines.append(f"- {s}")
    if results.get("installed_deps"):
        lines.append(f"- peer requirements installed into `.host/peer-deps`: {', '.join(results['installed_deps'])}")
    lines.append("")
    for fam, fr in results["families"].items():
        lines += [f"## {fam}", ""]
        accs = [r["label_acc"] for c in fr["cases"] for r in c["rows"] if r["method"] == "full"]
        if accs and max(accs) < 0.9:
            lines += [f"**This {fam} model does not draw digits** (full-compute label accuracy {max(accs):.2f}; its "
                      "weights are being retrained): its rows measure how closely each cache follows full compute, "
                      "nothing more.", ""]
        for case in fr["cases"]:
            lines += [f"### {fam} — {case['name']}", ""]
            curve = procache_curve(case["rows"])
            dom = dominated(case["rows"])
            rows = []
            for r in case["rows"]:
                if r.get("psnr") is None:
                    rows.append([r["label"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "",
                                 r.get("note", "")])
                    continue
                m = matched(r, curve) if r["method"] not in ("full", "procache") else None
                vs = ""
                if m:
                    vs = {"procache": "ProCache", "peer": "peer", None: "n/a"}[m["winner"]]
                    vs += f" ({fmt_num(m['procache_psnr'])} dB)" if m["procache_psnr"] is not None else f" ({m['note']})"
                    if m["winner"] is None and m.get("note") == "metrics disagree":
                        vs += ", metrics disagree"
                rows.append([r["label"], fmt_num(r["block_eval_fraction"], 3), fmt_num(compute_speedup(r)),
                             fmt_num(r.get("cpu_speedup")), fmt_num(r["wall_speedup"]), fmt_num(r["psnr"]), fmt_num(r["ssim"], 4), fmt_num(r["fd_full"], 3),
                             fmt_num(r["fd_real"], 1), fmt_num(r["label_acc"], 2), vs, r.get("note") or _caveat(r, fam)
                             or (f"off ProCache's envelope: {dom[r['label']]} is faster and higher in PSNR"
                                 if r["label"] in dom else "")])
            lines.append(md_table(["method", "blocks", "speed-up", "CPU", "wall", "PSNR", "SSIM", "FD-full", "FD-real",
                                   "label acc", "better at matched speed-up (ProCache PSNR there)", "note"], rows))
            lines.append("")
        if fr.get("mag_ratios"):
            for k, v in fr["mag_ratios"].items():
                lines.append(f"MagCache calibration on our {fam} model ({k}): `{', '.join(f'{x:.3f}' for x in v)}`")
            lines.append("")
    lines += summary_lines(results)
    return "\n".join(lines) + "\n"


def summary_lines(results: dict, level: str = "##") -> list[str]:
    """Per family, case and peer: the peer's best quality, the speed-up ProCache reaches there, and losses."""
    from .common import md_table

    rows = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            methods = []
            for r in case["rows"]:
                if r["method"] not in ("full", "procache") and r["method"] not in methods:
                    methods.append(r["method"])
            for m in methods:
                notes = {r.get("note") for r in case["rows"] if r["method"] == m and r.get("psnr") is None}
                s = peer_summary([r for r in case["rows"] if r.get("psnr") is not None], m)
                if s is None or "best_psnr" not in s:
                    why = "; ".join(sorted(n for n in notes if n)) or "no row saved compute"
                    rows.append([fam, case["name"], m, "n/a", "n/a", "n/a", why])
                    continue
                rows.append([fam, case["name"], m,
                             f"{s['best_label']}: {fmt_num(s['best_psnr'])} dB at {fmt_num(s['best_speedup'])}x "
                             f"(CPU {fmt_num(s['best_cpu'])}x, wall {fmt_num(s['best_wall'])}x)",
                             fmt_num(s["procache_speedup_at_best"]) + ("x" if s["procache_speedup_at_best"] else
                                                                     " (no ProCache budget reaches it)"),
                             f"{len(s['procache_wins'])} / {len(s['peer_wins'])} of {s['rows']}",
                             "; ".join(s["peer_wins"]) or "none"])
    if not rows:
        return []
    return [f"{level} Summary: speed-up at each peer's best quality", "",
            f"The peer's best row is its highest PSNR among its rows with a compute speed-up of at least "
            f"{MIN_USEFUL_SPEEDUP}x (a setting that saves less is not one a user picks for speed; among all rows "
            "that skip any compute when none reaches it); ProCache's speed-up at that "
            "PSNR is read off its curve (linear between its settings on their upper envelope: a ProCache setting "
            "beaten by a faster one on PSNR is left out of the curve and marked in the tables). *wins* counts the peer's rows where ProCache, "
            "interpolated at the same compute speed-up, has higher PSNR and lower FD-full (ProCache) or both worse "
            "(peer).", "",
            md_table(["model", "case", "peer", "peer's best quality", "ProCache speed-up at that PSNR",
                      "wins ProCache / peer", "peer rows better than ProCache"], rows), ""]


def cpu_efficiency(results: dict) -> dict[str, float]:
    """Per method: median of CPU speed-up / compute speed-up over its rows that skip something."""
    vals: dict[str, list[float]] = {}
    for fr in results["families"].values():
        for case in fr["cases"]:
            for r in case["rows"]:
                if r.get("psnr") is None or r["method"] == "full" or r["block_eval_fraction"] >= 1.0 - 1e-9:
                    continue
                if r.get("cpu_speedup") and not math.isnan(r["cpu_speedup"]):
                    vals.setdefault(r["method"], []).append(r["cpu_speedup"] / compute_speedup(r))
    return {k: statistics.median(v) for k, v in vals.items()}


def losses_lines(results: dict) -> list[str]:
    """Where ProCache loses, read off the rows: peer rows better at matched speed-up, peer rows where the
    two metrics disagree, and ProCache settings beaten by a faster ProCache setting."""
    out = []
    for fam, fr in results["families"].items():
        for case in fr["cases"]:
            rows = [r for r in case["rows"] if r.get("psnr") is not None]
            curve = procache_curve(rows)
            where = f"{fam} {case['name']}"
            for r in rows:
                if r["method"] in ("full", "procache"):
                    continue
                m = matched(r, curve)
                if m["winner"] == "peer":
                    out.append(f"{where}: **{r['label']}** ({fmt_num(r['psnr'])} dB, FD-full {fmt_num(r['fd_full'], 3)} at "
                               f"{fmt_num(m['speedup'])}x) beats ProCache there ({fmt_num(m['procache_psnr'])} dB, "
                               f"FD-full {fmt_num(m['procache_fd_full'], 3)})" if m["procache_psnr"] is not None else
                               f"{where}: **{r['label']}** ({fmt_num(r['psnr'])} dB at {fmt_num(m['speedup'])}x) is faster "
                               "and better than ProCache's fastest setting")
                elif m.get("note") == "metrics disagree":
                    out.append(f"{where}: {r['label']} has "
                               + ("the lower FD-full" if r["fd_full"] < m["procache_fd_full"] else "the higher PSNR")
                               + f" at {fmt_num(m['speedup'])}x ({fmt_num(r['psnr'])} dB / {fmt_num(r['fd_full'], 3)} against "
                               f"ProCache's {fmt_num(m['procache_psnr'])} dB / {fmt_num(m['procache_fd_full'], 3)})")
            for label, better in dominated(rows).items():
                out.append(f"{where}: ProCache's own **{label}** is beaten by its {better} (faster and higher PSNR)")
    eff = cpu_efficiency(results)
    peers_eff = {k: v for k, v in eff.items() if k != "procache"}
    if "procache" in eff and peers_eff and eff["procache"] < min(peers_eff.values()):
        out.append(f"time: ProCache turns saved block evaluations into saved CPU time least well (median CPU / compute "
                   f"speed-up {eff['procache']:.2f} against {min(peers_eff.values()):.2f}-"
                   f"{max(peers_eff.values()):.2f} for the peers): its per-step work outside the blocks costs more "
                   "on this small model")
    if not out:
        return ["### Where ProCache loses", "", "Nowhere in these rows.", ""]
    return ["### Where ProCache loses", ""] + [f"- {o}" for o in out] + [""]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(fam, c) for fam, fr in results["families"].items() for c in fr["cases"]]
    if not panels:
        return
    cols = min(2, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.0 * cols, 4.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (fam, case) in zip(axes.flat, panels):
        groups: dict[str, list] = {}
        for r in case["rows"]:
            if r.get("psnr") is None or r["method"] == "full" or r["block_eval_fraction"] >= 1.0 - 1e-9:
                continue   # settings that skipped nothing are full compute (PSNR capped at 100)
            key = r["method"]
            groups.setdefault(key, []).append((compute_speedup(r), r["psnr"]))
        for key, pts in groups.items():
            pts.sort()
            style = "o-" if key == "procache" else ".--"
            ax.plot([a for a, _ in pts], [b for _, b in pts], style, label=key, lw=2 if key == "procache" else 1)
        ax.set_title(f"{fam} {case['name']} (settings that skip something)")
        ax.set_xlabel("compute speed-up (1 / block-evaluation ratio)")
        ax.set_ylabel("PSNR to full compute (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_START, README_END = block_marks("peers")


def readme_block(results: dict) -> str:
    body = ["## Peers side by side (`make bench-peers`)", "",
            "TeaCache, First Block Cache (Comfy-WaveSpeed) and MagCache on the same trained digits model, through "
            "the same server, in the same run; full tables, sources (repository and commit of each peer) and "
            "notes in [peers_cpu.md](peers_cpu.md).", "", "![peers](peers_cpu.png)", ""]
    body += summary_lines(results, "###")
    body += losses_lines(results)
    notes = []
    if "pixart" not in results["families"]:
        notes.append("PixArt is not in these numbers: the PixArt digits weights are being retrained. The script "
                     "runs it with `--families flux,pixart`; TeaCache and MagCache have no PixArt model type and "
                     "First Block Cache refuses the host's PixArtMS (\"No double blocks found\"), so only ProCache "
                     "has PixArt rows there.")
    notes.append("TeaCache's rescaling polynomial and MagCache's built-in ratios are fit to the released FLUX.1 "
                 "weights, not to this model, and neither cache node takes other values as an input. MagCache's "
                 "calibration node prints ratios for the model at hand (a user would paste them into its source); "
                 "the bench feeds them back through a bench-only node (rows *magcache+ourratios*). TeaCache ships no "
                 "calibration node for ComfyUI. First Block Cache needs no calibration.")
    eff = cpu_efficiency(results)
    if eff:
        notes.append("Timings come from a shared 2-core machine running other jobs, so CPU and wall speed-ups are "
                     "noisy; the comparison uses compute speed-up. Median CPU speed-up / compute speed-up over the "
                     "rows that skip something: " + ", ".join(f"{k} {v:.2f}" for k, v in eff.items())
                     + " (below 1: per-step overhead of the sampler and server that no cache removes at this size).")
    body += [f"- {n}" for n in notes] + [""]
    return "\n".join([README_START] + body + [README_END])


def update_readme(results: dict, readme: Path = RESULTS / "README.md") -> None:
    write_readme_block(readme, README_START, README_END, readme_block(results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="", help="folder holding the peer checkouts")
    ap.add_argument("--families", default="flux", help="comma-separated: flux,pixart")
    ap.add_argument("--cases", default=",".join(c["name"] for c in CASES),
                    help="comma-separated case names (default: all four, as in the in-host quality bench)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="samples per digit (10 digits)")
    ap.add_argument("--timing-runs", type=int, default=3, help="runs per row; the median time counts")
    ap.add_argument("--unpaired", action="store_true",
                    help="time full compute only before and after a case, not before every run (half the time)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true", help="rewrite the tables and plot from raw/peers_cpu.json")
    args = ap.parse_args(argv)
    raw = args.out / "raw" / "peers_cpu.json"
    if args.report_only:
        res = json.loads(raw.read_text())
        commit = res.get("commit")
    else:
        peers_dir = Path(args.peers) if args.peers else None
        found, skipped = discover(peers_dir)
        if not found:
            print("\n".join(skipped + ["[bench-peers] no peer checkout found: nothing to compare, results left as "
                                       "they are (clone the peers into a folder and pass PEERS=<folder>)"]))
            return 0
        cases = [c for c in CASES if c["name"] in args.cases.split(",")]
        res = run(peers_dir, families=tuple(args.families.split(",")), cases=cases, steps=args.steps,
                  repeat=args.repeat, timing_runs=args.timing_runs, paired=not args.unpaired)
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        res["commit"] = commit + ("+dirty" if dirty else "")
        commit = res["commit"]
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(res, indent=1, default=str))
    (args.out / "peers_cpu.md").write_text(markdown(res, commit))
    plot(res, args.out / "peers_cpu.png")
    if args.out == RESULTS:
        update_readme(res)
    print(markdown(res, commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
