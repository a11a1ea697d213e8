"""Cache memory on the host: the user's request, the size estimate, where the cache goes, and what
the host's model loader is told.

* ProCache Apply's ``cache_device`` / ``cache_mode`` / ``cache_dtype`` inputs become a
  :class:`MemoryRequest` on the config (``config.memory_request``).
* When sampling starts (OUTER_SAMPLE) :func:`estimate` works the cache size out from the latent shape,
  the family's block layout (``adapter.cache_layout``) and the number of CFG streams, for both the full
  and the light cache.
* The host loads weights in ``prepare_sampling`` from ``BaseModel.memory_required``; our
  PREPARE_SAMPLING wrapper (:func:`prepare_sampling_wrapper`) adds the cache's device bytes to that
  estimate for the duration of the call, so the loader frees (or, for ``model device``, offloads)
  memory for it instead of the run running out halfway. ``auto`` adds it to ``memory_required`` only
  (other models are unloaded to make room; the model's own weights are not offloaded for the cache,
  which moves to CPU memory when it does not fit), ``model device`` to the minimum too (the host
  offloads weights rather than fail), ``cpu`` only the two blocks in flight.
* At the first model evaluation, with the weights loaded, :func:`decide` compares the estimate with
  free device memory, picks the placement (``procache_core.memory.choose``) and logs one line, before
  anything is cached.

Dynamic VRAM (ComfyUI 0.16+ with comfy-aimdo, the default on CUDA): weights are faulted in on demand
and evicted when other allocations need the memory, and ``model_management.get_free_memory`` leaves
that evictable memory out. Free device memory is therefore asked of the sampled ModelPatcher
(``ModelPatcher.get_free_memory``: free plus what aimdo can evict, the figure the host batches CFG
with) where the host has it, and the room beside a dynamic model's weights is the whole device
(``procache_core.memory.room_beside_weights``); the hint still goes into ``memory_required``, the
estimate the loader frees other models for (a dynamic loader unloads non-dynamic models for it and
lets aimdo evict the rest on demand).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..procache_core.errors import ProCacheError
from ..procache_core.memory import choose, estimate_bytes, room_beside_weights
from .run_context import RUN_KEY

log = logging.getLogger("ProCache")

DEVICE_CHOICES = {"auto": "auto", "model device": "device", "cpu": "cpu"}
MODE_CHOICES = ("auto", "full", "light")
DTYPE_CHOICES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# how CACHED steps reuse (procache_core.memory "Stack reuse", procache_core.step_reuse)
REUSE_CHOICES = ("blocks", "stack", "step")


@dataclass(frozen=True)
class MemoryRequest:
    placement: str = "auto"                 # "auto", "device" or "cpu"
    mode: str = "auto"                      # "auto", "full" or "light"
    dtype: torch.dtype | None = None        # storage dtype, None = activation dtype
    reuse: str = "blocks"                   # "blocks" (each block's outputs, fresh gates), "stack" or "step"


def request_from_inputs(cache_device: str = "auto", cache_mode: str = "auto", cache_dtype: str = "auto",
                        reuse: str = "blocks") -> MemoryRequest:
    if reuse not in REUSE_CHOICES:
        raise ProCacheError("reuse", f"is {reuse!r}.",
                            f"use one of {list(REUSE_CHOICES)} (blocks: every block's cached outputs with the current "
                            "gates; stack: one residual per stream for the whole block stack; step: the model is not "
                            "called on cached steps, fastest reused steps).")
    if cache_device not in DEVICE_CHOICES:
        raise ProCacheError("cache_device", f"is {cache_device!r}.", f"use one of {list(DEVICE_CHOICES)}.")
    if cache_mode not in MODE_CHOICES:
        raise ProCacheError("cache_mode", f"is {cache_mode!r}.", f"use one of {list(MODE_CHOICES)}.")
    if cache_dtype not in DTYPE_CHOICES:
        raise ProCacheError("cache_dtype", f"is {cache_dtype!r}.", f"use one of {list(DTYPE_CHOICES)}.")
    return MemoryRequest(DEVICE_CHOICES[cache_device], cache_mode, DTYPE_CHOICES[cache_dtype], reuse)


def request_of(config: Any) -> MemoryRequest:
    req = getattr(config, "memory_request", None)
    return req if isinstance(req, MemoryRequest) else MemoryRequest()


@dataclass
class Estimate:
    full_bytes: int
    light_bytes: int
    block_bytes: int      # the largest single block entry (what is in flight with the CPU cache)
    rows: int
    dtype: torch.dtype
    decided: bool = False
    copy_full_bytes: int | None = None    # the same without the forecast history (None: no forecasting)
    copy_light_bytes: int | None = None


def _streams(guider: Any) -> int:
    conds = getattr(guider, "conds", None) or getattr(guider, "original_conds", None) or {}
    n = sum(1 for v in conds.values() if v)
    cfg = getattr(guider, "cfg", None)
    if "negative" in conds and conds.get("negative") and isinstance(cfg, (int, float)) and float(cfg) == 1.0:
        n -= 1  # the host skips the uncond at cfg 1
    return max(n, 1)


def _context_tokens(guider: Any) -> int | None:
    conds = getattr(guider, "conds", None) or {}
    for c in conds.get("positive") or []:
        t = c.get("cross_attn") if isinstance(c, dict) else None
        if torch.is_tensor(t) and t.ndim == 3:
            return int(t.shape[1])
    return None


def _first_cond(guider: Any) -> dict | None:
    """The first positive conditioning entry (reference latents, extra text inputs), if any."""
    conds = getattr(guider, "conds", None) or {}
    for c in conds.get("positive") or []:
        if isinstance(c, dict):
            return c
    return None


def _activation_dtype(model_patcher: Any) -> torch.dtype:
    base = getattr(model_patcher, "model", None)
    dt = getattr(base, "manual_cast_dtype", None)
    if dt is None and hasattr(base, "get_dtype"):
        dt = base.get_dtype()
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point and dt.itemsize >= 2 else torch.float32


def _call_layout(layout_fn: Any, shape: tuple, context_tokens: int | None, cond: dict | None) -> list | None:
    """``layout_fn(shape, context_tokens, cond)``; adapters written before ``cond`` existed get two arguments."""
    import inspect

    try:
        params = inspect.signature(layout_fn).parameters.values()
    except (TypeError, ValueError):
        params = ()
    takes_cond = any(p.kind == p.VAR_POSITIONAL for p in params) or \
        sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3
    return layout_fn(shape, context_tokens, cond) if takes_cond else layout_fn(shape, context_tokens)


def estimate(state: Any, guider: Any, noise_shape: tuple, latent_shapes: list | None = None) -> Estimate | None:
    """Cache size for this run from shapes (None when the family gives no layout).

    ``latent_shapes``: the sampler's shapes of a packed multi-latent (LTX-2 video + audio, ComfyUI 0.8 on);
    with more than one, the family's layout gets that tuple of shapes instead of the packed ``noise_shape``."""
    config, run = state.config, state.run
    state.model_patcher = guider.model_patcher   # free memory is asked of it (decide), also without a layout
    shape = tuple(noise_shape)
    if latent_shapes is not None and len(latent_shapes) > 1:
        shape = tuple(tuple(int(d) for d in s) for s in latent_shapes)
    layout = _call_layout(config.adapter.cache_layout, shape, _context_tokens(guider), _first_cond(guider))
    if not layout:
        return None
    req = request_of(config)
    dtype = req.dtype or _activation_dtype(guider.model_patcher)
    rows = int(noise_shape[0]) * _streams(guider)
    if req.reuse == "step" and not run.keeps_blocks_with(step=True):
        # step reuse without selective steps keeps no block output, only the model's output per stream
        # (with its forecast differences): procache_core.step_reuse
        elem = torch.empty((), dtype=dtype).element_size()
        n = rows * math.prod(int(d) for d in noise_shape[1:]) * elem * (1 + run.selective.forecast)
        state.memory_estimate = Estimate(n, n, n, rows, dtype)
        return state.memory_estimate
    args = dict(rows=rows, elem_bytes=torch.empty((), dtype=dtype).element_size(),
                first_selective_block=run.first_selective_block, track_tokens=run._track_tokens,
                keep_input=run._keep_input, stack=req.reuse == "stack")
    # forecasting keeps its differences only while the cache stays working tensors on the device
    history = run.selective.forecast if (req.dtype is None or req.dtype == dtype) else 0
    block = max(rows * b.tokens * b.width * b.branches for b in layout) * args["elem_bytes"]
    est = Estimate(estimate_bytes(layout, light=False, history=history, **args),
                   estimate_bytes(layout, light=True, history=history, **args), block, rows, dtype)
    if history:
        est.copy_full_bytes = estimate_bytes(layout, light=False, **args)
        est.copy_light_bytes = estimate_bytes(layout, light=True, **args)
    state.memory_estimate = est
    return est


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:.1f} MiB"


