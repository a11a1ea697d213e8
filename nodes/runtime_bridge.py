"""The bridge between ComfyUI's sampling machinery and one ProCache run (``CacheRun``).

How a patched MODEL works (installed by ProCache Apply, all keyed ``"procache"`` so a later Apply
on the same clone replaces an earlier one):

* ``transformer_options["procache"]`` holds the immutable ``run_context.ProCacheConfig`` (schedule,
  selective settings, active range, family adapter); every clone of the Apply output shares it and its
  ``RunLog`` (last run's stats for the ProCache Stats node, one-time log lines, the fallback).
* An OUTER_SAMPLE wrapper creates the per-run :class:`RunState` (a ``CacheRun`` + step bookkeeping and
  the run's own flags) from the sampler's sigmas when sampling starts, puts it into a copy of the
  guider's model options (``transformer_options["procache_run"]``) and closes it in ``finally`` (also
  on interrupt or error), then logs one INFO line with the run's stats and records them in the run log.
* An APPLY_MODEL wrapper runs around every model evaluation: it finds the denoising step of the
  evaluation from its sigma, calls ``CacheRun.begin_step`` and ``set_stream`` and makes the run
  visible to the family's patched blocks (``run_context.active_run``) for the duration of the call.

Which step an evaluation belongs to comes from the sampler itself. Every host sampler calls its
per-step callback with the step index ``i`` right after the FIRST evaluation of step ``i``; the OUTER_SAMPLE
wrapper wraps that callback. After callback ``i`` an evaluation is an extra evaluation of step ``i``
(Heun's and heunpp2's correctors, the midpoints of dpm_2 / dpmpp_sde / dpmpp_2s_ancestral, ...) unless
it is the first evaluation of step ``i + 1``, which always sits at ``sigmas[i + 1]``. An evaluation at
``sigmas[i + 1]`` is ambiguous only for samplers whose corrector lands there too (Heun, heunpp2, the
ancestral second-order samplers at eta 1): the second one is the next step; the first is a corrector
when no other extra evaluation of step ``i`` came before it and the sampler is known (host samplers by
name) or seen (learned from a previous step) to put one there. Calls for cond and uncond run separately
at one sigma count as one evaluation. A
sampler that never calls the callback is mapped by sigma alone (see :meth:`RunState.step_for_sigma`).

Under the host's multi-GPU CFG split (``transformer_options["multigpu_thread_device"]``, ComfyUI 0.29)
cond and uncond run at once in worker threads, each on its device's deep clone of the model. The step
of an evaluation is still found once, on the run (under its lock); the blocks of each worker device get
a worker state of their own (:meth:`RunState.worker`: its own CacheRun, cache streams, placement and
self-check, merged into the run's stats at the end), and the patches are bound to the clone's modules
(``multigpu_bridge``). The per-thread stack of ``run_context.active_state`` then hands each thread its own.

Which action a step takes comes from the noise axis: see :func:`plan_run`. Reading the sigma costs one
device-to-host copy per model call; nothing else in the bridge synchronises the device.
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
from ..procache_core.plan import few_step_name, plan_schedule
from ..procache_core.schedule import Action, Schedule
from . import memory_bridge, multigpu_bridge
from .run_context import (CONFIG_KEY, RUN_KEY, SHORT_RUN_FLOOR, WRAPPER_KEY,  # noqa: F401 (SHORT_RUN_FLOOR: apply)
                          ProCacheConfig, pop_active, push_active)
from .noise_axis import ForecastAxis, noise_positions

log = logging.getLogger("ProCache")

_REL_TOL = 1e-5
# host samplers (k-diffusion function names) that evaluate a corrector at the next step's sigma
CORRECTOR_AT_NEXT_SIGMA = frozenset({
    "sample_heun", "sample_heunpp2", "sample_dpm_2_ancestral", "sample_dpm_2_ancestral_RF",
    "sample_dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral_RF", "sample_dpmpp_2s_ancestral_cfg_pp"})


@dataclass
class RunState:
    """One sampling run: the CacheRun plus what maps model evaluations to steps, and the run's own flags
    (a run never writes to its config or adapter: clones of one Apply may sample at once)."""

    config: ProCacheConfig              # the config this run uses (Apply's, or its model-level fallback)
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
    noise: list[float] = field(default_factory=list)      # noise position of every sigma of the run
    axis: Any = None                                       # noise_axis.ForecastAxis (forecasting runs only)
    mapping: str = "as written"                            # "as written" / "noise" / "short run"
    few_step: Any = None                                   # the few-step preset this run took (plan_run)
    evals_per_step: list[int] = field(default_factory=list)
    corrector_at_next: bool = False                         # prior, then learned (see module docstring)
    _cb_step: int | None = None                             # step of the last sampler callback
    _by_sigma: bool = False                                 # the sampler does not call the callback
    _at_next: int = 0                                       # evaluations at sigmas[cb + 1] since the callback
    _next_as_corrector: bool = False                        # the first of them was taken as a corrector
    _extras: int = 0                                        # other extra evaluations since the callback
    _last_step: int = 0
    _n_evals: int = 0                                       # sampler evaluations (CFG parts grouped)
    _group: tuple[float, set] | None = None                 # sigma and streams of the evaluation in progress
    # self-verification (adapters/verify.py): the check of this run (None: nothing to verify), whether
    # the patched blocks run the host's forward (a failure in this run, or the model-level fallback),
    # whether the whole model call is cached (the fallback after a failed verification), and why it failed
    check: Any = None
    blocks_off: bool = False
    model_level: bool = False
    verify_failure: str | None = None
    guarded: bool = True                                     # adapter exceptions fall back to the host
    # the host's torch_compile_kwargs when the model is compiled and the adapter compiles its branch
    # maths with them (adapters/compiled.py; read by the patched blocks through run_context.block_compile)
    block_compile: dict | None = None
    # multi-GPU CFG split (module docstring): the network a worker state's blocks run on (None: the run
    # itself), the worker states by device, their rebound patches, and the lock of the step mapping
    dm: Any = None
    workers: dict = field(default_factory=dict)
    rebound: dict = field(default_factory=dict)
    lock: Any = field(default_factory=threading.Lock, repr=False)

    def worker(self, device: Any, base_model: Any) -> "RunState":
        """The worker state of ``device`` (created on its first evaluation of this run)."""
        with self.lock:
            sub = self.workers.get(device)
            if sub is not None:
                return sub
            cfg = self.config
            run = CacheRun(self.schedule, cfg.selective, num_blocks=cfg.adapter.num_blocks, lanes=cfg.adapter.lanes())
            sub = RunState(config=cfg, run=run, sample_sigmas=self.sample_sigmas, schedule=self.schedule,
                           remapped_from=self.remapped_from, device=device, noise=self.noise, mapping=self.mapping,
                           axis=self.axis, block_compile=self.block_compile,
                           model_patcher=getattr(base_model, "current_patcher", None) or self.model_patcher)
            sub.model_level, sub.blocks_off = self.model_level, self.blocks_off
            sub.check = None if self.check is None else _new_check(cfg)
            est = self.memory_estimate
            if est is not None:
                import dataclasses

                sub.memory_estimate = dataclasses.replace(est, decided=False)
            sub.dm = getattr(base_model, "diffusion_model", None)
            self.workers[device] = sub
            return sub

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

    def _close(self, a: float, b: float) -> bool:
        return abs(a - b) <= _REL_TOL * max(abs(a), abs(b), 1e-8)

    def step_for_eval(self, s: float, stream: Any = None) -> int:
        """Step of the next model call, at sigma ``s`` (sampler callback + order of evaluations).

        A call at the same sigma as the previous one for a stream that evaluation has not run yet (the
        host ran cond and uncond as separate calls) is part of the same sampler evaluation."""
        n = self.n_steps
        g = self._group
        if g is not None and g[0] == s and stream not in g[1]:
            g[1].add(stream)
            return self._last_step
        self._group = (s, {stream})
        step = self._step_for_eval(s) if n > 0 else 0
        self._n_evals += 1
        step = min(max(step, 0), max(n - 1, 0))
        if len(self.evals_per_step) < max(n, 1):
            self.evals_per_step.extend([0] * (max(n, 1) - len(self.evals_per_step)))
        self.evals_per_step[step] += 1
        self._last_step = step
        return step

    def _step_for_eval(self, s: float) -> int:
        n, sig = self.n_steps, self.sample_sigmas
        if self._by_sigma:
            return self.step_for_sigma(s)
        if self._cb_step is None:
            if self._n_evals == 0:
                return 0                      # the first evaluation of a run is its first step
            self._by_sigma = True             # two evaluations and no callback: map by sigma from now on
            log.debug("ProCache: the sampler does not report its steps; mapping evaluations by sigma")
            return self.step_for_sigma(s)
        i = self._cb_step
        if i >= n - 1:
            return n - 1
        nxt = sig[i + 1]
        if self._close(s, nxt):
            self._at_next += 1
            if self._at_next == 1 and self.corrector_at_next and not self._extras:
                self._next_as_corrector = True
                return i                      # Heun-like corrector of step i
            return i + 1                      # the first evaluation of step i + 1
        if s > nxt:
            if s > sig[i] * (1 + _REL_TOL) + 1e-12:
                return self.step_for_sigma(s)  # above the current step: not an extra evaluation of it
            self._extras += 1
            return i                          # a midpoint of step i (dpm_2, dpmpp_sde, ...)
        if i + 2 <= n and s < sig[i + 2] * (1 - _REL_TOL) - 1e-12:
            return self.step_for_sigma(s)      # further than any solver looks ahead
        if not self._at_next:
            self._extras += 1                  # (heunpp2's look-ahead comes after its corrector)
        return i                              # below sigmas[i + 1]: ancestral / heunpp2 look-ahead of step i

    def on_callback(self, i: Any) -> None:
        """The sampler finished the first evaluation of step ``i`` (its per-step callback)."""
        self._group = None
        try:
            i = int(i)
        except (TypeError, ValueError):
            return
        i = min(max(i, 0), max(self.n_steps - 1, 0))
        if self._cb_step is not None and i == self._cb_step + 1:
            if self._at_next >= 2:
                self.corrector_at_next = True    # two evaluations at the next sigma: corrector + next step
            elif self._at_next == 1 and self._next_as_corrector:
                self.corrector_at_next = False   # that one was the next step after all (learned once)
        self._cb_step = i
        self._at_next = 0
        self._extras = 0
        self._next_as_corrector = False

    def step_actions(self) -> str:
        """Per step, the action the run used ('-' for a step without evaluations)."""
        return "".join(Action(self.schedule[i]).value if i < len(self.evals_per_step) and self.evals_per_step[i]
                       else "-" for i in range(self.n_steps))


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


@dataclass
class RunPlan:
    """What :func:`plan_run` decided for one run."""

    schedule: Schedule
    remapped_from: int | None
    noise: list[float]
    mapping: str                      # "as written", "noise" or "short run"
    notes: list[str]                  # log lines (the "no noise record" one is logged once per config)
    few_step: Any = None              # the shipped few-step preset that replaced a long schedule (or None)


def plan_run(config: ProCacheConfig, sigmas: list[float], model_sampling: Any) -> RunPlan:
    """The schedule this run uses: ``procache_core.plan.plan_schedule`` (the rules are there) on the
    run's noise positions and active range as the host's model sampling gives them, with the shipped
    few-step preset it picks loaded from its file."""
    n = len(sigmas) - 1
    noise, _exact = noise_positions(model_sampling, sigmas)
    plan = plan_schedule(
        config.schedule, getattr(config.preset, "noise", None), noise, name=config.name,
        selective_enabled=config.selective.enabled, inject_selective=config.inject_selective,
        active=_percent_active(model_sampling, sigmas, config.start_percent, config.end_percent),
        short_run_floor=config.short_run_floor, few=_few_step_preset(config, len(config.schedule), n),
        noted=config.log.noted)
    for key in plan.noted:
        config.log.note_once(key)
    return RunPlan(schedule=plan.schedule, remapped_from=plan.remapped_from, noise=noise, mapping=plan.mapping,
                   notes=plan.notes, few_step=plan.few_step)


_FEW_STEP_CACHE: dict[str, Any] = {}


def _few_step_preset(config: ProCacheConfig, schedule_steps: int, run_steps: int) -> Any:
    """The shipped few-step preset a ``run_steps``-step run takes in place of its schedule, or None
    (``procache_core.plan.few_step_name``). A missing or broken preset file keeps the schedule
    (one log line per config)."""
    family = (config.block_adapter or config.adapter).family
    name = few_step_name(family, schedule_steps, run_steps)
    if name is None:
        return None
    if name not in _FEW_STEP_CACHE:
        from .schedule_loader import load_named_preset

        try:
            _FEW_STEP_CACHE[name] = load_named_preset(name)
        except ProCacheError as e:
            if config.log.note_once("few-step-missing"):
                log.warning("ProCache: few-step preset unavailable (%s); short runs map '%s' as it is.", e, config.name)
            return None
    return _FEW_STEP_CACHE[name]


def few_step_note(few: Any, sched: Schedule) -> str:
    """What a few-step run reused and what that cost on the measured models (the preset's provenance)."""
    reused = sum(1 for a in sched.actions if a is not Action.FULL)
    text = (f"{len(sched)}-step run: few-step preset '{few.name}' ({sched.to_string()}), {reused} of {len(sched)} "
            "steps reused")
    measured = (getattr(few, "provenance", None) or {}).get("measured")
    if measured and reused:
        text += f"; quality traded for speed: {measured}"
    elif reused:
        text += "; quality traded for speed"
    return text


def _use_fallback_if_failed(config: ProCacheConfig) -> ProCacheConfig:
    """The config a run of ``config`` uses: the model-level fallback once its block adapter failed
    verification in this process (adapters/verify.py; its patched blocks then run the host's forward),
    made once per Apply and kept in its run log; else ``config`` itself."""
    log_ = config.log
    if log_.fallback is not None:
        return log_.fallback
    adapter = config.adapter
    if config.block_adapter is not None or adapter.schedule_only or adapter.dm is None:
        return config
    from .adapters import verify
    from .adapters.generic import GenericAdapter

    why = verify.failure(verify.adapter_key(adapter))
    if why is None:
        return config
    fallback = config.as_fallback(GenericAdapter(adapter.dm, type(adapter.dm).__name__,
                                                 fallback_for=f"the {adapter.family} block adapter failed "
                                                              f"verification ({why})"))
    with log_.lock:
        if log_.fallback is None:
            log_.fallback = fallback
            log.info("ProCache: %s", fallback.adapter.describe())
        return log_.fallback


def _new_check(config: ProCacheConfig) -> Any:
    """The verification of this run, or None (fallback, or this host code is verified already)."""
    adapter = config.adapter
    if config.block_adapter is not None or adapter.schedule_only or adapter.dm is None:
        return None
    from .adapters import verify

    key = verify.adapter_key(adapter)
    if verify.is_verified(key) or verify.failure(key) is not None:
        return None
    return verify.RunCheck(key=key, family=adapter.family)


def start_run(config: ProCacheConfig, sigmas: torch.Tensor, model_patcher: Any, sampler: Any = None) -> RunState:
    sig = [float(v) for v in sigmas.detach().float().cpu().tolist()]  # once per run
    config = _use_fallback_if_failed(config)
    try:
        model_sampling = model_patcher.get_model_object("model_sampling")
    except Exception:
        model_sampling = None
    plan = plan_run(config, sig, model_sampling)
    sched, remapped_from = plan.schedule, plan.remapped_from
    for note in plan.notes:
        log.info(note)
    if remapped_from is not None and plan.mapping == "noise" and plan.few_step is None:
        n = len(sig) - 1
        head = (f"has {remapped_from} steps but the sampler runs {n}" if remapped_from != n
                else f"({remapped_from} steps) differs from the sampler's noise levels")
        log.info("ProCache: schedule '%s' %s; remapped to %s by noise level (%.3f to %.3f)",
                 config.name, head, sched.to_string(), plan.noise[0], plan.noise[-1])
    run = CacheRun(sched, config.selective, num_blocks=config.adapter.num_blocks, lanes=config.adapter.lanes())
    fn_name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    # the model's device, not the sigmas' (ComfyUI keeps sigmas on the CPU): finish_run synchronises it
    device = getattr(model_patcher, "load_device", None)
    state = RunState(config=config, run=run, sample_sigmas=sig, schedule=sched, remapped_from=remapped_from,
                     device=device if isinstance(device, torch.device) else sigmas.device,
                     noise=plan.noise, mapping=plan.mapping, corrector_at_next=fn_name in CORRECTOR_AT_NEXT_SIGMA,
                     few_step=plan.few_step if plan.mapping != "short run" else None,
                     axis=ForecastAxis(model_sampling, sig) if config.selective.forecast else None)
    state.model_level = state.blocks_off = config.block_adapter is not None
    state.check = _new_check(config)
    log.debug("ProCache: run started, %d steps, schedule %s", len(sig) - 1, sched.to_string())
    return state


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
        for dev in [state.device, *state.workers]:
            if isinstance(dev, torch.device) and dev.type == "cuda" and torch.cuda.is_available():
                torch.cuda.synchronize(dev)  # the measured time must include queued kernels
    except Exception:
        pass
    state.run.close()
    stats = state.run.stats
    for sub in list(state.workers.values()):  # multi-GPU CFG split: each worker device's cache
        sub.closed = True
        sub.run.close()
        _merge_stats(stats, sub.run.stats)
        if sub.verify_failure is not None and state.verify_failure is None:
            state.verify_failure = sub.verify_failure
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
        "step_actions": state.step_actions(),
        "evals_per_step": list(state.evals_per_step[:state.n_steps]),
        "noise": [round(v, 6) for v in state.noise],
        "mapping": state.mapping,
        "few_step_preset": getattr(state.few_step, "name", None),
        "block_evals_saved": stats.block_evals_full - stats.block_evals_done,
        "sampling_s": wall,
        "interrupted": interrupted,
    })
    line = (f"ProCache [{summary['family']}] {'interrupted after' if interrupted else 'run:'} "
            f"{len(state.steps_seen)} steps ({counts['F']} full / {counts['S']} selective / {counts['C']} cached), "
            f"{state.evals} model evals; blocks computed {100.0 * stats.block_eval_fraction:.1f}% of full "
            f"({summary['block_evals_saved']:.1f} of {stats.block_evals_full} block evals saved), "
            f"est. FLOPs speed-up {stats.flops_speedup:.2f}x, {stats.tokens_recomputed} tokens recomputed, "
            f"{stats.cache_text()}, "
            + (f"{stats.forecast_text()}, " if stats.forecast_text() else "")
            + (f"{stats.guard_text()}, " if stats.guard_text() else "") + f"sampling {wall:.2f} s")
    if stats.forced_full_evals:
        line += f", {stats.forced_full_evals} forced full (no usable cache)"
    if state.few_step is not None:
        summary["few_step_note"] = few_step_note(state.few_step, state.schedule)
        line += f"; {summary['few_step_note']}"
    elif state.remapped_from is not None and state.mapping == "noise":
        line += f", schedule remapped {state.remapped_from}->{state.n_steps} steps by noise level"
    if state.mapping == "short run":
        line += f", short run (< {state.config.short_run_floor} steps): every step computed"
    if state.verify_failure is not None:
        line += (f"; {summary['family']} block adapter failed verification ({state.verify_failure}): ComfyUI's "
                 "own blocks computed the rest of this run, the next runs use the model-level fallback")
    elif state.model_level:
        line += f"; model-level fallback: {state.config.adapter.fallback_for}"
    if state.workers:
        summary["devices"] = [str(d) for d in state.workers]
        line += f"; multi-GPU CFG split over {len(state.workers)} devices, one cache per device"
    summary["verification"] = state.verify_failure
    summary["fallback"] = bool(state.model_level)
    summary["line"] = line
    state.config.log.record(summary, output_key(output))
    log.info(line)
    _notify_ui(summary)


