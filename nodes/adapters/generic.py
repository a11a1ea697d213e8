"""Model-level fallback for every model without a block adapter (UNets, audio, 3-D, new families).

The whole model evaluation is one engine block with one branch, so the schedule still decides per
step whether the model runs, and every bookkeeping rule of the engine (per-stream caches for the CFG
layout, a forced full evaluation on a new shape, statistics) applies unchanged. There is no token
that can be recomputed on its own, so selective steps act as cached steps.

**What is cached.** The hook is the host's ``APPLY_MODEL`` wrapper, which every model the host samples
goes through (``comfy.model_base.BaseModel.apply_model``); ``DIFFUSION_MODEL`` wrappers are called only
by some network classes (not PixArt, MMDiT, HunyuanDiT, Stable Cascade, ...). Its output is the
model's estimate of the clean sample, ``D = model_sampling.calculate_denoised(sigma, out, x)``. A
computed step stores ``D``; a reused step returns it. The sampler then forms its update from the
current input and noise level, e.g. ``(x - D) / sigma``: the reused step behaves as if the network
had returned the residual (noise / velocity) that points from the *current* ``x`` at the *current*
sigma to the cached estimate. For deterministic Euler this is exactly "reuse the last eps / velocity"
(``x_next = D + sigma_next * eps`` either way); for ancestral and SDE samplers the freshly injected
noise stays in the residual instead of leaking into the clean estimate, and for x0-predicting models
it is the raw output itself. (Caching ``output - input`` of the network instead, as some caches do,
mixes the scaled input with eps / v units and drifts with the noise level.)

The block's residual stream starts at zero, so a computed step returns ``0 + D``, which is ``D`` bit
for bit (up to the sign of a zero): an all-FULL schedule reproduces the unpatched model.

It is also the safe fallback of a block adapter whose blocks no longer match the host's
(``verify.py``): ``fallback_for`` says why, and the runtime bridge calls :func:`cached_model_call` from
its own APPLY_MODEL wrapper when a config switched to it after ProCache Apply had run.
"""
from __future__ import annotations

from typing import Any

from ...procache_core.engine import Branch
from ..run_context import active_run
from . import FamilyAdapter

WRAPPER_KEY = "procache_model"   # inside the bridge's APPLY_MODEL wrapper (key "procache")


def cached_model_call(run: Any, executor, args: tuple, kwargs: dict):
    """The model evaluation ``executor(*args, **kwargs)`` as engine block 0 with one branch."""
    x = args[0]
    stream = x.new_zeros((x.shape[0], 1, x[0].numel()))

    def compute(h):
        return executor(*args, **kwargs).reshape(h.shape)

    out = run.run_block(0, stream, (Branch("model", compute, None, False, flops=1.0),))
    return out.reshape(x.shape)


class ModelCallWrapper:
    """APPLY_MODEL wrapper: the whole model evaluation as one cached branch while our run is active."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def __call__(self, executor, *args, **kwargs):
        run = active_run(self.owner)
        if run is None:
            return executor(*args, **kwargs)
        return cached_model_call(run, executor, args, kwargs)


class GenericAdapter(FamilyAdapter):
    family = "generic"
    selective_support = "none (schedule-only caching of the whole model call)"
    schedule_only = True

    def __init__(self, diffusion_model: Any, what: str = "", fallback_for: str | None = None) -> None:
        super().__init__(diffusion_model)
        self.num_blocks = 1
        self.what = what or type(diffusion_model).__name__
        self.fallback_for = fallback_for   # why a block adapter is not used (verify.py); None: no adapter

    def install(self, model_patcher: Any, owner: Any) -> None:
        import comfy.patcher_extension as pe

        # (re)added after the bridge's wrapper so it runs inside it, where the run is active
        model_patcher.remove_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, ModelCallWrapper(owner))

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """One block holding the model's output: one row of ``prod(x_shape[1:])`` values per sample."""
        from ...procache_core.memory import BlockShape

        if len(x_shape) < 2:
            return None
        width = 1
        for d in x_shape[1:]:
            width *= int(d)
        return [BlockShape(1, width, 1, 0)]

    def describe(self) -> str:
        head = (f"{self.what}, model-level fallback because {self.fallback_for}" if self.fallback_for
                else f"{self.what}, which has no ProCache block adapter")
        return (f"{head}: schedule-only caching of the whole model call (a reused step returns the last computed "
                f"clean-sample estimate), no selective compute")