def device_bytes_to_request(state: Any) -> tuple[int, int]:
    """(added to memory_required, added to minimum_memory_required) for the host's loader."""
    est = getattr(state, "memory_estimate", None)
    if est is None:
        return 0, 0
    req = request_of(state.config)
    need = est.light_bytes if req.mode == "light" else est.full_bytes
    in_flight = 2 * est.block_bytes
    if req.placement == "cpu":
        return in_flight, in_flight
    if req.placement == "device":
        return need, need
    room = _room(state)
    if room is not None and need > 0.9 * room:  # cannot fit beside the weights: it will go to CPU memory
        return in_flight, in_flight
    return need, 0


def _room(state: Any) -> int | None:
    """Device memory left beside the model's weights (None when unknown)."""
    try:
        import comfy.model_management as mm

        mp = state.model_patcher
        if mp is None or mm.is_device_cpu(mp.load_device):
            return None
        dynamic = bool(getattr(mp, "is_dynamic", lambda: False)())
        return room_beside_weights(int(mm.get_total_memory(mp.load_device)), int(mp.model_size()), dynamic)
    except Exception:
        return None


def prepare_sampling_wrapper(executor, model, noise_shape, conds, model_options=None, **kwargs):
    """PREPARE_SAMPLING: the host's memory estimate plus the cache (see module docstring)."""
    state = ((model_options or {}).get("transformer_options") or {}).get(RUN_KEY)
    extra_req, extra_min = device_bytes_to_request(state) if state is not None else (0, 0)
    base = getattr(model, "model", None)
    if not (extra_req or extra_min) or base is None or not hasattr(base, "memory_required"):
        return executor(model, noise_shape, conds, model_options=model_options, **kwargs)
    own = base.__dict__.get("memory_required")
    orig = base.memory_required
    batch = int(noise_shape[0])

    active = [True]

    def memory_required(input_shape, *args, **kw):
        n = orig(input_shape, *args, **kw)
        if not active[0]:  # after prepare_sampling: the host's own estimate, whoever still holds this
            return n
        return n + (extra_req if int(input_shape[0]) > batch else extra_min)

    base.memory_required = memory_required
    try:
        log.info("ProCache: told the model loader about %s of cache memory (%s minimum)",
                 _mib(extra_req), _mib(extra_min))
        return executor(model, noise_shape, conds, model_options=model_options, **kwargs)
    finally:
        active[0] = False
        # Loading the model applies its object patches, and one of them may replace memory_required
        # (keeping ours as its backup): then it must stay in place, and ours is a pass-through from now on.
        if base.__dict__.get("memory_required") is memory_required:
            if own is not None:
                base.memory_required = own
            else:
                base.__dict__.pop("memory_required", None)