def _merge_stats(dst: Any, src: Any) -> None:
    """Add a worker device's run stats to the run's (counts summed, peaks per device)."""
    for name in ("steps_full", "steps_cached", "steps_selective", "forced_full_evals", "block_evals_full",
                 "block_evals_done", "tokens_recomputed", "flops_full", "flops_done", "peak_cache_bytes",
                 "peak_history_bytes", "guard_fired"):
        setattr(dst, name, getattr(dst, name) + getattr(src, name))
    for dev, n in src.peak_cache_bytes_by_device.items():
        dst.peak_cache_bytes_by_device[dev] = max(dst.peak_cache_bytes_by_device.get(dev, 0), n)
    if src.cache_placement and src.cache_placement not in dst.cache_placement.split("; "):
        dst.cache_placement = "; ".join(p for p in (dst.cache_placement, src.cache_placement) if p)


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
    sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
    state = None
    ok = False
    out = None
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
        state = start_run(config, sigmas, guider.model_patcher, sampler)
        _note_compile(state.config, orig_options)
        state.block_compile = _block_compile(state.config, orig_options)
        guider.model_options["transformer_options"][RUN_KEY] = state
        try:
            memory_bridge.estimate(state, guider, tuple(args[0].shape), kwargs.get("latent_shapes"))
        except Exception as e:  # an estimate must never stop sampling
            log.warning("ProCache: no cache size estimate (%s: %s)", type(e).__name__, e)
        args, kwargs = _with_step_callback(state, args, kwargs)
        out = executor(*args, **kwargs)
        ok = True
        return out
    finally:
        guider.model_options = orig_options
        if state is not None:
            finish_run(state, interrupted=not ok, output=out)


