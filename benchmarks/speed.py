"""Speed bench: wall-clock speed-up against full compute measured in the same process, interleaved.

Two architectures, both with random weights (speed does not depend on training):
- PixArt-α: the host's own `comfy.ldm.pixart.pixartms.PixArtMS` (hidden 1152, 16 heads), loaded through
  ComfyUI's `load_diffusion_model_state_dict` and sampled with ComfyUI's own sampling path
  (`comfy.sample.sample`, dpmpp_2m, CFG 4.5 with a random 120x4096 "T5" prompt). EasyCache and LazyCache
  are the host's nodes applied to that ModelPatcher; ProCache is the pack's ProCacheApply node.
- DiT-XL/2: `procache_core.reference_dit` (hidden 1152, 16 heads, patch 2), DDIM CFG 1.5; EasyCache and
  LazyCache run the host's decision code through `benchmarks.hostcache`.

Methods: full; uniform (FORA-style: same number of full steps as the ProCache schedule, evenly spread);
EasyCache and LazyCache at the host's default settings (threshold 0.2, start 0.15, end 0.95); ProCache
schedule only (selective steps treated as cached); ProCache + selective. The ProCache schedules are the
paper presets (schedules/*-paper.yaml), remapped by the pack when T differs.

Reported per method: median wall time of `repeats` interleaved runs, wall speed-up (full / method),
block-evaluation ratio, ideal speed-up (1 / estimated FLOPs fraction of the blocks), efficiency
(wall speed-up / ideal speed-up; overhead = 1 - efficiency) and extra memory (cache bytes held; on CUDA
also the increase of torch.cuda.max_memory_allocated over full compute).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .common import interleaved, median

ROOT = Path(__file__).resolve().parents[1]
DIT_PRESET = "dit-xl2-ddim50-paper"
PIXART_PRESET = "pixart-alpha-dpm20-paper"
# the paper schedule with forecasting on: block reuse forecasting every reused branch at order 2, and step
# reuse (a cached step skips the model) forecasting the model output at order 1 (the peers bench's setting)
FORECAST = "procache+forecast"
STEP_FORECAST = "procache step+forecast"
# The paper schedules as written in docs (used if the preset files are not there).
PAPER_FALLBACK = {
    DIT_PRESET: "FCSC" * 6 + "FCS" * 4 + "FC" * 7,
    PIXART_PRESET: "FFSCFSCFSCFSCFSCFSCF",
}


def paper_schedule(name: str, T: int):
    """The paper preset's schedule (with its S steps), remapped to T steps when needed."""
    from procache_core.schedule import Schedule

    sched = None
    try:
        from procache_core import presets

        path = ROOT / "schedules" / f"{name}.yaml"
        loader = getattr(presets, "load_preset", None) or getattr(presets, "load", None)
        if loader is not None and path.exists():
            sched = loader(path).schedule
    except Exception:  # noqa: BLE001 - fall back to the documented string
        sched = None
    if sched is None:
        sched = Schedule.from_string(PAPER_FALLBACK[name])
    if len(sched) != T:
        sched = sched.remap(T)
    return sched


def uniform_like(sched) -> str:
    from .quality import uniform_string

    return uniform_string(len(sched), sched.counts()["full"])


def _cuda_mem_begin(device: str) -> int:
    if device != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _cuda_mem_peak(device: str, base: int) -> int:
    if device != "cuda":
        return 0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# -- DiT-XL/2 (reference model) -------------------------------------------------------------------

