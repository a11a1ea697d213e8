"""Step reuse: a CACHED evaluation returns the model's last computed output without running the model.

Block reuse (the default) still runs the host's embedders, every block's adaLN gate rows and the final
layer on a reused step, and on the small in-host models that fixed work is 10-16% of a full step
(benchmarks/results/step_cost_cpu.md). Step reuse skips the model call itself, as the step-level caches
(EasyCache, MagCache, TeaCache's whole-step skip) do: the runtime bridge asks :meth:`StepOutputs.reuse`
before it calls the model and hands every computed output to :meth:`StepOutputs.keep`.

What is kept is what the host's ``apply_model`` returns, the clean-sample estimate ``D`` (the model-level
fallback keeps the same thing, for the reason its docstring gives: the sampler forms its update from the
*current* input and noise level, so reusing ``D`` is reusing the last noise / velocity prediction for
deterministic Euler). With a forecast order ``p`` > 0 it is extrapolated on the noise axis like a block's
branch output (:mod:`procache_core.forecast`, with the same checked gain), so forecasting costs one
latent-sized tensor per order and stream, not one per block.

One entry per stream (CFG layout), valid inside the segment it was computed in (the engine's rule for
every cache): a stream first seen on a reused step, a new shape or a new segment computes instead.
Computed and selective evaluations run the blocks as before (the block cache stays what selective steps
need). Host independent: the bridge passes tensors and the engine's step state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import torch
from torch import Tensor

from .forecast import FIRST_GAIN, extend, fit_gain, predict


@dataclass
class StepEntry:
    """The newest computed output of one stream and its forecast history."""

    segment: int
    shape: tuple[int, ...]
    d0: Tensor
    nodes: tuple[float, ...] = ()
    diffs: list[Tensor] = field(default_factory=list)
    gain: Tensor | None = None
    blocks: int = 0         # run_block calls the computed evaluation made (what a reused one skips)
    flops: float = 0.0      # and their summed full cost (RunStats accounting of the skipped blocks)


class StepOutputs:
    """Per-stream model outputs for step reuse (one object per run, dropped with it)."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, StepEntry] = {}
        self._first_gain = torch.tensor(FIRST_GAIN)

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return sum(e.d0.numel() * e.d0.element_size() + sum(d.numel() * d.element_size() for d in e.diffs)
                   for e in self._entries.values())

    def history_nbytes(self) -> int:
        return sum(d.numel() * d.element_size() for e in self._entries.values() for d in e.diffs)

    def reuse(self, key: Hashable, segment: int, shape: tuple[int, ...]) -> StepEntry | None:
        """The entry a CACHED evaluation of stream ``key`` (input ``shape``, in ``segment``) may reuse, else None."""
        e = self._entries.get(key)
        if e is None or e.segment != segment or e.shape != tuple(shape):
            return None
        return e

    def output(self, e: StepEntry, t: float) -> Tensor:
        """The reused output: a copy of the stored one, or its forecast at ``t``."""
        if not e.diffs:
            return e.d0.clone()  # the sampler owns what it gets; the stored output stays as computed
        return predict(e.d0, e.diffs, e.nodes, t, self._first_gain if e.gain is None else e.gain)

    def keep(self, key: Hashable, segment: int, out: Tensor, t: float, order: int, blocks: int,
             flops: float) -> None:
        """Store a computed output of stream ``key`` (and extend its forecast history when ``order`` > 0)."""
        out = out.detach().clone()  # the sampler owns the tensor it was given; what is kept stays as computed
        old = self._entries.get(key)
        if old is None or old.shape != tuple(out.shape) or order <= 0:
            self._entries[key] = StepEntry(segment, tuple(out.shape), out, (float(t),), [], None, blocks, flops)
            return
        gain = fit_gain(old.d0, old.diffs, old.nodes, t, out, old.gain) if old.diffs else old.gain
        nodes, diffs = extend(old.nodes, old.d0, old.diffs, out, t, order)
        self._entries[key] = StepEntry(segment, tuple(out.shape), out, nodes, diffs, gain, blocks, flops)
