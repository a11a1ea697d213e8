"""ProCache under the host's multi-GPU CFG split (ComfyUI 0.29 ``MultiGPU_WorkUnits``).

The host deep-clones the model once per extra device (``ModelPatcher.deepclone_multigpu``: a fresh
model from the loader's factory) and, at every step, evaluates cond and uncond in worker threads, each
on its device's clone, with ``transformer_options["multigpu_thread_device"]`` set. Two things of a
ProCache run must then follow the clone, not the original model:

* the run state: the runtime bridge keeps one worker state (its own ``CacheRun``, cache streams,
  memory placement and self-check) per worker device, so two threads never share a cache stream;
* the patches, which reference the original model's modules:

  - ``dit`` replace patches reach the worker through the guider's ``transformer_options`` (the main
    model's): :func:`rebound_call` hands the worker's model call a copy of those options in which
    ProCache's patches are copies bound to the clone's modules (:func:`rebind_adapter`);
  - object patches of a block's ``forward`` are set on the clone's own modules when the clone is
    loaded: the host's ``ON_DEEPCLONE_MULTIGPU`` / ``ON_MATCH_MULTIGPU_CLONES`` callbacks
    (:func:`rebind_object_patches`) replace ProCache's there by copies bound to the clone's blocks.

A rebound patch carries a ``run_context.CloneOwner`` (the config and the clone's network);
``run_context.owns`` gives a worker's run only to patches bound to that worker's network, so a patch
that could not be rebound (another pack wrapped it) runs the host's block on a clone instead of the
original's modules.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from .run_context import CloneOwner, ProCacheConfig, adapter_dm

log = logging.getLogger("ProCache")

CALLBACK_KEY = "procache"


def _map_modules(value: Any, names: dict[int, str], dm: torch.nn.Module) -> Any:
    if isinstance(value, torch.nn.Module):
        name = names.get(id(value))
        return dm.get_submodule(name) if name is not None else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.nn.Module) for v in value):
        return type(value)(_map_modules(v, names, dm) for v in value)
    return value


def _names(dm: torch.nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in dm.named_modules()}


def rebind_adapter(adapter: Any, dm: torch.nn.Module) -> Any:
    """A shallow copy of ``adapter`` whose module references point at ``dm``'s modules of the same name."""
    names = _names(adapter.dm)
    new = copy.copy(adapter)
    for k, v in vars(adapter).items():
        new.__dict__[k] = _map_modules(v, names, dm)
    new.dm = dm
    return new


def rebound_call(state: Any, args: tuple, kwargs: dict, to: dict) -> tuple[tuple, dict]:
    """The worker's model-call arguments with ProCache's ``dit`` patches bound to its clone's modules."""
    from .adapters import DitBlockReplace

    cfg, dm = state.config, state.dm
    if dm is None or dm is adapter_dm(cfg):
        return args, kwargs
    dit = (to.get("patches_replace") or {}).get("dit") or {}
    own = cfg.owner   # the config the patches were installed with (Apply's, also under its fallback)
    ours = {k: p for k, p in dit.items() if isinstance(p, DitBlockReplace) and p.owner is own}
    if not ours:
        return args, kwargs
    cache = state.rebound
    new_dit = dict(dit)
    for k, p in ours.items():
        r = cache.get(id(p))
        if r is None:
            adapter = cache.get("adapter")
            if adapter is None:
                adapter = cache["adapter"] = rebind_adapter(p.adapter, dm)
            r = copy.copy(p)
            r.adapter, r.owner = adapter, CloneOwner(own, dm)
            cache[id(p)] = r
        new_dit[k] = r
    to = dict(to)
    to["patches_replace"] = dict(to["patches_replace"], dit=new_dit)
    if "transformer_options" in kwargs or len(args) <= 5:
        return args, dict(kwargs, transformer_options=to)
    return args[:5] + (to,) + args[6:], kwargs


def rebind_object_patches(main: Any, clone: Any) -> None:
    """``ON_DEEPCLONE_MULTIGPU`` / ``ON_MATCH_MULTIGPU_CLONES``: ProCache's block ``forward`` patches on
    ``clone`` replaced by copies bound to its own model's blocks (the clone is loaded with them)."""
    from .adapters import ChainedForward

    model = getattr(clone, "model", None)
    dm = getattr(model, "diffusion_model", None)
    src = getattr(getattr(main, "model", None), "diffusion_model", None)
    if dm is None or src is None or dm is src:
        return
    names: dict[int, str] | None = None
    adapters: dict[int, Any] = {}
    n = 0
    for key, p in list(clone.object_patches.items()):
        if not isinstance(p, ChainedForward) or not isinstance(p.owner, ProCacheConfig):
            continue
        if names is None:
            names = _names(src)
        r = copy.copy(p)
        for k, v in vars(p).items():
            if k != "prev":
                r.__dict__[k] = _map_modules(v, names, dm)
        r.block = model.get_submodule(key.rsplit(".", 1)[0])
        ad = p.adapter
        if ad is not None and ad.dm is src:
            if id(ad) not in adapters:
                adapters[id(ad)] = rebind_adapter(ad, dm)
            r.adapter = adapters[id(ad)]
        r.owner = CloneOwner(p.owner, dm)
        clone.object_patches[key] = r
        n += 1
    if n:
        log.debug("ProCache: %d block patches bound to the multi-GPU clone on %s", n, getattr(clone, "load_device", "?"))


def install_callbacks(model_patcher: Any) -> None:
    """Register :func:`rebind_object_patches` where the host has the multi-GPU clone callbacks."""
    try:
        from comfy.patcher_extension import CallbacksMP
    except ImportError:
        return
    add = getattr(model_patcher, "add_callback_with_key", None)
    if add is None:
        return
    for name in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES"):
        kind = getattr(CallbacksMP, name, None)
        if kind is None:
            continue
        model_patcher.remove_callbacks_with_key(kind, CALLBACK_KEY)
        add(kind, CALLBACK_KEY, rebind_object_patches)
