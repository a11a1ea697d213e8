"""RunStats: what one ProCache run did, for logs, nodes and benchmarks.

Counting rules (all plain Python numbers, updated from tensor *shapes* only, so accounting never
synchronises the device):

* ``steps_*`` count model evaluations by their scheduled action (``begin_step`` calls).
* A block evaluation is one ``run_block`` call. It is split equally between its branches: a branch
  computed for every token counts ``1/n_branches``, a token-local branch recomputed for ``k`` of
  ``N`` tokens counts ``k/N/n_branches``, a reused branch 0. So an all-FULL run has
  ``block_eval_fraction == 1`` and a selective deep block with an attention and an MLP branch at
  ratio 0.25 counts 0.125.
* FLOPs use per-branch estimates (:func:`estimate_branch_flops`, or the adapter's ``Branch.flops``
  hint) for the whole batch; a token-local branch on ``k`` tokens costs ``k/N`` of its full cost.
  Token scoring and adaLN are not counted (both are small next to attention and MLP).
* ``peak_cache_bytes`` is the most memory the cache held at any step boundary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

# Share of the MLP hidden width when the adapter gives no hint (DiT, PixArt, Flux all use 4x).
DEFAULT_MLP_RATIO = 4.0
# Context length assumed for cross-attention without a hint (PixArt's T5 prompt is 120 tokens).
DEFAULT_CONTEXT_TOKENS = 120


def estimate_branch_flops(name: str, token_local: bool, n: int, c: int) -> float:
    """Multiply-accumulates of one branch for ONE batch row of ``n`` tokens of width ``c``.

    attention: q/k/v/out projections ``4 n c^2`` plus scores and weighted sum ``2 n^2 c``;
    mlp: two linears through a ``4c`` hidden layer ``2 n c (4c)``; cross-attention: q/out
    projections on the image tokens, k/v on the context, scores ``2 n m c``.
    Unknown names: token-local branches are costed as an MLP, others as self-attention.
    """
    key = name.lower()
    mlp = 2.0 * n * c * (DEFAULT_MLP_RATIO * c)
    attn = 4.0 * n * c * c + 2.0 * n * n * c
    m = DEFAULT_CONTEXT_TOKENS
    cross = 2.0 * n * c * c + 2.0 * m * c * c + 2.0 * n * m * c
    if "cross" in key:
        return cross
    if "mlp" in key or key in ("ff", "ffn", "feed_forward"):
        return mlp
    if "attn" in key or "attention" in key:
        return attn
    return mlp if token_local else attn


@dataclass
class RunStats:
    """Accounting of one run (see module docstring for the rules)."""

    steps_full: int = 0
    steps_cached: int = 0
    steps_selective: int = 0
    forced_full_evals: int = 0       # stream evaluations run FULL for lack of a usable cache
    block_evals_full: int = 0        # run_block calls (what an unpatched model would compute)
    block_evals_done: float = 0.0    # fractional block evaluations actually computed
    tokens_recomputed: int = 0       # rows x tokens recomputed on selective deep blocks
    flops_full: float = 0.0
    flops_done: float = 0.0
    peak_cache_bytes: int = 0
    peak_cache_bytes_by_device: dict[str, int] = field(default_factory=dict)  # per device, each its own peak
    cache_placement: str = ""         # what the cache was kept as, e.g. "full cache in CPU memory (bfloat16)"
    forecast: str = "off (copy)"     # how reused steps got their features (procache_core.forecast.ORDER_NAMES)
    peak_history_bytes: int = 0       # of peak_cache_bytes' kind: the forecast differences alone
    drift_guard: str = ""             # "" off, else e.g. "x2.0, at most 2 extra full steps"
    guard_fired: int = 0              # reused evaluations the drift guard turned into full ones
    wall_s: float | None = None
    _t0: float | None = field(default=None, repr=False)

    # -- hooks ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the wall clock (CacheRun does this when it is created)."""
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        """Stop the wall clock. On CUDA synchronise first if the time must include queued work."""
        if self._t0 is not None:
            self.wall_s = (self.wall_s or 0.0) + time.perf_counter() - self._t0
            self._t0 = None

    def record_step(self, action: str) -> None:
        """Count one model evaluation by its scheduled action ("F", "C" or "S")."""
        code = getattr(action, "value", action)
        if code == "F":
            self.steps_full += 1
        elif code == "S":
            self.steps_selective += 1
        else:
            self.steps_cached += 1

    def record_block(self, costs: Sequence[float], done: Sequence[float], tokens: int = 0) -> None:
        """One run_block call: full cost of each branch and the share of it computed (0..1)."""
        n = len(costs)
        self.block_evals_full += 1
        if n:
            self.block_evals_done += sum(done) / n
        self.flops_full += float(sum(costs))
        self.flops_done += float(sum(c * d for c, d in zip(costs, done)))
        self.tokens_recomputed += int(tokens)

    def record_skipped(self, blocks: int, flops: float) -> None:
        """A model evaluation skipped whole by step reuse: ``blocks`` run_block calls of full cost ``flops``
        (what the computed evaluation it reuses made), none of it computed."""
        self.block_evals_full += int(blocks)
        self.flops_full += float(flops)

    def record_native(self, blocks: int, flops: float) -> None:
        """A model evaluation whose ``blocks`` blocks (full cost ``flops``) ran as the host's own, all computed."""
        self.block_evals_full += int(blocks)
        self.block_evals_done += float(blocks)
        self.flops_full += float(flops)
        self.flops_done += float(flops)

    def observe_cache_bytes(self, nbytes: int, by_device: dict[str, int] | None = None, history: int = 0) -> None:
        self.peak_cache_bytes = max(self.peak_cache_bytes, int(nbytes))
        self.peak_history_bytes = max(self.peak_history_bytes, int(history))
        for dev, n in (by_device or {}).items():
            self.peak_cache_bytes_by_device[dev] = max(self.peak_cache_bytes_by_device.get(dev, 0), int(n))

    def cache_text(self) -> str:
        """``cache peak 12.0 MiB`` plus the per-device split when the cache is not on one device only."""
        text = f"cache peak {self.peak_cache_bytes / 2**20:.1f} MiB"
        devs = {d: n for d, n in self.peak_cache_bytes_by_device.items() if n}
        if devs and (len(devs) > 1 or "cpu" in devs or self.cache_placement):
            text += " (" + ", ".join(f"{d} {n / 2**20:.1f} MiB" for d, n in sorted(devs.items()))
            text += f"; {self.cache_placement})" if self.cache_placement else ")"
        elif "step reuse" in self.cache_placement:  # nothing per device to list: say how steps were reused
            text += " (step reuse)"
        return text

    def guard_text(self) -> str:
        """``drift guard x2: 1 extra full step (at most 2)``; empty when off."""
        return f"drift guard {self.drift_guard}: {self.guard_fired} extra full" if self.drift_guard else ""

    def forecast_text(self) -> str:
        """``forecast light (order 1), history 3.5 MiB``; empty when reused steps copy (the default)."""
        if self.forecast == "off (copy)":
            return ""
        hist = f", history {self.peak_history_bytes / 2**20:.1f} MiB" if self.peak_history_bytes else ""
        return f"forecast {self.forecast}{hist}"

    # -- reports -------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.steps_full + self.steps_cached + self.steps_selective

    @property
    def block_eval_fraction(self) -> float:
        return self.block_evals_done / self.block_evals_full if self.block_evals_full else 1.0

    @property
    def flops_fraction(self) -> float:
        """Estimated block FLOPs done / FLOPs of the unpatched model (1.0 = no saving)."""
        return self.flops_done / self.flops_full if self.flops_full else 1.0

    @property
    def flops_speedup(self) -> float:
        """The paper's "speed-up": unpatched FLOPs / FLOPs done (inf if nothing was computed)."""
        if not self.flops_full:
            return 1.0
        return self.flops_full / self.flops_done if self.flops_done else float("inf")

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "steps_full": self.steps_full,
            "steps_cached": self.steps_cached,
            "steps_selective": self.steps_selective,
            "forced_full_evals": self.forced_full_evals,
            "block_evals_full": self.block_evals_full,
            "block_evals_done": self.block_evals_done,
            "block_eval_fraction": self.block_eval_fraction,
            "tokens_recomputed": self.tokens_recomputed,
            "flops_full": self.flops_full,
            "flops_done": self.flops_done,
            "flops_fraction": self.flops_fraction,
            "flops_speedup": self.flops_speedup,
            "peak_cache_bytes": self.peak_cache_bytes,
            "peak_cache_bytes_by_device": dict(self.peak_cache_bytes_by_device),
            "cache_placement": self.cache_placement,
            "forecast": self.forecast,
            "peak_history_bytes": self.peak_history_bytes,
            "drift_guard": self.drift_guard,
            "guard_fired": self.guard_fired,
            "wall_s": self.wall_s,
        }

    def format_line(self) -> str:
        """One human-readable log line."""
        parts = [
            f"ProCache: {self.steps} steps ({self.steps_full} full / {self.steps_selective} selective / "
            f"{self.steps_cached} cached)",
            f"blocks computed {100.0 * self.block_eval_fraction:.1f}% of full",
            f"est. FLOPs speed-up {self.flops_speedup:.2f}x",
            f"{self.tokens_recomputed} tokens recomputed",
            self.cache_text(),
        ]
        if self.forecast_text():
            parts.append(self.forecast_text())
        if self.guard_text():
            parts.append(self.guard_text())
        if self.forced_full_evals:
            parts.append(f"{self.forced_full_evals} forced full (no usable cache)")
        if self.wall_s is not None:
            parts.append(f"{self.wall_s:.2f} s")
        return ", ".join(parts)
