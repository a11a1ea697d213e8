"""The bridge between ComfyUI's sampling machinery and one ProCache run (``CacheRun``).

How a patched MODEL works (installed by ProCache Apply, all keyed ``"procache"`` so a later Apply
on the same clone replaces an earlier one):

* ``transformer_options["procache"]`` holds a :class:`ProCacheConfig` (schedule, selective settings,
  active range, family adapter, last run's stats). ``ModelPatcher.clone`` deep-copies model options;
  the config returns itself from ``__deepcopy__`` so every clone of the Apply output (and the
  ProCache Stats node) sees the same object.
* An OUTER_SAMPLE wrapper creates the per-run :class:`RunState` (a ``CacheRun`` + step bookkeeping)
  from the sampler's sigmas when sampling starts, puts it into a copy of the guider's model options
  (``transformer_options["procache_run"]``) and closes it in ``finally`` (also on interrupt or error),
  then logs one INFO line with the run's stats and stores them on the config.
* An APPLY_MODEL wrapper runs around every model evaluation: it finds the denoising step of the
  evaluation from its sigma, calls ``CacheRun.begin_step`` and ``set_stream`` and makes the run
  visible to the family's patched blocks (see :func:`active_run`) for the duration of the call.

Step index rule: the sampler's sigmas ``sample_sigmas[0] > ... > sample_sigmas[n]`` define ``n``
steps. An evaluation at sigma ``s`` belongs to step ``i`` where ``sample_sigmas[i] >= s >
sample_sigmas[i+1]`` (with a small relative tolerance); failing that (an unusual sampler) the step
whose sigma is nearest. Extra evaluations inside one step (Heun, DPM-2, restart samplers' inner
evaluations, ...) therefore reuse step ``i``'s action. Reading ``s`` costs one device-to-host copy
per model call; nothing else in the bridge synchronises the device.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..procache_core.engine import CacheRun
from ..procache_core.errors import ProCacheError
from ..procache_core.schedule import Action, Schedule
from ..procache_core.settings import SelectiveSettings
from . import memory_bridge

log = logging.getLogger("ProCache")

CONFIG_KEY = "procache"          # transformer_options key of the ProCacheConfig
RUN_KEY = "procache_run"         # transformer_options key of the current RunState (sampling only)
WRAPPER_KEY = "procache"         # key of every wrapper we add

_REL_TOL = 1e-5


class ProCacheConfig:
    """What ProCache Apply decided; shared (not copied) by every clone of the patched MODEL."""

    def __init__(self, *, preset: Any, schedule: Schedule, selective: SelectiveSettings,
                 inject_selective: bool, start_percent: float, end_percent: float, adapter: Any) -> None:
        self.preset = preset
        self.schedule = schedule
        self.selective = selective
        self.inject_selective = inject_selective
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.adapter = adapter
        self.runs = 0                       # finished (or interrupted) runs
        self.last_stats: dict | None = None
        self.last_line: str | None = None
        self.history: list[dict] = []       # recent runs: output fingerprint + stats (ProCache Stats)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return getattr(self.preset, "name", "custom")

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options
        return self

    def __copy__(self):
        return self


@dataclass
class RunState:
    """One sampling run: the CacheRun plus what maps model evaluations to steps."""

    config: ProCacheConfig
    run: CacheRun
    sample_sigmas: list[float]
    schedule: Schedule
    remapped_from: int | None = None
    steps_seen: set[int] = field(default_factory=set)
    evals: int = 0
    t_first: float | None = None
    device: torch.device | None = None
    closed: bool = False
    memory_estimate: Any = None         # memory_bridge.Estimate of this run's cache
    model_patcher: Any = None           # the sampled ModelPatcher (memory_bridge: room beside the weights)
    _last_i: int = 0

    @property
    def n_steps(self) -> int:
        return len(self.sample_sigmas) - 1

    def step_for_sigma(self, s: float) -> int:
        """Step index of an evaluation at sigma ``s`` (see module docstring)."""
        sig = self.sample_sigmas
        n = len(sig) - 1
        if n <= 0:
            return 0

        def inside(i: int) -> bool:
            hi, lo = sig[i], sig[i + 1]
            tol = _REL_TOL * max(abs(hi), abs(lo), 1e-8)
            return hi + tol >= s > lo + tol

        # evaluations come in order: start from the last step found, then wrap around
        start = min(self._last_i, n - 1)
        for k in range(n):
            i = (start + k) % n
            if inside(i):
                self._last_i = i
                return i
        i = min(range(n), key=lambda j: abs(sig[j] - s))
        self._last_i = i
        return i


def _percent_active(model_sampling: Any, sigmas: list[float], start: float, end: float) -> list[bool]:
    """Per step: inside [start_percent, end_percent) of denoising progress (sigma based, like the host)."""
    n = len(sigmas) - 1
    if start <= 0.0 and end >= 1.0:
        return [True] * n
    try:
        s_hi = float(model_sampling.percent_to_sigma(start))
        s_lo = float(model_sampling.percent_to_sigma(end))
    except Exception:  # model_sampling without percent_to_sigma: fall back to step fractions
        return [start <= i / max(n, 1) < end for i in range(n)]
    return [s_hi >= sigmas[i] > s_lo for i in range(n)]


def build_run_schedule(config: ProCacheConfig, sigmas: list[float], model_sampling: Any) -> tuple[Schedule, int | None]:
    """The schedule this run uses: remapped to the step count, range and selective rules applied."""
    n = len(sigmas) - 1
    sched = config.schedule
    remapped_from = None
    if n >= 1 and len(sched) != n:
        remapped_from = len(sched)
        sched = sched.remap(n)
    if config.inject_selective:
        sched = sched.with_selective(True)
    elif not config.selective.enabled:
        sched = sched.with_selective(False)
    active = _percent_active(model_sampling, sigmas, config.start_percent, config.end_percent)
    if not all(active):
        acts = [a if active[i] else Action.FULL for i, a in enumerate(sched.actions)]
        sched = Schedule.from_string("".join(Action(a).value for a in acts))
    return sched, remapped_from


def start_run(config: ProCacheConfig, sigmas: torch.Tensor, model_patcher: Any) -> RunState:
    sig = [float(v) for v in sigmas.detach().float().cpu().tolist()]  # once per run
    try:
        model_sampling = model_patcher.get_model_object("model_sampling")
    except Exception:
        model_sampling = None
    sched, remapped_from = build_run_schedule(config, sig, model_sampling)
    if remapped_from is not None:
        log.info("ProCache: schedule '%s' has %d steps but the sampler runs %d; remapped to %s",
                 config.name, remapped_from, len(sig) - 1, sched.to_string())
    lanes = getattr(config.adapter, "lanes", None)
    run = CacheRun(sched, config.selective, num_blocks=config.adapter.num_blocks, lanes=lanes() if lanes else None)
    # the model's device, not the sigmas' (ComfyUI keeps sigmas on the CPU): finish_run synchronises it
    device = getattr(model_patcher, "load_device", None)
    state = RunState(config=config, run=run, sample_sigmas=sig, schedule=sched, remapped_from=remapped_from,
                     device=device if isinstance(device, torch.device) else sigmas.device)
    log.debug("ProCache: run started, %d steps, schedule %s", len(sig) - 1, sched.to_string())
    return state


HISTORY = 16


def output_key(t: Any) -> tuple | None:
    """Fingerprint of a sampler output (shape + first values; one small device read per run)."""
    if not torch.is_tensor(t):
        return None
    return tuple(t.shape), t.detach().reshape(-1)[:64].float().cpu()


def finish_run(state: RunState, interrupted: bool, output: Any = None) -> None:
    """Close the run (frees every cached tensor), log and store its stats. Never raises."""
    if state.closed:
        return
    state.closed = True
    try:
        if state.device is not None and state.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(state.device)  # the measured time must include queued kernels
    except Exception:
        pass
    state.run.close()
    stats = state.run.stats
    wall = (time.perf_counter() - state.t_first) if state.t_first is not None else 0.0
    counts = {"F": 0, "C": 0, "S": 0}
    for i in state.steps_seen:
        counts[Action(state.schedule[i]).value] += 1
    summary = dict(stats.summary())
    summary.update({
        "family": state.config.adapter.family,
        "schedule_name": state.config.name,
        "schedule": state.schedule.to_string(),
        "remapped_from": state.remapped_from,
        "sampler_steps": state.n_steps,
        "steps_run": len(state.steps_seen),
        "sched_full": counts["F"], "sched_selective": counts["S"], "sched_cached": counts["C"],
        "model_evals": state.evals,
        "block_evals_saved": stats.block_evals_full - stats.block_evals_done,
        "sampling_s": wall,
        "interrupted": interrupted,
    })
    line = (f"ProCache [{summary['family']}] {'interrupted after' if interrupted else 'run:'} "
            f"{len(state.steps_seen)} steps ({counts['F']} full / {counts['S']} selective / {counts['C']} cached), "
            f"{state.evals} model evals; blocks computed {100.0 * stats.block_eval_fraction:.1f}% of full "
            f"({summary['block_evals_saved']:.1f} of {stats.block_evals_full} block evals saved), "
            f"est. FLOPs speed-up {stats.flops_speedup:.2f}x, {stats.tokens_recomputed} tokens recomputed, "
            f"{stats.cache_text()}, sampling {wall:.2f} s")
    if stats.forced_full_evals:
        line += f", {stats.forced_full_evals} forced full (no usable cache)"
    if state.remapped_from is not None:
        line += f", schedule remapped {state.remapped_from}->{state.n_steps} steps"
    summary["line"] = line
    cfg = state.config
    with cfg._lock:
        cfg.runs += 1
        summary["run_index"] = cfg.runs
        cfg.last_stats = summary
        cfg.last_line = line
        key = output_key(output)
        if key is not None:
            cfg.history.append({"shape": key[0], "head": key[1], "stats": summary})
            del cfg.history[:-HISTORY]
    log.info(line)
    _notify_ui(summary)


def _notify_ui(summary: dict) -> None:
    """Best effort: tell connected browsers (event "procache.stats"); never fails the run."""
    try:
        from server import PromptServer  # the host's module

        inst = getattr(PromptServer, "instance", None)
        if inst is not None:
            payload = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in summary.items()}
            inst.send_sync("procache.stats", payload, getattr(inst, "client_id", None))
    except Exception:
        pass


# -- wrappers --------------------------------------------------------------------------------------

def outer_sample_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE: per-run state, created at start and always closed (interrupt included)."""
    guider = executor.class_obj
    orig_options = guider.model_options
    config = orig_options.get("transformer_options", {}).get(CONFIG_KEY)
    if not isinstance(config, ProCacheConfig):
        return executor(*args, **kwargs)
    import comfy.model_patcher

    sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
    state = None
    ok = False
    out = None
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
        state = start_run(config, sigmas, guider.model_patcher)
        guider.model_options["transformer_options"][RUN_KEY] = state
        try:
            memory_bridge.estimate(state, guider, tuple(args[0].shape))
        except Exception as e:  # an estimate must never stop sampling
            log.warning("ProCache: no cache size estimate (%s: %s)", type(e).__name__, e)
        out = executor(*args, **kwargs)
        ok = True
        return out
    finally:
        guider.model_options = orig_options
        if state is not None:
            finish_run(state, interrupted=not ok, output=out)