def dit_case(T: int, depth: int, latent: int, batch: int, repeats: int, device: str, log=print,
             seed: int = 0, width: int = 1152, heads: int = 16,
             methods: tuple[str, ...] | None = None, warmup_T: int | None = None) -> dict[str, Any]:
    """`methods`: a subset of the method names to time (default: all; "full" is always run).
    `warmup_T`: steps of the untimed full-compute warm-up run (default T)."""
    from procache_core.reference_dit import DiT_XL_2

    from .quality import Method, sample

    torch.manual_seed(seed)
    model = DiT_XL_2(depth=depth, input_size=latent, in_channels=4, hidden_size=width, num_heads=heads,
                     zero_init=False).to(device).eval()
    sched = paper_schedule(DIT_PRESET, T)
    s_str = sched.to_string()
    all_methods = {
        "full": Method("full", "full"),
        "uniform": Method("uniform", "uniform", schedule=uniform_like(sched)),
        "easycache": Method("easycache", "easycache", threshold=0.2),
        "lazycache": Method("lazycache", "lazycache", threshold=0.2),
        "procache": Method("procache", "procache", schedule=s_str, selective=False),
        "procache+sel": Method("procache+sel", "procache+sel", schedule=s_str, selective=True),
        FORECAST: Method(FORECAST, FORECAST, schedule=s_str, selective=False, forecast=2),
        STEP_FORECAST: Method(STEP_FORECAST, STEP_FORECAST, schedule=s_str, selective=False, forecast=1, reuse="step"),
    }
    methods = _subset(all_methods, methods)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    labels = (torch.arange(batch) % 1000).to(device)
    acct: dict[str, dict] = {}
    mem: dict[str, int] = {}
    steps_log: dict[str, list] = {}

    def run(name: str, steps: int = T):
        base = _cuda_mem_begin(device)
        log_ = steps_log.setdefault(name, []) if steps == T else None
        _, a = sample(model, noise, labels, steps, methods[name], step_log=log_)
        mem[name] = max(mem.get(name, 0), _cuda_mem_peak(device, base))
        acct[name] = a

    log(f"  DiT-XL/2 arch depth={depth} width={width} latent={latent} batch={batch} T={T}: warm-up")
    run("full", min(T, warmup_T or T))  # warm-up (allocator, kernels); accounting comes from the timed runs
    times, cpu = interleaved(list(methods), run, repeats, device, log=log)
    arch = "DiT-XL/2" if width == 1152 else f"DiT (width {width})"
    return _summarise(arch, T, depth, f"{latent * 8}px ({(latent // 2) ** 2} tokens), batch {batch} (x2 with CFG)",
                      times, cpu, device, acct, mem, {"uniform": all_methods["uniform"].schedule,
                                        "procache (S run as C)": sched.with_selective(False).to_string(),
                                        "procache+sel": s_str}, steps_log)


# -- PixArt-α (host model, host sampling path) ----------------------------------------------------

def _host():
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host(cpu=not torch.cuda.is_available())


def build_pixart(depth: int, seed: int = 1):
    """Random-weight PixArt-α (host class, full width) as a ComfyUI ModelPatcher."""
    _host()
    import comfy.sd
    from comfy.ldm.pixart.pixartms import PixArtMS

    import make_tiny_models as mtm

    m = PixArtMS(depth=depth, hidden_size=1152, num_heads=16, patch_size=2, in_channels=4, pred_sigma=True,
                 micro_condition=True, model_max_length=120, caption_channels=4096, operations=torch.nn)
    mtm._init_(m, seed)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    del m
    return comfy.sd.load_diffusion_model_state_dict(sd)


def load_pack():
    """Imports the repository as a package (the host imports custom nodes under their folder name;
    the pack's modules use relative imports), so the real ProCache nodes can patch a ModelPatcher."""
    import importlib.util

    name = "procache_pack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def procache_patch(mp, schedule: str, selective: bool, forecast: int = 0, reuse: str = "blocks"):
    """The pack's ProCacheApply node (the real user path) with a preset holding `schedule`.
    selective=False turns S steps into cached steps (schedule only); `forecast` is the reused steps'
    forecast order and `reuse` the node's reuse input ("blocks" or "step")."""
    from types import SimpleNamespace

    load_pack()
    from procache_pack.nodes.apply import ProCacheApply
    from procache_pack.procache_core.schedule import Schedule
    from procache_pack.procache_core.settings import SelectiveSettings

    sel = SelectiveSettings(enabled=selective, forecast=forecast)
    preset = SimpleNamespace(name="bench", schedule=Schedule.from_string(schedule), family="pixart",
                             model="pixart-alpha", selective=sel, provenance={"source": "benchmarks"}, version=1)
    out = ProCacheApply.execute(mp, preset, sel, reuse=reuse)
    return out.args[0] if hasattr(out, "args") else out[0]


def procache_last_stats(patched) -> dict | None:
    load_pack()
    from procache_pack.nodes.runtime_bridge import config_of

    cfg = config_of(patched)
    return None if cfg is None else cfg.log.last_stats


