"""LazyModulation: a block's adaLN output, computed only as far as the step needs it.

adaLN-Zero blocks (DiT, Flux, SD3) turn the conditioning vector into shift/scale/gate chunks with one
``Linear(C, k*C)`` per block. On a reused (cached) step a block only needs its *gates* (the branch
outputs come from the cache), yet evaluating the whole linear reads all ``k*C*C`` weights. With a
small batch that product is a matrix-vector product bound by memory bandwidth, so on the hardware
where it matters (CPUs, large models on GPUs) a reused step costs what reading the weights costs.
:class:`LazyModulation` computes the full modulation once, exactly as the unpatched block does,
the first time a shift or scale is needed (every computed step), and otherwise computes the gate
chunks alone from their rows of the weight (:func:`linear_rows`), which reads 1/3 (or less) of it.

Exactness: computed steps use the host's own expression, so an all-FULL schedule stays bitwise equal
to the unpatched model. A gate computed from a row slice is the same dot products but the kernel
may sum in another order, so it can differ in the last bits; it is only used on reused steps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor


def linear_rows(x: Tensor, weight: Tensor, bias: Tensor | None, start: int, stop: int) -> Tensor:
    """``F.linear(x, weight, bias)[..., start:stop]`` without touching the other rows of ``weight``."""
    return F.linear(x, weight[start:stop], None if bias is None else bias[start:stop])


class LazyModulation:
    """Chunks of one adaLN evaluation, computed on demand.

    ``full`` returns every chunk with the host's arithmetic. ``chunk_fn(i)``, when given, returns
    chunk ``i`` alone (e.g. from :func:`linear_rows`); without it every request falls back to
    ``full``. Chunks are returned as ``full`` / ``chunk_fn`` produce them (no reshaping).
    """

    __slots__ = ("_full_fn", "_chunk_fn", "_full", "_partial", "partial_evals")

    def __init__(self, full: Callable[[], Sequence[Tensor]],
                 chunk_fn: Callable[[int], Tensor] | None = None) -> None:
        self._full_fn = full
        self._chunk_fn = chunk_fn
        self._full: Sequence[Tensor] | None = None
        self._partial: dict[int, Tensor] = {}
        self.partial_evals = 0  # chunks computed alone (for tests and accounting)

    @property
    def computed(self) -> bool:
        """True once the full modulation has been evaluated."""
        return self._full is not None

    def __getitem__(self, i: int) -> Tensor:
        """Chunk ``i`` of the full evaluation (used for shift/scale: always exact)."""
        if self._full is None:
            self._full = self._full_fn()
        return self._full[i]

    def gate(self, i: int) -> Tensor:
        """Chunk ``i`` from the full evaluation when it exists, else computed alone when possible."""
        if self._full is not None or self._chunk_fn is None:
            return self[i]
        out = self._partial.get(i)
        if out is None:
            out = self._partial[i] = self._chunk_fn(i)
            self.partial_evals += 1
        return out

    def lazy_gate(self, i: int, transform: Callable[[Tensor], Tensor] | None = None) -> Callable[[], Tensor]:
        """A zero-argument callable for :class:`~procache_core.engine.Branch` ``gate``."""
        if transform is None:
            return lambda: self.gate(i)
        return lambda: transform(self.gate(i))
