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
import time
from typing import Any, Callable

import torch

from ..procache_core.engine import CacheRun
from ..procache_core.errors import ProCacheError
from ..procache_core.schedule import Action
from . import memory_bridge, multigpu_bridge
from .run_context import (CONFIG_KEY, RUN_KEY, WRAPPER_KEY,
                          ProCacheConfig, pop_active, push_active)
from .noise_axis import ForecastAxis
from .run_plan import few_step_note, plan_run
from .run_state import CORRECTOR_AT_NEXT_SIGMA, RunState, _new_check

log = logging.getLogger("ProCache")

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
    ctx = args[3] if len(args) > 3 else kwargs.get("c_crossattn")  # apply_model(x, t, c_concat, c_crossattn, ...)
    run.set_stream(key, chunks, grid_hw=state.config.adapter.grid_hw(tuple(x.shape)),
                   text_tokens=state.config.adapter.text_tokens(
                       tuple(x.shape), int(ctx.shape[1]) if torch.is_tensor(ctx) and ctx.ndim == 3 else None))
    check = state.check
    if check is not None and check.pending and not state.blocks_off and run.action == Action.FULL and \
            not _stateful_patches(check, to):
        check.active, check.compared = True, 0   # this evaluation is compared with the host's blocks
    if not state.model_level:  # step reuse (procache_core.step_reuse): a cached step skips the model call
        reused = run.reuse_step(x)
        if reused is not None:
            return reused
        if run.native_eval(x) and (check is None or not check.pending):
            # a computed step nothing reads blocks from: the model's own blocks (no run exposed to them)
            out = executor(*args, **kwargs)
            run.keep_native(out)
            return out
    push_active(state)
    try:
        if state.model_level:  # the fallback after a failed verification (adapters/verify.py)
            from .adapters.generic import cached_model_call

            return cached_model_call(run, executor, args, kwargs)
        out = executor(*args, **kwargs)
        if check is not None and check.active:
            from .adapters.verify import finish_evaluation

            finish_evaluation(state)
        run.keep_step(out)
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
