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

Every row is KSampler runs of the digits model (seed 0, digits 0-9) with the same prompt, latent and
sampler, measured like the in-host quality bench (benchmarks/host_quality.py, whose metrics and prompt
builder this reuses): CPU and wall speed-up (server CPU time and host-reported execution time against a
full-compute run just before each of the row's runs; medians, every run kept for the spread),
block-evaluation ratio (ProCache Stats for ProCache; for the peers the calls of the host's block modules
counted by forward pre-hooks, tests/host_nodes/bench_block_counts.py), PSNR / SSIM to full compute,
Fréchet distance to the full-compute samples and to real digits, and label accuracy. Each peer runs its
sweep and its README's documented FLUX setting (peer_specs.Peer.documented). The report compares rows at
matched measured CPU speed-up (block ratio kept beside it, labelled as such).

This module runs the bench and writes raw/peers_cpu.json; the comparison, tables, plot and README block
are benchmarks/peers_report.py (``--report-only`` here, or ``python -m benchmarks.peers_report``, rewrites
them from that JSON without running anything); the compared packs are benchmarks/peer_specs.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .common import RESULTS, code_commit
from .peer_specs import PEERS, Peer
from .peers_report import RAW_NAME, STEP_LABEL, report_from_raw, write_report

ROOT = Path(__file__).resolve().parents[1]
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
# Selective Compute Settings of the step-reuse rows: selective steps off (every reused step skips the model
# call) and forecasting light, the pair the step-cost bench measured best (benchmarks/results/step_cost_cpu.md)
STEP_FORECAST = {"enabled": False, "depth_fraction": 1.0, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 0.0,
                 "w_output_norm": 0.0, "w_spatial": 0.0, "forecast": "light (order 1)"}
# shares of the steps computed in full by the light step-reuse rows (the paper schedule carried to that budget)
GENTLE_FULL_SHARES = (0.7, 0.85, 0.9, 0.95)


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


class RowTimings:
    """The timed runs of each sampled row of one case, under a key of their own.

    Keyed by a sequence number, never by ``id()`` of the row's history entry: the entry is freed once its
    row is built, and a later entry at the same address would take over the earlier row's times (a
    2026-12-04 run gave a block-reuse preset the 0.96x of a setting that skipped nothing)."""

    def __init__(self) -> None:
        self._rows: list[tuple[list[float], list[float], tuple | None]] = []

    def add(self, times: list[float], cpu: list[float], walls: list[float] | None = None,
            cpus: list[float] | None = None) -> int:
        """One row's run times and process CPU seconds, and (paired timing) its per-pair speed-ups."""
        pairs = None
        if walls is not None and cpus is not None:
            pairs = ((statistics.median(walls), statistics.median(cpus)), (list(walls), list(cpus)))
        self._rows.append((list(times), list(cpu), pairs))
        return len(self._rows) - 1

    def cpu(self, key: int) -> float:
        return statistics.median(self._rows[key][1])

    def runs(self, key: int) -> tuple[list[float], list[float]]:
        return self._rows[key][0], self._rows[key][1]

    def pairs(self, key: int) -> tuple | None:
        """((median wall, median CPU speed-up), (every wall ratio, every CPU ratio)), None unpaired."""
        return self._rows[key][2]


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

    def sample(prefix: str, prompt: dict, runs: int = timing_runs) -> tuple[torch.Tensor, dict, float, int]:
        """The first run's output and entry, the median host-reported time over `runs` runs (the counter's
        token makes every run execute from the loader on) and the row's key in ``timings``. With `paired`, a
        full-compute run precedes each run and the row's speed-ups are the medians of the per-pair ratios, so
        load from other processes that drifts during the bench hits both sides of each ratio alike. Every
        run's time (and, paired, every pair's ratio) is kept so the report can show the spread."""
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
        key = timings.add(times, cpu, walls if paired else None, cpus if paired else None)
        return x, first, statistics.median(times), key

    timings = RowTimings()
    log(f"[bench-peers] {fam} {case['name']}")
    x_full, e_full, t_full0, k_full = sample("full", hd.digits_prompt(fam, prefix="full", **base))
    counts_full = _count_line(e_full)
    cpu_full0 = timings.cpu(k_full)
    f_full = features(featnet, x_full).numpy()

    def evaluate(x: torch.Tensor) -> dict:
        return hd.sample_metrics(featnet, labels, x, x_full, f_full, f_real)

    rows: list[dict] = []

    def procache_row(prefix: str, label: str, setting: str, procache: dict) -> None:
        x, e, t, key = sample(prefix, hd.digits_prompt(fam, prefix=prefix, procache=procache, **base))
        st = hd.parse_stats(hd.stats_text(e))
        rows.append({"method": "procache", "label": label, "setting": setting,
                     "block_eval_fraction": st["block_eval_fraction"], "model_evals": st["model_evals"],
                     "seconds": t, "cpu_seconds": timings.cpu(key), "_timing_key": key, **evaluate(x)})

    for preset in PROCACHE_PRESETS[fam]:
        procache_row("pc", f"procache {preset}", preset, {"preset": preset})
    for budget in (None, round(0.7 * steps), round(0.85 * steps)):
        sched = paper_schedule(fam, steps, budget)
        procache_row("pcp", "procache paper-style" + (f" B={budget}" if budget else ""), sched, {"actions": sched})
    # the same presets with step reuse (cached steps skip the model call) and forecasting light
    for preset in PROCACHE_PRESETS[fam]:
        procache_row("pcs", f"procache {preset} {STEP_LABEL}", preset,
                     {"preset": preset, "apply": {"reuse": "step"}, "selective": STEP_FORECAST})
    # and the light end of the curve (more full steps), down to one cached step, where the peers' mildest
    # settings sit (MagCache at its lowest thresholds skips one step of 20)
    for budget in sorted({round(f * steps) for f in GENTLE_FULL_SHARES} - {steps}):
        sched = paper_schedule(fam, steps, budget)
        procache_row("pcq", f"procache paper-style B={budget} {STEP_LABEL}", sched,
                     {"actions": sched, "apply": {"reuse": "step"}, "selective": STEP_FORECAST})
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
            for setting in p.settings(fam):
                documented = p.is_documented(fam, setting)
                label = (f"{p.name.lower()}{suffix} " + " ".join(f"{k}={v}" for k, v in setting.items())
                         + (" (documented setting)" if documented else ""))
                try:
                    x, e, t, key = sample(p.name.lower(), with_peer(plain, p.node, p.inputs(fam, setting), extra))
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
                             "setting": setting, "note": note, "documented": documented,
                             "block_eval_fraction": frac, "model_evals": c and c["model_calls"],
                             "seconds": t, "cpu_seconds": timings.cpu(key), "_timing_key": key, **evaluate(x)})
    _, _, t_full1, k_full1 = sample("full2", hd.digits_prompt(fam, prefix="full2", **base))
    cpu_full1 = timings.cpu(k_full1)
    t_full = (t_full0 + t_full1) / 2
    cpu_full = (cpu_full0 + cpu_full1) / 2
    for r in rows:
        r["wall_speedup"] = t_full / r["seconds"] if r.get("seconds") else float("nan")
        r["cpu_speedup"] = cpu_full / r["cpu_seconds"] if r.get("cpu_seconds") else float("nan")
        key = r.pop("_timing_key", None)
        if key is None:
            continue
        r["seconds_runs"], r["cpu_seconds_runs"] = timings.runs(key)
        r["wall_speedup_runs"] = [t_full / t if t > 0 else float("nan") for t in r["seconds_runs"]]
        r["cpu_speedup_runs"] = [cpu_full / c if c > 0 else float("nan") for c in r["cpu_seconds_runs"]]
        paired_ratios = timings.pairs(key)
        if paired_ratios is not None:   # paired: medians of the per-pair ratios
            (r["wall_speedup"], r["cpu_speedup"]), (r["wall_speedup_runs"], r["cpu_speedup_runs"]) = paired_ratios
            r["timing"] = "paired"
    full_row = {"method": "full", "label": "full", "block_eval_fraction": 1.0,
                "model_evals": counts_full and counts_full["model_calls"], "seconds": t_full,
                "seconds_runs": [t_full0, t_full1], "cpu_seconds": cpu_full,
                "cpu_seconds_runs": [cpu_full0, cpu_full1], "wall_speedup": 1.0, "cpu_speedup": 1.0,
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="", help="folder holding the peer checkouts")
    ap.add_argument("--families", default="flux", help="comma-separated: flux,pixart")
    ap.add_argument("--cases", default=",".join(c["name"] for c in CASES),
                    help="comma-separated case names (default: all four, as in the in-host quality bench)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="samples per digit (10 digits)")
    ap.add_argument("--timing-runs", type=int, default=3,
                    help="runs per row; the median counts and the report shows the min-max over them")
    ap.add_argument("--unpaired", action="store_true",
                    help="time full compute only before and after a case, not before every run (half the time)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true", help="rewrite the tables and plot from raw/peers_cpu.json")
    args = ap.parse_args(argv)
    if args.report_only:
        print(report_from_raw(args.out))
        return 0
    peers_dir = Path(args.peers) if args.peers else None
    found, skipped = discover(peers_dir)
    if not found:
        print("\n".join(skipped + ["[bench-peers] no peer checkout found: nothing to compare, results left as "
                                   "they are (clone the peers into a folder and pass PEERS=<folder>)"]))
        return 0
    cases = [c for c in CASES if c["name"] in args.cases.split(",")]
    # the commit the numbers are measured at: read before the run, so a commit made meanwhile is not named
    commit = code_commit() or "unknown"
    res = run(peers_dir, families=tuple(args.families.split(",")), cases=cases, steps=args.steps,
              repeat=args.repeat, timing_runs=args.timing_runs, paired=not args.unpaired)
    res["commit"] = commit
    res["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    raw = args.out / "raw" / RAW_NAME
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(res, indent=1, default=str))
    print(write_report(res, args.out, res["commit"]))
    return 0

if __name__ == "__main__":
    sys.exit(main())