_ACTIVE = threading.local()


def active_run(owner: Any) -> CacheRun | None:
    """The CacheRun of the model evaluation in progress when it belongs to ``owner`` (a config)."""
    stack = getattr(_ACTIVE, "stack", None)
    if not stack:
        return None
    state = stack[-1]
    if state.config is not owner or state.closed:
        return None
    return state.run


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"]
    if len(args) > 5 and isinstance(args[5], dict):
        return args[5]
    return {}


def apply_model_wrapper(executor, *args, **kwargs):
    """APPLY_MODEL: maps the evaluation to its step, selects the cache stream, exposes the run."""
    to = _transformer_options(args, kwargs)
    state = to.get(RUN_KEY)
    if not isinstance(state, RunState) or state.closed:
        return executor(*args, **kwargs)
    x = args[0]
    sig = to.get("sigmas")
    if sig is None:
        sig = args[1]
    s = float(sig.reshape(-1)[0]) if torch.is_tensor(sig) else float(sig)  # one host read per model call
    step = state.step_for_sigma(s)
    if state.t_first is None:
        state.t_first = time.perf_counter()
        state.run.stats.start()  # time sampling, not model loading
    if state.evals == 0:
        memory_bridge.decide(state, x)  # place the cache before anything is stored
    state.steps_seen.add(step)
    state.evals += 1
    run = state.run
    run.begin_step(step)
    cond_or_uncond = to.get("cond_or_uncond") or [0]
    uuids = to.get("uuids")
    key = tuple(uuids) if uuids else tuple(cond_or_uncond)
    chunks = len(cond_or_uncond)
    if x.shape[0] % chunks:
        chunks = 1
    run.set_stream(key, chunks, grid_hw=state.config.adapter.grid_hw(tuple(x.shape)))
    stack = getattr(_ACTIVE, "stack", None)
    if stack is None:
        stack = _ACTIVE.stack = []
    stack.append(state)
    try:
        return executor(*args, **kwargs)
    finally:
        stack.pop()


