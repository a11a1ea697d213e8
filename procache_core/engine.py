"""CacheRun: the per-step runtime of ProCache (host independent; never imports comfy).

A model adapter splits each transformer block into *branches* (self-attention, cross-attention,
MLP, ...) that each add ``gate * compute(x)`` to the residual stream, and hands them to
:meth:`CacheRun.run_block`. The run decides per block, from the step's scheduled action, whether to
compute, reuse or partly recompute the branch outputs. See ``docs/runtime.md``.

Exactness: every branch is applied as ``x = x + gate * out`` (``x + out`` without a gate), the same
arithmetic as the unpatched blocks, so an all-FULL schedule reproduces the model bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

from .cache import BlockCache, BlockEntry, block_signature, own
from .errors import ProCacheError
from .forecast import FIRST_GAIN, ORDER_NAMES, extend, fit_gain, predict
from .memory import CacheMemory
from .schedule import Action, Schedule
from .settings import SelectiveSettings, branch_kind
from .stats import RunStats, estimate_branch_flops
from .step_reuse import StepOutputs
from .storage import CacheStorage
from .tokens import TextTokens, TokenSelector, num_tokens


@dataclass
class Branch:
    """One residual branch of a block: ``x = x + gate * compute(x)``."""

    name: str                              # "attn", "cross", "mlp", ... (unique within the block)
    compute: Callable[[Tensor], Tensor]    # x (B, N', C) -> branch output BEFORE gating (B, N', C)
    gate: Tensor | Callable[[], Tensor] | None  # multiplies the output (broadcasts to (B, N, C)), a
                                           # zero-argument callable giving it (evaluated only when
                                           # used: see procache_core.modulation), or None
    token_local: bool                      # True when output row n depends only on token n (MLP, cross-attn)
    flops: float | None = None             # optional cost hint for ONE batch row over all N tokens
    # A branch that mixes tokens only through part of its input (Flux single blocks: linear2 over
    # [attention, MLP]) can still recompute chosen tokens: ``aux()`` (called after ``compute`` on
    # computed steps) returns that token-mixing half (B, N, D), which deep blocks keep; on selective
    # steps ``partial(x_rows, aux_rows)`` gives the output rows (B, k, C) of the chosen tokens.
    aux: Callable[[], Tensor | None] | None = None
    partial: Callable[[Tensor, Tensor], Tensor] | None = None
    # The host adds this residual with one fused multiply-add, ``torch.addcmul(x, gate, out)`` (one
    # rounding, not the two of ``x + gate * out``): the engine then does the same, so an all-FULL
    # schedule stays bit for bit the host's. Ignored when ``gate`` is None.
    fused: bool = False


def _apply(x: Tensor, gate: Tensor | Callable[[], Tensor] | None, out: Tensor, fused: bool = False) -> Tensor:
    """The residual update, written exactly as the unpatched blocks write it: ``x + gate * out``, or
    ``torch.addcmul(x, gate, out)`` for a ``fused`` branch (the host's fused multiply-add rounds once).

    A callable gate is resolved here, after the branch's ``compute`` ran on computed steps, so the
    block's modulation is evaluated in full there and only its gate rows on reused steps.
    """
    if callable(gate):
        gate = gate()
    if gate is None:
        return x + out
    return torch.addcmul(x, gate, out) if fused else x + gate * out


class CacheRun:
    """Per-run state: created when sampling starts, closed when it ends.

    Call :meth:`begin_step` once per model evaluation (extra evaluations inside one solver step
    pass the same step index), :meth:`set_stream` before the blocks when the batch layout can vary,
    then :meth:`run_block` for every block in order. ``selective=None`` means default settings.
    Each stream key keeps its own full cache, so hosts should use a small fixed set of keys.
    ``memory`` says where the cache lives and whether it is light (``procache_core.memory``);
    ``lanes`` names the residual stream of each block for light mode (default: one stream).
    """

    def __init__(self, schedule: Schedule, selective: SelectiveSettings | None, num_blocks: int,
                 grid_hw: tuple[int, int] | None = None, memory: CacheMemory | None = None,
                 lanes: Sequence[Hashable] | None = None) -> None:
        if num_blocks <= 0:
            raise ProCacheError("num_blocks", f"is {num_blocks}; the model must have at least one block.",
                                "pass the number of transformer blocks of the patched model.")
        self.schedule = schedule
        self.selective = (selective if selective is not None else SelectiveSettings()).validate()
        self.num_blocks = int(num_blocks)
        self.first_selective_block = self.selective.first_selective_block(self.num_blocks)
        self.grid_hw = grid_hw
        self.cache = BlockCache()
        self.memory = CacheMemory()
        self._lanes = list(lanes) if lanes is not None else [0] * self.num_blocks
        if len(self._lanes) != self.num_blocks:
            raise ProCacheError("lanes", f"names {len(self._lanes)} blocks, the model has {self.num_blocks}.",
                                "give one lane per engine block.")
        self._lane_span: dict[Hashable, tuple[int, int]] = {}
        for i in range(self.first_selective_block):
            first = self._lane_span.get(self._lanes[i], (i, i))[0]
            self._lane_span[self._lanes[i]] = (first, i)
        self._lane_start: dict[Hashable, tuple] = {}   # lane -> ((eval, stream), input of its first block,
                                                        #          the lane's next block expected through the run)
        self._lane_next: dict[int, int] = {}           # shallow block -> the next shallow block of its lane (-1)
        last_in: dict[Hashable, int] = {}
        for i in range(self.first_selective_block):
            if self._lanes[i] in last_in:
                self._lane_next[last_in[self._lanes[i]]] = i
            last_in[self._lanes[i]] = i
            self._lane_next[i] = -1
        self._lane_used: dict[Hashable, tuple] = {}
        # stack reuse (CacheMemory.stack): each lane's first and last block over ALL blocks; a CACHED
        # evaluation adds one residual per lane at its first block and passes the rest through
        self._stack_span: dict[Hashable, tuple[int, int]] = {}
        self._stack_next: dict[int, int] = {}   # block -> the next block of its lane (-1 after the last)
        last_of: dict[Hashable, int] = {}
        for i, lane in enumerate(self._lanes):
            self._stack_span[lane] = (self._stack_span.get(lane, (i, i))[0], i)
            if lane in last_of:
                self._stack_next[last_of[lane]] = i
            last_of[lane] = i
            self._stack_next[i] = -1
        self._stack_start: dict[Hashable, tuple] = {}  # lane -> ((eval, stream), input of its first block)
        self._stack_used: dict[Hashable, tuple] = {}
        self._seen_costs: dict[tuple, list[float]] = {}  # (block, shape) -> branch costs (stats of reused blocks)
        self._memo: dict[Hashable, tuple] = {}          # per-evaluation work of the adapters (memo())
        self.selector = TokenSelector(self.selective.weights, grid_hw, self.selective.tie_break,
                                      self.selective.image_first)
        self.stats = RunStats()
        self.set_memory(memory or CacheMemory())
        has_selective = any(a == Action.SELECTIVE for a in schedule.actions)
        # token scoring state is only kept when some step can use it
        self._track_tokens = self.selective.enabled and self.selective.ratio > 0.0 and has_selective
        self._keep_input = self._track_tokens and self.selective.weights.input_change > 0.0
        self._step = 0
        self._action = Action.FULL
        self._eval = -1
        self._stream_key: Hashable = None
        self._chunks = 1
        self._stream_grid: tuple[int, int] | None = None
        self._stream_text: TextTokens | None = None
        self._closed = False
        # segment of a step = the scheduled FULL step that opens its run of reused steps; a stream's
        # cache is only reused inside the segment it was computed in
        seg, self._segment_of = 0, []
        for i, a in enumerate(schedule.actions):
            seg = i if a == Action.FULL else seg
            self._segment_of.append(seg)
        self._segment = 0
        self._t = 0.0   # noise-axis value of the current evaluation (forecasting)
        self._forecast_off = False
        sel = self.selective
        self._guard = float(sel.drift_guard)
        self._guard_left = max(1, round(sel.drift_budget * len(schedule))) if self._guard and sel.drift_budget > 0 else 0
        if self._guard:
            self.stats.drift_guard = f"x{self._guard:g} (at most {self._guard_left})"
        self._first_gain = torch.tensor(FIRST_GAIN)
        self.step_outputs = StepOutputs()   # step reuse (CacheMemory.step): the model's outputs per stream
        self._eval_mark = (0, 0.0, 0.0)     # stats' block count, cost and done count when the current evaluation began
        self._native_counts: dict[tuple, tuple[int, float]] = {}  # (stream, shape) -> a computed eval's counts
        self._guard_vs_step()
        self.stats.start()

    def set_memory(self, memory: CacheMemory) -> None:
        """Where the cache lives; only before anything is cached (e.g. after a size check)."""
        if len(self.cache):
            raise ProCacheError("memory", "cannot change once the cache holds tensors.",
                                "choose the cache placement before the first step.")
        self.memory = memory
        self.cache.storage = CacheStorage(memory.placement, memory.dtype)
        self.stats.cache_placement = memory.describe()
        if hasattr(self, "_guard"):
            self._guard_vs_step()
        if getattr(self, "_forecast_off", False):  # drop_forecast said why
            return
        self.stats.forecast = ORDER_NAMES[self.selective.forecast]
        if self.selective.forecast and (memory.placement != "device" or memory.dtype is not None):
            # the differences are formed from the newest outputs as working tensors: a cache kept in CPU
            # memory or in another dtype would convert every old output back for it, so reused steps copy
            where = "CPU memory" if memory.placement != "device" else f"{memory.dtype}"
            self.stats.forecast = f"off (copy): the cache is kept in {where}"

    def _guard_vs_step(self) -> None:
        """Step reuse skips the model call, so the drift guard's first-block probe has nothing to run in."""
        if self.memory.step and self._guard:
            self._guard, self._guard_left = 0.0, 0
            self.stats.drift_guard = ""

    # -- step / stream -----------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self._step

    @property
    def action(self) -> Action:
        """The scheduled action of the current step."""
        return self._action

    @property
    def closed(self) -> bool:
        return self._closed

    def begin_step(self, step: int, noise: float | None = None) -> Action:
        """Start a model evaluation at ``step``; returns its scheduled action.

        ``noise``: where this evaluation sits on the noise axis (the bridge passes the model's timestep,
        scaled to about one unit per step); forecasting extrapolates along it. Without it the step index
        is the axis. Steps outside the schedule run FULL (safe default if a sampler takes more steps).
        """
        self._t = float(step if noise is None else noise)
        self.stats.observe_cache_bytes(self.cache.nbytes() + self.step_outputs.nbytes(),
                                       self.cache.nbytes_by_device(),
                                       self.cache.history_nbytes() + self.step_outputs.history_nbytes())
        self._eval_mark = (self.stats.block_evals_full, self.stats.flops_full, self.stats.block_evals_done)
        step = int(step)
        inside = 0 <= step < len(self.schedule)
        action = self.schedule[step] if inside else Action.FULL
        self._step, self._action = step, action
        self._segment = self._segment_of[step] if inside else step
        self._eval += 1
        self._memo.clear()
        self.stats.record_step(action)
        return action

    def set_stream(self, key: Hashable, chunks: int = 1, grid_hw: tuple[int, int] | None = None,
                   text_tokens: TextTokens | tuple[int, int, int] | None = None) -> None:
        """Select the cache set for the next blocks.

        ``key`` names the batch layout (e.g. which CFG branches are in it); ``chunks`` is the number
        of equal batch parts that share one token selection; ``grid_hw`` (optional) the 2-D token grid
        of this stream, overriding the run's; ``text_tokens`` (optional) which tokens are text in the
        blocks that hold text and image tokens in one sequence (selective steps then pick image tokens
        first among equal scores: procache_core.tokens).
        """
        chunks = int(chunks)
        if chunks < 1:
            raise ProCacheError("chunks", f"is {chunks}; it must be at least 1.", "pass 1 for an unbatched call.")
        self._stream_key = key
        self._chunks = chunks
        self._stream_grid = grid_hw
        self._stream_text = None if text_tokens is None else TextTokens(*text_tokens).check()
        self.cache.stream(key).chunks = chunks

    # -- step reuse ---------------------------------------------------------------------------
    @property
    def keeps_blocks(self) -> bool:
        """Whether computed evaluations store their block outputs. Under step reuse a reused evaluation runs
        no block, so only selective steps would read the block cache: without them nothing is stored (a
        computed step then costs what the unpatched model does, plus the engine's bookkeeping)."""
        return self.keeps_blocks_with(self.memory.step)

    def keeps_blocks_with(self, step: bool) -> bool:
        """:attr:`keeps_blocks` were the memory's step reuse ``step`` (asked before the memory is set)."""
        return not step or self._track_tokens

    def reuse_step(self, x: Tensor) -> Tensor | None:
        """Under step reuse (``CacheMemory.step``), the model output a CACHED evaluation of the current
        stream returns without running the model (input ``x``); None when the model must run (another
        action, no output of this stream and shape computed in this segment). procache_core.step_reuse."""
        if not self.memory.step or self._closed or self._action != Action.CACHED:
            return None
        entry = self.step_outputs.reuse(self._stream_key, self._segment, tuple(x.shape))
        if entry is None:  # the blocks then run without a cache and count the forced evaluation
            return None
        self.stats.record_skipped(entry.blocks, entry.flops)
        return self.step_outputs.output(entry, self._t)

    def keep_step(self, out: Tensor) -> None:
        """Under step reuse, keep the output of a model evaluation that ran (computed or selective)."""
        if not self.memory.step or self._closed:
            return
        blocks = self.stats.block_evals_full - self._eval_mark[0]
        flops = self.stats.flops_full - self._eval_mark[1]
        key = (self._stream_key, tuple(out.shape))
        if self._action == Action.FULL and blocks > 0 and self.stats.block_evals_done - self._eval_mark[2] == blocks:
            self._native_counts[key] = (blocks, flops)  # every block computed: what a native evaluation counts
        self._keep(out, blocks, flops)

    def native_eval(self, x: Tensor) -> bool:
        """Whether this evaluation may run the model's own blocks, untouched by the engine.

        Under step reuse without selective steps no block output is ever read back, so a FULL evaluation
        only has to produce the model's output and count its blocks. Once one evaluation of this stream and
        shape has run through the blocks (which counted them), the next ones call the host's blocks as they
        are: no per-block wrapper work, and the result is the unpatched model's by construction.
        :meth:`keep_native` then keeps the output and counts what that first evaluation counted."""
        return (self.memory.step and not self.keeps_blocks and not self._closed and self._action == Action.FULL
                and (self._stream_key, tuple(x.shape)) in self._native_counts)

    def keep_native(self, out: Tensor) -> None:
        """After a :meth:`native_eval` evaluation: count its blocks as computed and keep its output."""
        blocks, flops = self._native_counts[(self._stream_key, tuple(out.shape))]
        self.stats.record_native(blocks, flops)
        self._keep(out, blocks, flops)

    def _keep(self, out: Tensor, blocks: int, flops: float) -> None:
        order = 0 if self._forecast_off else self.selective.forecast
        self.step_outputs.keep(self._stream_key, self._segment, out, self._t, order, blocks, flops)

    # -- blocks -------------------------------------------------------------------------------
    def forecast_order(self, x: Tensor) -> int:
        """The forecast order used for stream ``x`` (0 when the cache is not kept as working tensors)."""
        order = 0 if self._forecast_off else self.selective.forecast
        return order if order and self.cache.storage.passthrough(x.dtype) else 0

    def drop_forecast(self, reason: str) -> None:
        """Reused steps copy for the rest of this run (e.g. the history would not fit); only before
        anything is cached, so every block behaves the same."""
        if len(self.cache):
            raise ProCacheError("forecast", "cannot change once the cache holds tensors.",
                                "decide it before the first step.")
        self._forecast_off = True
        self.stats.forecast = f"off (copy): {reason}"

    def _forecast(self, entry: BlockEntry, name: str) -> Tensor:
        """A reused branch output: the cached one, or its forecast at this evaluation's noise value."""
        base = entry.outputs[name]
        diffs = entry.diffs.get(name)
        if not diffs:
            return base
        gain = entry.gains.get(name)
        if gain is None:  # no forecast of this branch was checked yet: trust half of it (FIRST_GAIN)
            gain = self._first_gain
        return predict(base, diffs, entry.nodes, self._t, gain)

    def memo(self, key: Hashable, make: Callable[[], object], keep: object = None) -> object:
        """``make()`` computed once per model evaluation (cleared by :meth:`begin_step`): work every block
        of an evaluation shares, e.g. the activation of the conditioning vector all adaLN layers read.
        ``keep`` (e.g. the tensor whose ``id()`` is in ``key``) is held with the value, so that id cannot
        be reused by another object while the memo lives."""
        hit = self._memo.get(key)
        if hit is not None and hit[0] is keep:
            return hit[1]
        value = make()
        self._memo[key] = (keep, value)
        return value

    def reuse_block(self, block: int, x: Tensor, names: Sequence[str],
                    gates: Callable[[], Sequence[Tensor | None]], fused: bool = False) -> Tensor | None:
        """The new stream when this evaluation reuses ``block`` entirely, else None.

        The cheap path of a reused step: the adapter asks before it builds its branches. ``names`` are the
        block's branch names in order, ``gates()`` gives their gates (called only when the current gates
        are applied to cached outputs; a stack or light residual needs none). The arithmetic is exactly
        :meth:`run_block`'s for the same block, so an adapter may take this path whenever it returns a
        tensor and call :meth:`run_block` with its branches when it returns None (something is computed:
        FULL, selective rows, the drift guard's probe, a missing cache)."""
        if self._closed or self._action == Action.FULL:
            return None
        costs = self._seen_costs.get((block, tuple(x.shape)))
        if costs is None:  # never computed in this layout: nothing to reuse
            return None
        if self.memory.stack and self._action == Action.CACHED:
            out = self._stack_reuse(block, x, costs)
            if out is not None:
                return out
        if self.memory.light and block < self.first_selective_block:
            return self._light_reuse(block, x, costs)
        names = tuple(names)
        signature = block_signature(x, names)
        action, entry, stream = self._plan(block, signature)
        if action != Action.CACHED or entry is None:
            return None
        if self._guard and block == 0 and self.cache.storage.passthrough(x.dtype):
            return None
        work = self.cache.checkout(self._stream_key, block, entry,
                                   ahead=block + 1 if block + 1 < self.num_blocks else None)
        for name, gate in zip(names, gates()):
            x = _apply(x, gate, self._forecast(work, name), fused)
        self.stats.record_block(costs, [0.0] * len(names))
        return x

    def block_action(self, block: int) -> Action:
        """What ``block`` does this step if its cache is usable (SELECTIVE only for deep blocks)."""
        if self._action == Action.SELECTIVE:
            if not self.selective.enabled or block < self.first_selective_block:
                return Action.CACHED
        return self._action

    def run_block(self, block: int, x: Tensor, branches: Sequence[Branch]) -> Tensor:
        """Run one block on the residual stream ``x`` (B, N, C) and return the new stream."""
        if self._closed:  # used after the run ended: behave like the unpatched block
            for br in branches:
                x = _apply(x, br.gate, br.compute(x), br.fused)
            return x
        if not self.memory.stack:
            return self._block(block, x, branches)[0]
        if self._action == Action.CACHED:
            out = self._stack_reuse(block, x, self._costs(x, branches, block))
            if out is not None:
                return out
        out, computed = self._block(block, x, branches)
        self._stack_note(block, x, out, computed)
        return out

    def _block(self, block: int, x: Tensor, branches: Sequence[Branch]) -> tuple[Tensor, bool]:
        """One block by the per-block cache (light lanes for shallow blocks in light mode): the new stream,
        and whether every branch was computed (what a stack residual may be recorded from)."""
        if self.memory.light and block < self.first_selective_block:
            return self._light_block(block, x, branches)
        names = tuple(br.name for br in branches)
        signature = block_signature(x, names)
        action, entry, stream = self._plan(block, signature)
        if action == Action.FULL:
            out = self._full(block, x, branches, signature)
            if self._guard and block == 0:
                self._guard_reference(stream, signature)
            return out, True
        assert entry is not None
        if self._guard and block == 0 and self.cache.storage.passthrough(x.dtype):
            return self._guarded_first_block(stream, x, branches, signature), True
        work = self.cache.checkout(self._stream_key, block, entry,
                                   ahead=block + 1 if block + 1 < self.num_blocks else None)
        if action == Action.SELECTIVE:
            return self._selective(block, x, branches, work, stored=entry), False
        return self._cached(x, branches, work, block), False

    def _plan(self, block: int, signature: tuple) -> tuple[Action, BlockEntry | None, object]:
        """What ``block`` does this evaluation by the per-block cache: (action, its stored entry, stream)."""
        stream = self.cache.stream(self._stream_key)
        if stream.decided_eval != self._eval:  # first block of this evaluation in this stream
            self._decide_eval(stream, block, signature)
        action = Action.FULL if stream.eval_full else self.block_action(block)
        entry: BlockEntry | None = None
        if action != Action.FULL:
            entry = self.cache.get(self._stream_key, block, signature)
            if entry is None:  # a block whose layout changed mid-evaluation: the rest runs FULL
                stream.eval_full = True
                if stream.forced_full_eval != self._eval:
                    stream.forced_full_eval = self._eval
                    self.stats.forced_full_evals += 1
                action = Action.FULL
        return action, entry, stream

    # -- drift guard ------------------------------------------------------------------------------
    def _block0_outputs(self, signature: tuple) -> Tensor:
        entry = self.cache.get(self._stream_key, 0, signature)
        return torch.cat([t.reshape(-1) for t in entry.outputs.values()]).float()

    def _guard_reference(self, stream, signature: tuple, rate: bool = True) -> None:
        """A full evaluation: block 0's outputs become the reference; the drift since the previous one
        per noise unit is what reused steps are expected to show (one device sync). A step the guard made
        full sets the reference only: its jump is not the drift the schedule expects."""
        ref = self._block0_outputs(signature).clone()
        old = stream.guard_ref
        if rate and old is not None and old[0].shape == ref.shape and abs(self._t - old[1]) > 1e-9:
            moved = float((ref - old[0]).norm() / old[0].norm().clamp_min(1e-30))
            stream.guard_rate = moved / abs(self._t - old[1])
        stream.guard_ref = (ref, self._t)

    def _guarded_first_block(self, stream, x: Tensor, branches: Sequence[Branch], signature: tuple) -> Tensor:
        """A reused evaluation's first block, computed in full as the probe: when it moved far more since
        the last full evaluation than the drift rate predicts, the rest of this evaluation runs full."""
        out = self._full(block=0, x=x, branches=branches, signature=signature)
        ref = stream.guard_ref
        if ref is None or stream.guard_rate is None or self._guard_left <= 0:
            return out
        probe = self._block0_outputs(signature)
        if probe.shape != ref[0].shape:
            return out
        moved = float((probe - ref[0]).norm() / ref[0].norm().clamp_min(1e-30))
        expected = stream.guard_rate * abs(self._t - ref[1])
        if moved > self._guard * expected:
            stream.eval_full = True
            self._guard_left -= 1
            self.stats.guard_fired += 1
            self._guard_reference(stream, signature, rate=False)
        return out

    def _decide_eval(self, stream, block: int, signature: tuple) -> None:
        """Decide once per evaluation and stream whether every block runs FULL.

        A reused step may only read a cache computed in the current segment (since the last
        scheduled FULL step): a stream last computed in an older segment (the host ran cond and
        uncond as separate calls on the FULL step and batches them again now), one never computed,
        or one whose batch layout changed, recomputes the whole evaluation.
        """
        stream.decided_eval = self._eval
        if self._action == Action.FULL:
            full = True
        else:
            seg = self._segment
            full = (stream.refresh_segment != seg
                    or self.cache.get(self._stream_key, block, signature) is None
                    or any(e.segment != seg for e in stream.blocks.values()))
            if full:
                stream.forced_full_eval = self._eval
                self.stats.forced_full_evals += 1
        stream.eval_full = full
        if full:
            stream.refresh_segment, stream.refresh_step = self._segment, self._step

    def _costs(self, x: Tensor, branches: Sequence[Branch], block: int | None = None) -> list[float]:
        """Estimated FLOPs of each branch (statistics); remembered per block and shape for reuse_block."""
        b, n, c = x.shape[0], x.shape[1], x.shape[-1]
        costs = [b * (br.flops if br.flops is not None else estimate_branch_flops(br.name, br.token_local, n, c))
                 for br in branches]
        if block is not None:
            self._seen_costs[(block, tuple(x.shape))] = costs
        return costs

    def _full(self, block: int, x: Tensor, branches: Sequence[Branch], signature: tuple) -> Tensor:
        names = signature[-1]
        if len(set(names)) != len(names):
            raise ProCacheError("branches", f"of block {block} repeat a name ({list(names)}).",
                                "give every branch of a block its own name.")
        x_in = x
        if not self.keeps_blocks:  # step reuse with nothing to serve from the block cache: compute only
            for br in branches:
                x = _apply(x, br.gate, br.compute(x), br.fused)
            self.stats.record_block(self._costs(x_in, branches, block), [1.0] * len(branches))
            return x
        outs: dict[str, Tensor] = {}
        deep = self._track_tokens and block >= self.first_selective_block
        aux: dict[str, Tensor] = {}
        for br in branches:
            out = br.compute(x)
            if deep and br.partial is not None and br.aux is not None:
                half = br.aux()
                if half is not None:
                    aux[br.name] = own(half)
            x = _apply(x, br.gate, out, br.fused)
            outs[br.name] = own(out)
        old = self.cache.get(self._stream_key, block, signature)
        entry = BlockEntry(signature=signature, outputs=outs, aux=aux, segment=self._segment)
        self._extend_history(entry, old, x_in)
        if deep:
            b, n = x_in.shape[0], x_in.shape[1]
            if self._keep_input:  # reuse the old buffers: no allocation churn on refresh
                if not self.cache.storage.passthrough(x_in.dtype):
                    entry.input_ref = x_in  # the storage copies it (into the old buffer when it can)
                elif old is not None and old.input_ref is not None:
                    entry.input_ref = old.input_ref.copy_(x_in)
                else:
                    entry.input_ref = x_in.clone(memory_format=torch.contiguous_format)
            if old is not None and old.last_refresh is not None:
                entry.last_refresh = old.last_refresh.fill_(self._step)
            else:
                entry.last_refresh = torch.full((b, n), self._step, dtype=torch.int32, device=x_in.device)
        self.cache.put(self._stream_key, block, entry, old)
        self.stats.record_block(self._costs(x_in, branches, block), [1.0] * len(branches))
        return x

    def _extend_history(self, entry: BlockEntry, old: BlockEntry | None, x_in: Tensor) -> None:
        """Forecasting: the divided differences (and fitted gains) of ``entry``'s fresh outputs, from the
        entry they replace (``procache_core.forecast``); nothing at order 0."""
        order = self.forecast_order(x_in)
        if not order or not entry.outputs:
            return
        for name, out in entry.outputs.items():
            d0_old = old.outputs.get(name) if old is not None else None
            diffs_old = old.diffs.get(name, []) if old is not None else []
            nodes_old = old.nodes if old is not None else ()
            if d0_old is not None and diffs_old:
                gain = fit_gain(d0_old, diffs_old, nodes_old, self._t, out, old.gains.get(name))
                if gain is not None:
                    entry.gains[name] = gain
            nodes, entry.diffs[name] = extend(nodes_old, d0_old, diffs_old, out, self._t, order)
        entry.nodes = nodes

    def _light_reuse(self, block: int, x: Tensor, costs: list[float]) -> Tensor | None:
        """A shallow block in light mode when its lane is reused: ``x`` plus the lane's residual at its first
        block, ``x`` itself at the others; None when the block is computed (memory.py)."""
        lane = self._lanes[block]
        key, stream = self._stream_key, self.cache.stream(self._stream_key)
        if self._lane_used.get(lane) == (self._eval, key):  # the lane's residual is already added
            self.stats.record_block(costs, [0.0] * len(costs))
            return x
        if self._action != Action.FULL and stream.forced_full_eval != self._eval and block == self._lane_span[lane][0]:
            sig = (tuple(x.shape), x.dtype, x.device, ("residual",))
            entry = self.cache.get_lane(key, lane, sig)
            if entry is not None and entry.segment == self._segment:  # never a residual of an older segment
                ahead = self.first_selective_block if self.first_selective_block < self.num_blocks else None
                work = self.cache.checkout(key, ("lane", lane), entry, ahead=ahead)
                self._lane_used[lane] = (self._eval, key)
                self.stats.record_block(costs, [0.0] * len(costs))
                return x + work.outputs["residual"]
            stream.forced_full_eval = self._eval  # no usable residual: this evaluation runs FULL
            self.stats.forced_full_evals += 1
        return None

    def _light_block(self, block: int, x: Tensor, branches: Sequence[Branch]) -> tuple[Tensor, bool]:
        """A shallow block in light mode: computed, or skipped with one residual per lane (memory.py)."""
        reused = self._light_reuse(block, x, self._costs(x, branches, block))
        if reused is not None:
            return reused, False
        lane = self._lanes[block]
        first, last = self._lane_span[lane]
        key = self._stream_key
        ev, start, expected = self._lane_start.get(lane, (None, None, None))
        start = start if ev == (self._eval, key) else None  # only this evaluation's start counts
        if block != first and start is not None and block != expected:
            # a block of the lane did not come through the run (an adapter handed it to the host's own
            # forward): a residual over the lane would add it again on reused steps, so the lane keeps none
            self._lane_start.pop(lane, None)
            start = None
        if block != first and start is not None and start.shape != x.shape:
            raise ProCacheError("lanes", f"put block {block} ({tuple(x.shape)}) in the residual stream of block "
                                f"{first} ({tuple(start.shape)}); a lane must keep one shape.",
                                "use cache_mode full for this model (its adapter does not name its streams).")
        x_in = x
        for br in branches:
            x = _apply(x, br.gate, br.compute(x), br.fused)
        self.stats.record_block(self._costs(x_in, branches), [1.0] * len(branches))
        if block == first:
            start = x_in
        if start is not None and block != last:
            self._lane_start[lane] = ((self._eval, key), start, self._lane_next[block])
        if block == last:
            self._lane_start.pop(lane, None)
            if start is not None and start.shape == x.shape:
                sig = (tuple(start.shape), start.dtype, start.device, ("residual",))
                self.cache.put_lane(key, lane, BlockEntry(signature=sig, outputs={"residual": x - start},
                                                                 segment=self._segment))
        return x, True

    # -- stack reuse (CacheMemory.stack) -----------------------------------------------------------
    def _stack_reuse(self, block: int, x: Tensor, costs: list[float]) -> Tensor | None:
        """A CACHED evaluation with stack reuse: at a lane's first block ``x`` plus the residual of the lane's
        whole stretch (forecast like a branch output), at its other blocks ``x`` itself; None when the lane
        has no residual of this segment (its blocks then go by the per-block cache)."""
        lane = self._lanes[block]
        key = self._stream_key
        if self._stack_used.get(lane) == (self._eval, key):
            self.stats.record_block(costs, [0.0] * len(costs))
            return x
        if block != self._stack_span[lane][0]:
            return None
        sig = (tuple(x.shape), x.dtype, x.device, ("stack",))
        entry = self.cache.get_lane(key, ("stack", lane), sig)
        if entry is None or entry.segment != self._segment:
            return None
        work = self.cache.checkout(key, ("lane", ("stack", lane)), entry)
        self._stack_used[lane] = (self._eval, key)
        self.stats.record_block(costs, [0.0] * len(costs))
        return x + self._forecast(work, "residual")

    def _stack_note(self, block: int, x_in: Tensor, x_out: Tensor, computed: bool) -> None:
        """After a block outside stack reuse: keep the lane's input at its first block; at its last block
        store ``x_out - input`` when every block of the lane was computed in this evaluation."""
        lane = self._lanes[block]
        first, last = self._stack_span[lane]
        key = (self._eval, self._stream_key)
        if block == first:
            if computed:
                self._stack_start[lane] = (key, x_in, block)
            else:
                self._stack_start.pop(lane, None)
        ev, start, expected = self._stack_start.get(lane, (None, None, None))
        if ev != key:
            return
        if not computed or start.shape != x_out.shape or block != expected:
            # a reused block, another shape, or a block of the lane that did not come through the run (an
            # adapter that handed it to the host's own forward): that lane gets no residual
            self._stack_start.pop(lane, None)
            return
        if block != last:
            self._stack_start[lane] = (key, start, self._stack_next[block])
            return
        self._stack_start.pop(lane, None)
        sig = (tuple(start.shape), start.dtype, start.device, ("stack",))
        old = self.cache.get_lane(self._stream_key, ("stack", lane), sig)
        entry = BlockEntry(signature=sig, outputs={"residual": x_out - start}, segment=self._segment)
        self._extend_history(entry, old, start)
        self.cache.put_lane(self._stream_key, ("stack", lane), entry)

    def _cached(self, x: Tensor, branches: Sequence[Branch], entry: BlockEntry, block: int | None = None) -> Tensor:
        costs = self._costs(x, branches, block)
        for br in branches:
            x = _apply(x, br.gate, self._forecast(entry, br.name), br.fused)
        self.stats.record_block(costs, [0.0] * len(branches))
        return x

    def token_share(self, br: Branch, block: int) -> float:
        """Share of tokens branch ``br`` of ``block`` recomputes on the current (selective) step."""
        progress = self._step / (len(self.schedule) - 1) if len(self.schedule) > 1 else 0.0
        depth = block / (self.num_blocks - 1) if self.num_blocks > 1 else 1.0
        return self.selective.token_ratio(branch_kind(br.name), progress, depth)

    def _selective(self, block: int, x: Tensor, branches: Sequence[Branch], entry: BlockEntry,
                   stored: BlockEntry | None = None) -> Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[-1]
        local = [br for br in branches
                 if br.token_local or (br.partial is not None and br.name in entry.aux)]
        ks = {br.name: num_tokens(self.token_share(br, block), n) for br in local}
        k_max = max(ks.values(), default=0)
        if k_max == 0:
            return self._cached(x, branches, entry, block)
        chunks = self._chunks if b % self._chunks == 0 else 1
        costs = self._costs(x, branches, block)
        x_in = x
        order = None  # (B, k_max) token indices, most important first
        if any(0 < k < n for k in ks.values()) or any(br.partial is not None for br in local):
            text = self._stream_text
            order = self.selector.rank(step=self._step, k=k_max, chunks=chunks, last_refresh=entry.last_refresh,
                                       x_in=x_in if entry.input_ref is not None else None,
                                       input_ref=entry.input_ref, cached=[entry.outputs[br.name] for br in local],
                                       values=self._value_rows(branches, entry),
                                       grid_hw=self._stream_grid or self.grid_hw,
                                       text=text[:2] if text is not None and block >= text.first_block
                                       and n >= text.stop else None)
        for br in branches:
            out = entry.outputs[br.name]
            k = ks.get(br.name, 0)
            if entry.diffs.get(br.name):
                # forecasting: the reused rows are the forecast; recomputed rows are fresh and shift the base
                # (d0) so the polynomial passes through them from now on
                out = self._forecast_selective(entry, br, x, k, order)
            elif k == n and br.partial is None:  # every token: plain recompute, bitwise what FULL gives
                out = entry.outputs[br.name] = own(br.compute(x))
            elif k > 0:
                assert order is not None
                idx = torch.sort(order[:, :k], dim=-1).values if k < order.shape[1] else torch.sort(order, dim=-1).values
                rows = x.gather(1, idx.unsqueeze(-1).expand(b, k, c))
                if br.partial is not None:
                    half = entry.aux[br.name]
                    part = br.partial(rows, half.gather(1, idx.unsqueeze(-1).expand(b, k, half.shape[-1])))
                else:
                    part = br.compute(rows)
                out.scatter_(1, idx.unsqueeze(-1).expand(b, k, out.shape[-1]), part.to(out.dtype))
            x = _apply(x, br.gate, out, br.fused)
        # scoring state follows the union of the picks (the k_max best tokens)
        idx = None if order is None or k_max == n else order
        if entry.input_ref is not None:
            if idx is None:
                entry.input_ref.copy_(x_in)
            else:
                idx_c = idx.unsqueeze(-1).expand(b, k_max, c)
                entry.input_ref.scatter_(1, idx_c, x_in.gather(1, idx_c).to(entry.input_ref.dtype))
        if entry.last_refresh is not None:
            if idx is None:
                entry.last_refresh.fill_(self._step)
            else:
                entry.last_refresh.scatter_(1, idx, self._step)
        if stored is not None:  # the working copy was updated in place: keep the stored copy in step
            self.cache.checkin(stored, entry, tuple(br.name for br in local if ks.get(br.name, 0) > 0))
        self.stats.record_block(costs, [ks.get(br.name, 0) / n for br in branches], tokens=b * k_max)
        return x

    def _value_rows(self, branches: Sequence[Branch], entry: BlockEntry) -> list[Tensor]:
        """The cached attention rows of a block (value-norm score): token-mixing branch outputs and the
        attention halves fused branches keep; none when that score is off."""
        if not self.selective.weights.value_norm:
            return []
        rows = [entry.outputs[br.name] for br in branches if not br.token_local and br.partial is None]
        return rows + [entry.aux[br.name] for br in branches if br.name in entry.aux]

    def _forecast_selective(self, entry: BlockEntry, br: Branch, x: Tensor, k: int, order: Tensor | None) -> Tensor:
        """Branch output on a selective step under forecasting (see ``_selective``)."""
        pred = self._forecast(entry, br.name)
        base = entry.outputs[br.name]
        b, n, c = x.shape[0], x.shape[1], x.shape[-1]
        if k <= 0:
            return pred
        if k == n and br.partial is None:
            fresh = br.compute(x).to(pred.dtype)
            base.add_(fresh - pred)
            return fresh
        assert order is not None
        idx = torch.sort(order[:, :k], dim=-1).values
        if br.partial is not None:
            half = entry.aux[br.name]
            part = br.partial(x.gather(1, idx.unsqueeze(-1).expand(b, k, c)),
                              half.gather(1, idx.unsqueeze(-1).expand(b, k, half.shape[-1])))
        else:
            part = br.compute(x.gather(1, idx.unsqueeze(-1).expand(b, k, c)))
        ix = idx.unsqueeze(-1).expand(b, k, pred.shape[-1])
        part = part.to(pred.dtype)
        base.scatter_add_(1, ix, part - pred.gather(1, ix))
        return pred.scatter_(1, ix, part)

    # -- end ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free every cached tensor and stop the clock. Safe to call twice."""
        if self._closed:
            return
        self.stats.observe_cache_bytes(self.cache.nbytes() + self.step_outputs.nbytes(),
                                       self.cache.nbytes_by_device(),
                                       self.cache.history_nbytes() + self.step_outputs.history_nbytes())
        self.cache.clear()
        self.step_outputs = StepOutputs()
        self._lane_start.clear()
        self._stack_start.clear()
        self._memo.clear()
        self.stats.stop()
        self._closed = True

    def __enter__(self) -> "CacheRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