def pixart_case(T: int, depth: int, latent_hw: tuple[int, int], repeats: int, device: str, log=print,
                seed: int = 0, procache_fn: Callable | None = None,
                methods: tuple[str, ...] | None = None, warmup_T: int | None = None) -> dict[str, Any]:
    _host()
    import comfy.sample
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    from procache_core.schedule import Schedule

    mp = build_pixart(depth)
    sched = paper_schedule(PIXART_PRESET, T)
    patch = procache_fn or procache_patch
    uni = Schedule.from_string(uniform_like(sched))
    makers = {
        "full": lambda: mp,
        "uniform": lambda: patch(mp, uni.to_string(), False),
        "easycache": lambda: EasyCacheNode.execute(mp, 0.2, 0.15, 0.95, False).args[0],
        "lazycache": lambda: LazyCacheNode.execute(mp, 0.2, 0.15, 0.95, False).args[0],
        "procache": lambda: patch(mp, sched.to_string(), False),
        "procache+sel": lambda: patch(mp, sched.to_string(), True),
        FORECAST: lambda: patch(mp, sched.to_string(), False, forecast=2),
        STEP_FORECAST: lambda: patch(mp, sched.to_string(), False, forecast=1, reuse="step"),
    }
    models = {k: f() for k, f in _subset(makers, methods).items()}
    h, w = latent_hw
    g = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, 120, 4096, generator=g) * 0.5, {}]]
    neg = [[torch.zeros(1, 120, 4096), {}]]
    latent = torch.zeros(1, 4, h, w)
    noise = torch.randn(1, 4, h, w, generator=g)
    dm = mp.model.diffusion_model
    calls = {"n": 0, "t0": 0.0, "durations": []}

    def _start(*_):
        calls["t0"] = time.perf_counter()

    def _end(*_):
        calls["n"] += 1
        if device == "cuda":
            torch.cuda.synchronize()
        calls["durations"].append(time.perf_counter() - calls["t0"])

    hooks = [dm.x_embedder.register_forward_pre_hook(_start), dm.final_layer.register_forward_hook(_end)]
    steps_log: dict[str, list] = {}
    acct: dict[str, dict] = {}
    mem: dict[str, int] = {}

    def run(name: str, steps: int = T):
        calls["n"] = 0
        calls["durations"] = []
        base = _cuda_mem_begin(device)
        comfy.sample.sample(models[name], noise, steps, 4.5, "dpmpp_2m", "normal", pos, neg, latent, seed=seed,
                            disable_pbar=True)
        mem[name] = max(mem.get(name, 0), _cuda_mem_peak(device, base))
        a = {"model_calls": calls["n"]}
        # one batched CFG call per step (dpmpp_2m): label each call with its scheduled action
        plan = {"full": "F" * T, "uniform": uni.to_string(), "procache": sched.with_selective(False).to_string(),
                FORECAST: sched.with_selective(False).to_string(), "procache+sel": sched.to_string()}.get(name)
        if steps == T and plan is not None and len(calls["durations"]) == T:
            steps_log.setdefault(name, []).extend(zip(plan, calls["durations"]))
        elif steps == T and name == STEP_FORECAST:  # the model runs on the computed steps only
            ran = [a for a in sched.with_selective(False).to_string() if a != "C"]
            if len(calls["durations"]) == len(ran):
                steps_log.setdefault(name, []).extend(zip(ran, calls["durations"]))
        st = procache_last_stats(models[name]) if name.startswith(("uniform", "procache")) else None
        if st is not None:
            a.update({k: st[k] for k in ("block_eval_fraction", "flops_fraction", "peak_cache_bytes",
                                          "steps_full", "steps_selective", "steps_cached")})
        acct[name] = a  # accounting of the latest run (deterministic: the same for every run)

    try:
        log(f"  PixArt-α arch depth={depth} latent={h}x{w} T={T}: warm-up")
        run("full", min(T, warmup_T or T))  # warm-up (allocator, kernels)
        times, cpu = interleaved(list(models), run, repeats, device, log=log)
        full_calls = acct["full"]["model_calls"]
        for name in [n for n in ("easycache", "lazycache", "full") if n in models]:
            frac = acct[name]["model_calls"] / full_calls
            acct[name].update({"block_eval_fraction": frac, "flops_fraction": frac,
                               "steps_full": round(frac * T), "steps_selective": 0,
                               "steps_cached": T - round(frac * T), "peak_cache_bytes": _easycache_bytes(name, noise)})
        for name in [n for n in ("uniform", "procache", "procache+sel", FORECAST, STEP_FORECAST) if n in models]:
            if "block_eval_fraction" not in acct[name]:  # no stats exposed: derive from the schedule
                s = uni if name == "uniform" else sched
                c = s.counts()
                acct[name].update({"block_eval_fraction": c["full"] / T, "flops_fraction": c["full"] / T,
                                   "steps_full": c["full"], "steps_selective": c.get("selective", 0),
                                   "steps_cached": c.get("cached", 0), "peak_cache_bytes": 0, "stats": "schedule"})
    finally:
        for hk in hooks:
            hk.remove()
    return _summarise("PixArt-α", T, depth, f"latent {h}x{w} ({(h // 2) * (w // 2)} tokens), batch 1 (x2 with CFG)",
                      times, cpu, device, acct, mem, {"uniform": uni.to_string(),
                                        "procache (S run as C)": sched.with_selective(False).to_string(),
                                        "procache+sel": sched.to_string()}, steps_log)


