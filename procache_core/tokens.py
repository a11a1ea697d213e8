"""TokenSelector: which tokens a selective step recomputes, without attention maps.

The reference method ranks tokens by attention maps, which fused attention kernels (what ComfyUI
uses) never materialise. We rank by signals the cache already has, each normalised per sample to
[0, 1] by its maximum and mixed with :class:`~procache_core.settings.ScoreWeights`:

* ``staleness``: steps since the token's cache entry was last refreshed, so skipped tokens rise
  until they are picked;
* ``input_change``: relative L2 change of the token's block input since its last refresh
  (``|x - x_ref| / |x_ref|``): a token whose input moved most has the stalest output;
* ``output_norm``: L2 norm of the cached token-local outputs (large contributions matter more);
* ``value_norm``: L2 norm of the token's cached attention rows (``values``: the outputs of the
  token-mixing branches, and the attention half a fused branch keeps, Flux single blocks). Each row is
  the mix of value rows the attention wrote to the token, so this is DuCa's value-norm idea in the
  form the cache holds it: it needs no attention map, which fused kernels never form;
* ``spatial``: a bonus for the best token of each ``g x g`` group of the 2-D token grid, with
  ``g = ceil(sqrt(N / k))``. There are at most ``k`` groups, so when the bonus dominates every group
  gets one pick before any group gets two, and picks do not clump. Without a usable grid the groups
  are runs of ``g*g`` consecutive tokens.

Everything runs on whole batches with tensor ops (no Python loop over tokens, no host sync). Ties
(equal scores) are broken deterministically, by keys compared only when the scores are equal:

1. with a ``text`` range (joint blocks: text and image tokens in one sequence, see
   :class:`TextTokens`) and ``image_first``, image tokens before text tokens, so a text token is picked
   first only when it scores higher (Flux puts the text first: index order would spend the first picks
   after a full step, where every token ties on staleness, on the prompt);
2. ``tie_break="index"``: the lower index (a stable sort: the first rows of the image); or
   ``"stratified"``: a seeded order where the tokens of each ``g x g`` group of the grid get a random
   rank, the groups a random order, and a pick takes rank 0 of every group before rank 1 of any, so tied
   picks spread over the image and rotate from step to step. It depends only on (step, N, grid), so
   runs repeat bit for bit.

With ``chunks`` > 1 the batch is ``chunks`` equal parts (CFG cond/uncond); scores are averaged over
the parts per sample and the same indices are used in every part.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .settings import ScoreWeights

_EPS = 1e-12
TIE_BREAKS = ("index", "stratified")
TIE_SEED = 20260


class TextTokens(NamedTuple):
    """Which tokens of a stream are text, where text and image tokens share one sequence.

    Tokens ``[start, stop)`` are text in the engine blocks from ``first_block`` on (Flux: the single
    blocks, text first); a block with fewer than ``stop`` tokens is taken to hold no text range.
    """

    start: int
    stop: int
    first_block: int = 0

    def check(self) -> "TextTokens":
        if not (0 <= int(self.start) <= int(self.stop)) or int(self.first_block) < 0:
            from .errors import ProCacheError

            raise ProCacheError("text_tokens", f"is {tuple(self)}; it needs 0 <= start <= stop and first_block >= 0.",
                                "pass the text range of the joint blocks, e.g. (0, 512, 38) for Flux.1.")
        return self


def num_tokens(ratio: float, n: int) -> int:
    """Tokens recomputed for share ``ratio`` of ``n``: ``ceil(ratio * n)`` clamped to [0, n]."""
    if ratio <= 0.0 or n <= 0:
        return 0
    # the small slack keeps e.g. 0.3 * 10 = 3.0000000000000004 from rounding up to 4
    return max(0, min(n, math.ceil(ratio * n - 1e-9)))


def group_side(n: int, k: int) -> int:
    """Side ``g`` of the spatial groups: the smallest with at most ``k`` groups of ``g*g`` tokens."""
    if k <= 0 or k >= n:
        return 1
    return max(1, math.ceil(math.sqrt(n / k)))


def _per_sample_max_norm(v: Tensor) -> Tensor:
    return v / v.amax(dim=-1, keepdim=True).clamp_min(_EPS)


def _chunk_mean(v: Tensor, chunks: int) -> Tensor:
    """(B, N) -> (B // chunks, N): mean over the ``chunks`` equal parts of the batch."""
    if chunks == 1:
        return v
    b, n = v.shape
    return v.view(chunks, b // chunks, n).mean(dim=0)


def group_best(scores: Tensor, g: int, grid_hw: tuple[int, int] | None) -> Tensor:
    """Bool mask (S, N): the token holding the maximum of its group (see module docstring)."""
    s, n = scores.shape
    if g <= 1:
        return torch.ones_like(scores, dtype=torch.bool)
    if grid_hw is not None and grid_hw[0] * grid_hw[1] == n:
        h, w = grid_hw
        pooled = F.max_pool2d(scores.view(s, 1, h, w), kernel_size=g, stride=g, ceil_mode=True)
        hp, wp = pooled.shape[-2:]
        # nearest upsampling by view/expand (repeat_interleave may synchronise on CUDA)
        up = pooled.view(s, hp, 1, wp, 1).expand(s, hp, g, wp, g).reshape(s, hp * g, wp * g)
        up = up[:, :h, :w].reshape(s, n)
    else:
        size = g * g
        pad = (-n) % size
        padded = F.pad(scores, (0, pad), value=float("-inf")) if pad else scores
        groups = padded.view(s, -1, size)
        up = groups.amax(dim=-1, keepdim=True).expand_as(groups).reshape(s, -1)[:, :n]
    return scores >= up


class TokenSelector:
    """Attention-free token scores and top-k selection shared across CFG chunks."""

    def __init__(self, weights: ScoreWeights | None = None, grid_hw: tuple[int, int] | None = None,
                 tie_break: str = "index", image_first: bool = False) -> None:
        self.weights = weights if weights is not None else ScoreWeights()
        self.grid_hw = grid_hw
        self.tie_break = tie_break
        self.image_first = image_first
        self._ties: dict[tuple, Tensor] = {}
        self._keys: dict[tuple, Tensor] = {}

    def tie_key(self, step: int, n: int, k: int, grid_hw: tuple[int, int] | None,
                text: tuple[int, int] | None, device) -> Tensor | None:
        """(N,) float32 secondary key, compared only between equal scores (higher first), or None for
        plain index order. Image tokens (with ``image_first``) rank above every text token; inside each
        part the stratified order (with ``tie_break="stratified"``), else the index, decides."""
        a, b = (int(text[0]), int(text[1])) if text is not None else (0, 0)
        split = self.image_first and 0 <= a < b <= n
        strat = self.tie_break == "stratified"
        if not split and not strat:
            return None
        key = (int(step) if strat else 0, n, k, grid_hw, (a, b) if split else None, str(device))
        if key in self._keys:
            return self._keys[key]
        if not split:
            out = self.tie_order(step, n, k, grid_hw, device)
        else:
            is_text = torch.zeros(n, dtype=torch.bool)
            is_text[a:b] = True
            out = torch.empty(n, dtype=torch.float32)
            n_img, n_txt = n - (b - a), b - a
            if strat:  # each part its own stratified order; the image grid applies to the image part
                if n_img:
                    out[~is_text] = 1.0 + self.tie_order(step, n_img, k, grid_hw, "cpu")
                out[is_text] = self.tie_order(step, n_txt, k, None, "cpu")
            else:
                out[~is_text] = 1.0
                out[is_text] = 0.0
            out = out.to(device)
        if len(self._keys) > 64:
            self._keys.clear()
        self._keys[key] = out
        return out

    def tie_order(self, step: int, n: int, k: int, grid_hw: tuple[int, int] | None, device) -> Tensor:
        """(N,) float32 in [0, 1): the stratified tie-break priority of each token (higher first)."""
        grid = self._grid(n, grid_hw)
        g = group_side(n, k)
        key = (int(step), n, g, grid, str(device))
        hit = self._ties.get(key)
        if hit is not None:
            return hit
        gen = torch.Generator().manual_seed(TIE_SEED + 7919 * int(step))
        idx = torch.arange(n)
        if grid is not None:
            h, w = grid
            gw = -(-w // g)
            group = (idx // w // g) * gw + (idx % w) // g
        else:
            group = idx // (g * g)
        n_groups = int(group.max()) + 1
        group_rank = torch.randperm(n_groups, generator=gen)[group]
        within = torch.empty(n, dtype=torch.long)
        noise = torch.rand(n, generator=gen)
        order = torch.argsort(group * 2.0 + noise)  # by group, random inside it
        sizes = torch.bincount(group, minlength=n_groups)
        starts = torch.cumsum(sizes, 0) - sizes
        within[order] = torch.arange(n) - starts[group[order]]
        pos = within * n_groups + group_rank           # 0 = first pick
        prio = 1.0 - (pos.to(torch.float32) + 1.0) / (float(pos.max()) + 2.0)
        prio = prio.to(device)
        if len(self._ties) > 64:
            self._ties.clear()
        self._ties[key] = prio
        return prio

    def _grid(self, n: int, grid_hw: tuple[int, int] | None) -> tuple[int, int] | None:
        grid = grid_hw if grid_hw is not None else self.grid_hw
        if grid is not None and grid[0] * grid[1] == n:
            return (int(grid[0]), int(grid[1]))
        side = math.isqrt(n)
        return (side, side) if side * side == n else None

    def scores(self, *, step: int, k: int, last_refresh: Tensor | None = None,
               x_in: Tensor | None = None, input_ref: Tensor | None = None,
               cached: Sequence[Tensor] = (), values: Sequence[Tensor] = (), chunks: int = 1,
               grid_hw: tuple[int, int] | None = None, text: tuple[int, int] | None = None) -> Tensor:
        """Importance (B // chunks, N) in float32; higher = recompute first. Ties are ordered by
        :meth:`tie_key`, not here.

        ``last_refresh`` (B, N) int steps, ``x_in``/``input_ref`` (B, N, C) current and cached block
        input, ``cached`` token-local cached outputs (B, N, C), ``values`` cached attention rows
        (B, N, D). Missing inputs drop their term. ``text``: the text range (spatial groups then cover
        the image tokens only).
        """
        w = self.weights
        ref = last_refresh if last_refresh is not None else (
            x_in if x_in is not None else (cached[0] if len(cached) else values[0]))
        b, n = ref.shape[0], ref.shape[1]
        total = torch.zeros((b // chunks, n), dtype=torch.float32, device=ref.device)
        if w.staleness and last_refresh is not None:
            age = (step - last_refresh).to(torch.float32)
            total = total + w.staleness * _per_sample_max_norm(_chunk_mean(age, chunks))
        if w.input_change and x_in is not None and input_ref is not None:
            # subtract in float32: in bf16/fp16 the difference itself would be rounded
            diff = torch.linalg.vector_norm(x_in.float() - input_ref.float(), dim=-1)
            base = torch.linalg.vector_norm(input_ref, dim=-1, dtype=torch.float32)
            rel = diff / (base + 1e-6)
            total = total + w.input_change * _per_sample_max_norm(_chunk_mean(rel, chunks))
        if w.output_norm and len(cached):
            norm = sum(torch.linalg.vector_norm(t, dim=-1, dtype=torch.float32) for t in cached)
            total = total + w.output_norm * _per_sample_max_norm(_chunk_mean(norm, chunks))
        if w.value_norm and len(values):
            vnorm = sum(torch.linalg.vector_norm(t, dim=-1, dtype=torch.float32) for t in values)
            total = total + w.value_norm * _per_sample_max_norm(_chunk_mean(vnorm, chunks))
        if w.spatial:
            g = group_side(n, k)
            if g > 1:
                a, b = (int(text[0]), int(text[1])) if text is not None else (0, 0)
                if 0 <= a < b <= n and n - (b - a) > 0:  # the grid is the image part's
                    img = torch.cat([total[:, :a], total[:, b:]], dim=1)
                    best_img = group_best(img, group_side(img.shape[1], k), self._grid(img.shape[1], grid_hw))
                    best_txt = group_best(total[:, a:b], group_side(b - a, k), None)
                    best = torch.cat([best_img[:, :a], best_txt, best_img[:, a:]], dim=1)
                else:
                    best = group_best(total, g, self._grid(n, grid_hw))
                total = total + w.spatial * best.to(torch.float32)
        return total

    @staticmethod
    def select(scores: Tensor, k: int, key: Tensor | None = None) -> Tensor:
        """Indices (S, k) int64 of the ``k`` highest scores, ascending; ties -> higher ``key`` (N,),
        then the lower index."""
        s, n = scores.shape
        k = max(0, min(int(k), n))
        if k == n:
            return torch.arange(n, device=scores.device).expand(s, n).contiguous()
        order = TokenSelector.order(scores, k, key)
        return torch.sort(order, dim=-1).values  # ascending: contiguous-ish gathers, reproducible

    @staticmethod
    def order(scores: Tensor, k: int, key: Tensor | None = None) -> Tensor:
        """Indices (S, k) of the ``k`` highest scores, best first; ties -> higher ``key`` (N,), then
        the lower index. Exact: the key never outweighs a score difference, however small."""
        s, n = scores.shape
        k = max(0, min(int(k), n))
        if key is None:
            return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
        # lexicographic by two stable sorts: the tie key first, then the score
        perm = torch.sort(key, descending=True, stable=True).indices
        inner = torch.sort(scores[:, perm], dim=-1, descending=True, stable=True).indices[:, :k]
        return perm[inner]

    def _key(self, step: int, k: int, scores: Tensor, inputs: dict) -> Tensor | None:
        return self.tie_key(step, scores.shape[-1], k, inputs.get("grid_hw"), inputs.get("text"), scores.device)

    def rank(self, *, step: int, k: int, chunks: int = 1, **inputs) -> Tensor:
        """Like ``__call__`` but best first, so ``rank(...)[:, :j]`` is the best ``j`` for any j <= k
        (branches with different token shares select from one ranking)."""
        scores = self.scores(step=step, k=k, chunks=chunks, **inputs)
        idx = self.order(scores, k, self._key(step, k, scores, inputs))
        return idx.repeat(chunks, 1) if chunks > 1 else idx

    def __call__(self, *, step: int, k: int, chunks: int = 1, **inputs) -> Tensor:
        """Indices (B, k) for the whole batch: the per-sample pick repeated in every chunk."""
        scores = self.scores(step=step, k=k, chunks=chunks, **inputs)
        idx = self.select(scores, k, self._key(step, k, scores, inputs))
        return idx.repeat(chunks, 1) if chunks > 1 else idx
