"""One sampling run's state (:class:`RunState`) and how it maps model evaluations to denoising steps.

Which step an evaluation belongs to comes from the sampler itself; ``runtime_bridge``'s module docstring
tells the whole rule (callbacks, correctors at the next sigma, samplers without a callback). A run never
writes to its config or adapter: clones of one Apply may sample at once.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from ..procache_core.engine import CacheRun
from ..procache_core.schedule import Action, Schedule
from .run_context import ProCacheConfig

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
