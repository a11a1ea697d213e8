"""Model-family adapters: detect the family of a MODEL and patch its blocks for ProCache.

An adapter splits each transformer block of its family into residual *branches* with the same
arithmetic as the host's block (see ``procache_core.engine.Branch``) and installs patches on a
ModelPatcher clone through the host's composable, keyed mechanisms:

=========  ======================================================  ===================================
family     classes (``model.model.diffusion_model``)               patches
=========  ======================================================  ===================================
pixart     ``comfy.ldm.pixart.pixartms.PixArtMS`` (α and Σ)        object patch ``diffusion_model.blocks.N.forward``
flux       ``comfy.ldm.flux.model.Flux`` (Flux.1 dev/schnell)      ``dit`` replace ``double_block``/``single_block``
sd3        ``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT``      ``dit`` replace ``double_block`` (joint blocks)
wan        ``comfy.ldm.wan.model.WanModel`` and subclasses          object patch ``diffusion_model.blocks.N.forward``
generic    any other model the host samples (UNets included)       ``APPLY_MODEL`` wrapper: the whole model call
=========  ======================================================  ===================================

Every family registers itself from its own file (``registry.py``: name, label, detection, adapter, "auto"
preset); detection, the supported list, the auto presets and Apply's description derive from those rows.
``docs/families.md`` has the full table and the one-file recipe for a new family.

A patched block that finds no ProCache run of its own in progress (see
``run_context.active_run``) calls what was installed before it (another pack's patch, or the host's
unpatched ``forward``), so a stale object patch left on the shared model by the host's clone handling is
harmless.

Composition (both helpers below chain; nothing is overwritten):

* ``dit`` replace patches (:class:`DitBlockReplace`, :func:`install_dit_replace`): a patch another pack
  installed earlier on the same block is kept and called with ProCache's block as its
  ``original_block``, so it wraps the cached block and takes effect on every step.
* object patches of a block's ``forward`` (:class:`ChainedForward`, :func:`install_forward_patch`): the
  earlier patch is called instead of the host's ``forward``. It cannot be split into branches, so while
  a run is active the block is cached as one residual (``earlier(x) - x``, not token-local; one log line).
  A pack that patches after ProCache and calls ``model.get_model_object(key)`` wraps ProCache in turn.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from ...procache_core.errors import UnsupportedModelError
from ..run_context import active_run, active_state

GENERIC = "generic"   # every other model: schedule-only caching of the whole model call (generic.py)


class FamilyAdapter:
    """Base class: every contract the bridges read of an adapter, with its default.

    An adapter holds no per-run state: clones of one Apply share it and may sample at once, so what a
    run decides (e.g. the host's compile settings, ``RunState.block_compile``) lives on the run state.
    The methods below are contracts too (``lanes``, ``cache_layout``, ``grid_hw``, ``modulation_layers``).
    """

    family: str = ""                  # the registered family name ("flux", "generic", ...)
    selective_support: str = "none"   # "full", "partial" or "none": which blocks can recompute tokens
    # the whole model call is cached (the model-level fallback, generic.py): no block patches, no
    # selective compute, no self-verification
    schedule_only: bool = False
    # under the host's TorchCompileModel the branch maths are compiled with the host's settings
    # (adapters/compiled.py); False: the patched blocks run eager
    compiles_branches: bool = False
    # why this adapter stands in for a family's block adapter (the model-level fallback); None otherwise
    fallback_for: str | None = None
    # verify.host_key of the host code the adapter was built on (set by adapter_for; None: not verified)
    _host_key: str | None = None

    def __init__(self, diffusion_model: Any) -> None:
        self.dm = diffusion_model     # the host network the patches read (None: nothing to verify)
        self.num_blocks = 0           # engine blocks (a joint block may count as two streams)
        self._host_noted: set[str] = set()   # reasons already logged by note_host_block

    def install(self, model_patcher: Any, owner: Any) -> None:
        raise NotImplementedError

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        """2-D token grid of the image stream for model input shape ``x_shape`` (spatial token bonus)."""
        return None

    def text_tokens(self, x_shape: tuple, context_tokens: int | None) -> tuple[int, int, int] | None:
        """``(start, stop, first_block)``: the text tokens of the engine blocks that hold text and image
        tokens in one sequence (``CacheRun.set_stream``); None: no such blocks, or they never recompute
        tokens (families with separate text and image streams)."""
        return None

    def describe(self) -> str:
        return f"{self.family}: {self.num_blocks} cached blocks, selective compute {self.selective_support}"

    def note_host_block(self, why: str) -> None:
        """One log line per reason for blocks the adapter hands to the host's own forward."""
        if why not in self._host_noted:
            self._host_noted.add(why)
            log.info("ProCache: %s; those %s blocks run as the host's own (computed every step, not cached).",
                     why, self.family)

    def lanes(self) -> list | None:
        """Residual stream of each engine block, for the memory-light cache; None: one stream."""
        return None

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Engine blocks as ``procache_core.memory.BlockShape`` for model input ``x_shape`` (cache size
        estimate before the first step); None when the family cannot tell. ``cond`` is the first
        positive conditioning entry (reference latents, extra text tokens) when the host gives one."""
        return None

    def modulation_layers(self) -> dict[str, Any]:
        """name -> the adaLN linear whose gate rows reused steps slice (families that slice them)."""
        return {}

    def unsplit_report(self) -> str | None:
        """One line naming the adaLN layers reused steps evaluate whole (quantized / GGUF / patched
        layers), or None when every one is sliced."""
        from .modulation import why_unsliced

        layers = self.modulation_layers()
        reasons: dict[str, list[str]] = {}
        for name, layer in layers.items():
            why = why_unsliced(layer)
            if why is not None:
                reasons.setdefault(why, []).append(name)
        if not reasons:
            return None
        n = sum(len(v) for v in reasons.values())
        parts = "; ".join(f"{why}: {v[0]}{f' and {len(v) - 1} more' if len(v) > 1 else ''}"
                          for why, v in reasons.items())
        return (f"ProCache: {n} of {len(layers)} adaLN layers are not split into gate rows ({parts}); "
                "reused steps evaluate them whole: results are exact, those layers just save no time.")


log = logging.getLogger("ProCache")


def ref_latent_tokens(cond: dict | None, patch: int) -> int:
    """Image tokens the reference latents of an edit (Flux Kontext / Flux.2 / Qwen-Image-Edit) add to the
    image stream: ``ceil(h / patch) * ceil(w / patch)`` per latent in ``cond["reference_latents"]``."""
    refs = (cond or {}).get("reference_latents") or []
    n = 0
    for r in refs:
        shape = getattr(r, "shape", None)
        if shape is not None and len(shape) >= 3:
            n += -(-int(shape[-2]) // patch) * -(-int(shape[-1]) // patch)
    return n


def cond_tokens(cond: dict | None, key: str, attr: str | None = None) -> int:
    """Sequence length (dim 1) of ``cond[key]`` (or of its attribute ``attr``); 0 when absent."""
    t = (cond or {}).get(key)
    if t is not None and attr is not None:
        t = getattr(t, attr, None)
    shape = getattr(t, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 3 else 0


def outside_compile(fn: Callable) -> Callable:
    """Run a patched block's entry point outside ``torch.compile`` (the host's TorchCompileModel).

    The block reads ProCache's per-run Python state (step action, cache dicts, lazy modulation), which
    dynamo would turn into guards that fail on every step and block: 44 graphs for 4 steps of a tiny
    Flux, growing with steps. Excluded, the patched block runs eagerly and the compiled model breaks
    its graph once per block call: the number of graphs is fixed by the model, not by the steps.
    Adapters that set ``compiles_branches`` get the block's tensor maths compiled again, with the host's
    settings, as pure functions of (block module, tensors): ``adapters/compiled.py``.
    """
    import torch

    return torch.compiler.disable(fn, recursive=True)


class DitBlockReplace:
    """A ``dit`` replace patch: the adapter's branch split while a ProCache run of ``owner`` is active,
    the host's own block otherwise (a patch left on a shared model is then harmless).

    ``prev`` is the replace patch that was on the block before (another pack's); it is called with this
    block as its ``original_block``, so it keeps working and wraps the cached block.

    During a run the block goes through ``verify.guarded_block``: compared with ``original_block`` on
    the run's first FULL evaluation, and replaced by it when the adapter fails (see ``verify.py``).
    """

    block_name = "block"   # the dit replace name ("double_block", ...), set by install_dit_replace

    def __init__(self, adapter: "FamilyAdapter", index: int, owner: Any, prev: Callable | None = None) -> None:
        self.adapter, self.index, self.owner = adapter, index, owner
        self.prev = prev

    @outside_compile
    def __call__(self, args: dict, extra: dict) -> dict:
        run = active_run(self.owner)
        host = extra["original_block"]
        if self.prev is not None:
            inner = host if run is None else (lambda a: self._checked(run, a, host))
            return self.prev(args, {**extra, "original_block": inner})
        if run is None:
            return host(args)
        return self._checked(run, args, host)

    def _checked(self, run: Any, args: dict, host: Callable[[dict], dict]) -> dict:
        state = active_state(self.owner)
        if state is None:           # a failure earlier in this evaluation: the host's block from now on
            return host(args)
        if not getattr(state, "guarded", False):  # a bare run state (in-process adapter tests)
            return self.run_block(run, args)
        from .verify import cloned, guarded_block

        return guarded_block(state, self.describe_block, lambda: self.run_block(run, args),
                             lambda copy: host(cloned(args) if copy else args))

    def describe_block(self) -> str:
        """``Class (block_name i)`` of the host block this patch replaces, for the verification warning."""
        mod = _host_block(self.adapter.dm, self.block_name, self.index)
        what = f"{self.block_name} {self.index}"
        return f"{type(mod).__name__} ({what})" if mod is not None else what

    def run_block(self, run: Any, args: dict) -> dict:
        raise NotImplementedError


def install_dit_replace(model_patcher: Any, patch: DitBlockReplace, block_name: str, index: int) -> None:
    """``set_model_patch_replace(patch, "dit", block_name, index)``, keeping an earlier patch as ``prev``.

    An earlier ProCache patch (Apply run twice on one clone) is replaced, not chained: its own ``prev``
    is taken over.
    """
    to = model_patcher.model_options.get("transformer_options", {})
    prev = to.get("patches_replace", {}).get("dit", {}).get((block_name, index))
    if isinstance(prev, DitBlockReplace):
        prev = prev.prev
    patch.prev = prev
    patch.block_name = block_name
    model_patcher.set_model_patch_replace(patch, "dit", block_name, index)


_BLOCK_LISTS = {"double_block": ("double_blocks", "joint_blocks", "double_stream_blocks", "transformer_blocks"),
                "single_block": ("single_blocks", "single_stream_blocks")}


def _host_block(dm: Any, block_name: str, index: int) -> Any:
    """The host module a ``dit`` replace patch stands for (by the usual list names), or None."""
    for attr in _BLOCK_LISTS.get(block_name, ("blocks", "layers", "transformer_blocks")):
        blocks = getattr(dm, attr, None)
        try:
            return blocks[index]
        except (TypeError, IndexError, KeyError):
            continue
    return None


class ChainedForward:
    """Base of object patches replacing a block's ``forward``: ``self.prev`` is the object patch that was
    there before (None: the host's own ``forward``); :meth:`call_prev` calls whichever it is."""

    adapter: Any = None   # the family adapter, for patches that read it (rebound with the patch, multigpu_bridge)

    def __init__(self, block: Any, index: int, owner: Any, prev: Callable | None = None) -> None:
        self.block, self.index, self.owner = block, index, owner
        self.prev = prev
        self._logged = False

    def __init_subclass__(cls, **kwargs) -> None:
        """A family's ``__call__`` runs through ``verify.guarded_block`` during a run (compared with
        :meth:`call_prev` on the first FULL evaluation, replaced by it when the adapter fails), so
        family files need no verification code of their own."""
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "_procache_guarded", False):
            cls.__call__ = _guarded_call(call)

    def call_prev(self, *args, **kwargs):
        if self.prev is not None:
            return self.prev(*args, **kwargs)
        return type(self.block).forward(self.block, *args, **kwargs)

    def prev_as_branch(self, run: Any, x, call: Callable[[Any], Any]):
        """Run an earlier pack's forward patch as one cached residual (it cannot be split into branches)."""
        from ...procache_core.engine import Branch

        if not self._logged:
            self._logged = True
            log.info("ProCache: block %d's forward was patched by another node before ProCache Apply; it is "
                     "cached as one residual (no selective compute in that block).", self.index)
        return run.run_block(self.index, x, (Branch("patched_block", lambda h: call(h) - h, None, False),))


def _guarded_call(call: Callable) -> Callable:
    import functools

    @functools.wraps(call)
    def guarded(self, *args, **kwargs):
        state = active_state(self.owner)
        if state is None or not getattr(state, "guarded", False):  # no run of ours / a bare test run state
            return call(self, *args, **kwargs)
        from .verify import cloned, guarded_block

        def host(copy: bool):
            return self.call_prev(*cloned(args), **cloned(kwargs)) if copy else self.call_prev(*args, **kwargs)

        return guarded_block(state, lambda: f"{type(self.block).__name__} (block {self.index})",
                             lambda: call(self, *args, **kwargs), host)

    guarded = outside_compile(guarded)
    guarded._procache_guarded = True
    return guarded


def install_forward_patch(model_patcher: Any, key: str, make: Callable[[Callable | None], ChainedForward]) -> None:
    """``add_object_patch(key, make(prev))`` where ``prev`` is the object patch already on ``key``."""
    prev = model_patcher.object_patches.get(key)
    if isinstance(prev, ChainedForward):  # Apply run twice on one clone: replace ours, keep what it wrapped
        prev = prev.prev
    model_patcher.add_object_patch(key, make(prev))


def supported_families() -> dict[str, str]:
    """name -> label of every registered family, in detection order (the fallback is not one)."""
    from . import registry

    return {name: fam.label for name, fam in registry.families().items()}


def supported_text() -> str:
    """The families with a block adapter, as the unsupported-model error lists them."""
    return ", ".join(supported_families().values())


def detect_family(model_patcher: Any) -> str:
    """Family name of a ComfyUI MODEL: the first registered family claiming its network (``registry.py``,
    in detection order), else ``"generic"`` (the model-level fallback).

    Only an input that is not a diffusion MODEL raises UnsupportedModelError."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if dm is None:
        raise UnsupportedModelError("model", "is not a diffusion MODEL ComfyUI can sample.",
                                    f"connect the MODEL output of a loader. Supported families: {supported_text()}.")
    from . import registry

    return registry.detect(dm, getattr(model_patcher.model, "model_config", None)) or GENERIC


def model_name(model_patcher: Any) -> str:
    """``Network (ModelConfig)`` of a MODEL, for log lines."""
    dm = model_patcher.model.diffusion_model
    config = getattr(model_patcher.model, "model_config", None)
    return type(dm).__name__ + (f" ({type(config).__name__})" if config is not None else "")


def adapter_for(model_patcher: Any) -> FamilyAdapter:
    """The family's block adapter; the model-level fallback for other models, for a block adapter that
    failed verification earlier in this process (``verify.py``) and for one that cannot be built on
    this host (both logged)."""
    family = detect_family(model_patcher)
    if family == GENERIC:
        return _block_adapter(family, model_patcher)
    from . import verify
    from .generic import GenericAdapter

    dm = model_patcher.model.diffusion_model
    key = verify.host_key(family, dm)
    why = verify.failure(key)
    if why is None:
        try:
            adapter = _block_adapter(family, model_patcher)
            adapter._host_key = key
            return adapter
        except Exception as e:  # the host's network no longer has what the adapter reads
            if isinstance(e, UnsupportedModelError):
                raise
            why = f"{type(e).__name__} while building it: {e}"
            if verify.record(key, why):
                log.warning("ProCache: the %s block adapter cannot be built on ComfyUI %s (%s); this model uses "
                            "the model-level fallback (schedule-only caching of the whole model call). Please report "
                            "this with your ComfyUI version.", family, verify.comfy_version(), why)
    return GenericAdapter(dm, model_name(model_patcher),
                          fallback_for=f"the {family} block adapter failed verification ({why})")


def _block_adapter(family: str, model_patcher: Any) -> FamilyAdapter:
    from . import registry
    from .generic import GenericAdapter

    dm = model_patcher.model.diffusion_model
    return registry.build(family, dm) or GenericAdapter(dm, model_name(model_patcher))