def install_wrappers(model_patcher: Any, config: ProCacheConfig) -> None:
    """Keyed wrappers + the config on a clone; replaces what an earlier Apply left on it."""
    import comfy.patcher_extension as pe

    for wtype, fn in ((pe.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper),
                      (pe.WrappersMP.PREPARE_SAMPLING, memory_bridge.prepare_sampling_wrapper),
                      (pe.WrappersMP.APPLY_MODEL, apply_model_wrapper)):
        model_patcher.remove_wrappers_with_key(wtype, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(wtype, WRAPPER_KEY, fn)
    to = model_patcher.model_options.setdefault("transformer_options", {})
    to[CONFIG_KEY] = config
    to.pop(RUN_KEY, None)


def config_of(model_patcher: Any) -> ProCacheConfig | None:
    cfg = getattr(model_patcher, "model_options", {}).get("transformer_options", {}).get(CONFIG_KEY)
    return cfg if isinstance(cfg, ProCacheConfig) else None


def validate_range(start_percent: float, end_percent: float) -> None:
    for name, v in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not (0.0 <= float(v) <= 1.0):
            raise ProCacheError(name, f"is {v}, outside [0, 1].", "use a share of denoising progress, e.g. 0.0 and 1.0.")
    if start_percent >= end_percent:
        raise ProCacheError("start_percent", f"({start_percent}) must be below end_percent ({end_percent}).",
                            "use e.g. start_percent 0.0 and end_percent 1.0 to cache over the whole run.")


BlockFn = Callable[..., Any]