def _free(device: torch.device) -> int | None:
    try:
        import comfy.model_management as mm

        return int(mm.get_free_memory(device))
    except Exception:
        return None


def free_device_memory(state: Any, device: torch.device) -> tuple[int | None, int]:
    """(free device memory for the cache, the part of it only evictable) for ``device``.

    The sampled ModelPatcher's own ``get_free_memory`` where the host has it (ComfyUI 0.16+): it adds the
    memory the dynamic-VRAM loader can evict to ``model_management.get_free_memory``; else the latter
    alone (older hosts, or no patcher known)."""
    plain = _free(device)
    mp = getattr(state, "model_patcher", None)
    fn = getattr(mp, "get_free_memory", None)
    if fn is None or device.type == "cpu":
        return plain, 0
    try:
        total = int(fn(device))
    except Exception:
        return plain, 0
    return total, max(total - plain, 0) if plain is not None else 0


def decide(state: Any, x: torch.Tensor) -> None:
    """Place the cache before the first evaluation caches anything; one log line."""
    est = getattr(state, "memory_estimate", None)
    if est is not None and est.decided:
        return
    req = request_of(state.config)
    dev_free, evictable = free_device_memory(state, x.device)
    host_free = _free(torch.device("cpu"))
    full = est.full_bytes if est else 0
    light = est.light_bytes if est else 0
    plan = choose(req.placement, req.mode, req.dtype, full, light, dev_free, host_free)
    if x.device.type == "cpu" and plan.memory.placement == "cpu" and req.placement == "auto":
        plan = choose("device", req.mode if req.mode != "auto" else ("light" if plan.memory.light else "full"),
                      req.dtype, full, light, dev_free, host_free)  # on a CPU model the device IS CPU memory
    if (est is not None and est.copy_full_bytes is not None and req.placement == "auto"
            and plan.memory.placement == "cpu" and x.device.type != "cpu"):
        # the forecast history is what pushes the cache off the device: copying on the device beats
        # forecasting from CPU memory (which would copy anyway: procache_core.forecast)
        plain = choose(req.placement, req.mode, req.dtype, est.copy_full_bytes, est.copy_light_bytes or 0,
                       dev_free, host_free)
        if plain.memory.placement == "device":
            state.run.drop_forecast("the cache with its forecast history would not fit in free device memory")
            plan = plain
            est.full_bytes, est.light_bytes = est.copy_full_bytes, est.copy_light_bytes or 0
            plan = type(plan)(plan.memory, plan.reason + " without the forecast history (reused steps copy)",
                              plan.full_bytes, plan.light_bytes)
    if req.reuse in ("stack", "step"):
        plan = type(plan)(dataclasses.replace(plan.memory, **{req.reuse: True}), plan.reason, plan.full_bytes,
                          plan.light_bytes)
    state.run.set_memory(plan.memory)
    reason = plan.reason
    if evictable:
        reason += f" (of which {_mib(evictable)} held by weights the dynamic VRAM loader evicts on demand)"
    if est is not None:
        est.decided = True
        log.info("ProCache: cache estimate %s full / %s light (%d rows, %s) on %s; %s -> %s",
                 _mib(est.full_bytes), _mib(est.light_bytes), est.rows, str(est.dtype).replace("torch.", ""),
                 x.device, reason, plan.memory.describe())
    else:
        state.memory_estimate = Estimate(0, 0, 0, 0, x.dtype, decided=True)
        log.info("ProCache: no cache size estimate for this model family; %s", plan.memory.describe())