def _subset(d: dict, names: tuple[str, ...] | None) -> dict:
    if not names:
        return d
    unknown = set(names) - set(d)
    if unknown:
        raise ValueError(f"unknown speed methods {sorted(unknown)}; known: {list(d)}")
    return {k: v for k, v in d.items() if k == "full" or k in names}


def _step_medians(log: list) -> dict[str, float]:
    """Median seconds of one model evaluation per scheduled action ("F", "C", "S") over the timed runs."""
    by: dict[str, list[float]] = {}
    for action, sec in log:
        by.setdefault(action, []).append(sec)
    return {a: median(v) for a, v in sorted(by.items())}


def _easycache_bytes(name: str, noise: torch.Tensor) -> int:
    # EasyCache keeps one output-minus-input diff per CFG chunk plus subsampled copies; LazyCache one diff.
    if name == "full":
        return 0
    n = noise.numel() * noise.element_size()
    return 2 * n if name == "easycache" else n


# -- summary --------------------------------------------------------------------------------------

def _summarise(arch: str, T: int, depth: int, shape: str, times: dict[str, list[float]],
               cpu: dict[str, list[float]], device: str, acct: dict, mem: dict, schedules: dict,
               steps_log: dict[str, list] | None = None) -> dict[str, Any]:
    t_full = median(times["full"])
    c_full = median(cpu["full"])
    rows = []
    for name, ts in times.items():
        a = acct[name]
        t = median(ts)
        wall = t_full / t
        cpu_speedup = c_full / median(cpu[name]) if device == "cpu" else None
        ideal = 1.0 / a["flops_fraction"] if a["flops_fraction"] else float("inf")
        rows.append({
            "method": name, "median_s": t, "runs_s": [round(x, 3) for x in ts], "wall_speedup": wall,
            "cpu_s": median(cpu[name]), "cpu_runs_s": [round(x, 3) for x in cpu[name]], "cpu_speedup": cpu_speedup,
            "cpu_efficiency": None if cpu_speedup is None else cpu_speedup / ideal,
            "block_eval_fraction": a["block_eval_fraction"], "flops_fraction": a["flops_fraction"],
            "ideal_speedup": ideal, "efficiency": wall / ideal, "overhead": 1.0 - wall / ideal,
            "steps": f"{a.get('steps_full', '?')}F/{a.get('steps_selective', 0)}S/{a.get('steps_cached', '?')}C",
            "cache_mib": a.get("peak_cache_bytes", 0) / 2 ** 20,
            "cuda_extra_mib": (mem.get(name, 0) - mem.get("full", 0)) / 2 ** 20 if mem.get("full") else None,
            "step_median_s": _step_medians((steps_log or {}).get(name, [])),
        })
    return {"arch": arch, "T": T, "depth": depth, "shape": shape, "rows": rows, "schedules": schedules,
            "time": time.strftime("%H:%M:%S")}