def _block_compile(config: ProCacheConfig, model_options: dict) -> dict | None:
    """The host's compile settings when this run's adapter compiles its branch maths with them."""
    kw = model_options.get("torch_compile_kwargs")
    return kw if kw and config.adapter.compiles_branches else None


def _note_compile(config: ProCacheConfig, model_options: dict) -> None:
    """One log line per config when the host's TorchCompileModel is on the model (see outside_compile)."""
    kw = model_options.get("torch_compile_kwargs")
    if kw and not config.adapter.schedule_only and config.log.note_once("torch-compile"):
        if config.adapter.compiles_branches:
            log.info("ProCache: torch.compile (%s) is on this model; ProCache's patched blocks run outside the "
                     "compiled graph, their branch maths compiled with the same settings.", kw.get("backend", "?"))
        else:
            log.info("ProCache: torch.compile (%s) is on this model; ProCache's patched blocks run outside the "
                     "compiled graph (eager), the rest of the model runs compiled.", kw.get("backend", "?"))


def _with_step_callback(state: RunState, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """outer_sample's arguments with the sampler callback wrapped so the run sees every step begin."""
    user_cb = args[5] if len(args) > 5 else kwargs.get("callback")

    def procache_step_callback(step, *rest, **kw):
        state.on_callback(step)
        if user_cb is not None:
            return user_cb(step, *rest, **kw)
        return None

    if len(args) > 5:
        args = args[:5] + (procache_step_callback,) + args[6:]
    else:
        kwargs = dict(kwargs, callback=procache_step_callback)
    return args, kwargs


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"]
    if len(args) > 5 and isinstance(args[5], dict):
        return args[5]
    return {}


def _stateful_patches(check: Any, to: dict) -> bool:
    """True when this evaluation carries other nodes' in-block patches (``transformer_options["patches"]``).

    Verification runs each block twice, the adapter's way and the host's; such a patch sees both calls,
    and some keep state between calls (FluxKVCache stores its reference keys/values on the first and
    appends them on the next). So those evaluations are not compared: the adapter is verified on a later
    run without them (one log line per run says so)."""
    names = sorted(k for k, v in (to.get("patches") or {}).items() if v)
    if names and not getattr(check, "deferred_logged", False):
        check.deferred_logged = True
        log.info("ProCache: self-check of the %s block adapter deferred: this model carries other nodes' in-block "
                 "patches (%s), which may keep state between calls; it runs on a later run without them.",
                 check.family, ", ".join(names))
    return bool(names)


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
    cond_or_uncond = to.get("cond_or_uncond") or [0]
    uuids = to.get("uuids")
    key = tuple(uuids) if uuids else tuple(cond_or_uncond)
    device = to.get("multigpu_thread_device")
    if device is None:
        step = state.step_for_eval(s, key)
        if state.t_first is None:
            state.t_first = time.perf_counter()
            state.run.stats.start()  # time sampling, not model loading
        if state.evals == 0:
            memory_bridge.decide(state, x)  # place the cache before anything is stored
        state.steps_seen.add(step)
        state.evals += 1
    else:  # a worker thread of the host's multi-GPU CFG split (module docstring)
        with state.lock:
            step = state.step_for_eval(s, key)
            if state.t_first is None:
                state.t_first = time.perf_counter()
                state.run.stats.start()
            state.steps_seen.add(step)
            state.evals += 1
        state = state.worker(device, getattr(executor, "class_obj", None))
        if state.evals == 0:
            memory_bridge.decide(state, x)
        state.steps_seen.add(step)
        state.evals += 1
        args, kwargs = multigpu_bridge.rebound_call(state, args, kwargs, to)
    run = state.run
    run.begin_step(step, None if state.axis is None else state.axis(s))
    chunks = len(cond_or_uncond)
    if x.shape[0] % chunks:
        chunks = 1
    run.set_stream(key, chunks, grid_hw=state.config.adapter.grid_hw(tuple(x.shape)))
    check = state.check
    if check is not None and check.pending and not state.blocks_off and run.action == Action.FULL and \
            not _stateful_patches(check, to):
        check.active, check.compared = True, 0   # this evaluation is compared with the host's blocks
    push_active(state)
    try:
        if state.model_level:  # the fallback after a failed verification (adapters/verify.py)
            from .adapters.generic import cached_model_call

            return cached_model_call(run, executor, args, kwargs)
        out = executor(*args, **kwargs)
        if check is not None and check.active:
            from .adapters.verify import finish_evaluation

            finish_evaluation(state)
        return out
    finally:
        if check is not None:
            check.active = False
        pop_active()


def install_wrappers(model_patcher: Any, config: ProCacheConfig) -> None:
    """Keyed wrappers + the config on a clone; replaces what an earlier Apply left on it."""
    import comfy.patcher_extension as pe

    for wtype, fn in ((pe.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper),
                      (pe.WrappersMP.PREPARE_SAMPLING, memory_bridge.prepare_sampling_wrapper),
                      (pe.WrappersMP.APPLY_MODEL, apply_model_wrapper)):
        model_patcher.remove_wrappers_with_key(wtype, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(wtype, WRAPPER_KEY, fn)
    multigpu_bridge.install_callbacks(model_patcher)
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