def memory_inputs() -> list:
    """The optional inputs ProCache Apply appends for the cache's memory (V3 schema)."""
    from comfy_api.latest import io

    return [
        io.Combo.Input("cache_device", options=list(DEVICE_CHOICES), default="auto", optional=True,
                       tooltip="Where cached features live. auto: the model's device when the estimated cache fits "
                               "in free memory, else CPU memory (same output, slower). cpu: pinned CPU memory, "
                               "streamed back one block ahead of use."),
        io.Combo.Input("cache_mode", options=list(MODE_CHOICES), default="auto", optional=True,
                       tooltip="full: every block's branch outputs (reused with fresh gates). light: only the deep "
                               "blocks selective steps use plus one residual for the blocks above them (much "
                               "less memory; reused steps keep those blocks' gates from the last full step). "
                               "auto: full, light only when the full cache fits nowhere."),
        io.Combo.Input("cache_dtype", options=list(DTYPE_CHOICES), default="auto", optional=True,
                       tooltip="Storage dtype of cached features; auto = the model's activation dtype (exact). "
                               "bfloat16/float16 halve a float32 cache at a small rounding cost."),
        io.Combo.Input("reuse", options=list(REUSE_CHOICES), default="blocks", optional=True,
                       tooltip="How cached steps reuse. blocks: every block's cached outputs with the current "
                               "step's gates. stack: one residual per stream for the whole block stack (as First "
                               "Block Cache does): cached steps skip all per-block work, at the gates of the last "
                               "full step (a small quality cost; selective steps unchanged). step: cached steps "
                               "do not call the model at all and return its last computed output (forecast on the "
                               "noise axis when forecasting is on), as step-level caches do: the cheapest reused "
                               "steps, at a larger quality cost; full and selective steps unchanged."),
    ]
