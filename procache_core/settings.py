"""Settings of selective computation, shared by presets, the runtime and the nodes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .errors import ProCacheError


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of the attention-free token importance terms (see procache_core.tokens)."""

    staleness: float = 1.0   # steps since the token's cache entry was last refreshed
    input_change: float = 1.0  # relative change of the block input since it was cached
    output_norm: float = 0.25  # norm of the cached branch output of the token
    spatial: float = 0.5     # bonus spreading picks over the 2-D token grid

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if not (0.0 <= float(value) <= 100.0):
                raise ProCacheError(f"weights.{name}", f"is {value}, outside [0, 100].",
                                    "use a non-negative weight such as 1.0 (0 switches the term off).")


@dataclass(frozen=True)
class SelectiveSettings:
    """How `selective` steps work.

    `depth_fraction` is the share of blocks, counted from the deepest, that recompute tokens on a
    selective step (the paper: the deepest 25%). `start_block`, when given, overrides it with an
    absolute block index (negative counts from the end). `ratio` is the share of tokens recomputed.
    """

    enabled: bool = True
    depth_fraction: float = 0.25
    start_block: int | None = None
    ratio: float = 0.3
    weights: ScoreWeights = field(default_factory=ScoreWeights)

    def validate(self) -> "SelectiveSettings":
        if not (0.0 <= self.depth_fraction <= 1.0):
            raise ProCacheError("depth_fraction", f"is {self.depth_fraction}, outside [0, 1].",
                                "use 0.25 to recompute the deepest quarter of the blocks.")
        if not (0.0 <= self.ratio <= 1.0):
            raise ProCacheError("ratio", f"is {self.ratio}, outside [0, 1].",
                                "use a token share such as 0.3 (0 = reuse only, 1 = every token).")
        self.weights.validate()
        return self

    def first_selective_block(self, num_blocks: int) -> int:
        """Index of the shallowest block that does work on selective steps."""
        if self.start_block is not None:
            idx = self.start_block if self.start_block >= 0 else num_blocks + self.start_block
            if not (0 <= idx <= num_blocks):
                raise ProCacheError("start_block", f"is {self.start_block}, but the model has {num_blocks} blocks.",
                                    f"use an index in [-{num_blocks}, {num_blocks - 1}].")
            return idx
        n_deep = int(round(self.depth_fraction * num_blocks))
        return num_blocks - n_deep

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SelectiveSettings":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ProCacheError("selective", f"must be a mapping, got {type(data).__name__}.",
                                "write e.g. 'selective: {enabled: true, ratio: 0.3}'.")
        known = {"enabled", "depth_fraction", "start_block", "ratio", "weights"}
        unknown = set(data) - known
        if unknown:
            raise ProCacheError(f"selective.{sorted(unknown)[0]}", "is not a known setting.",
                                f"use only {sorted(known)}.")
        w = data.get("weights") or {}
        if not isinstance(w, Mapping):
            raise ProCacheError("selective.weights", "must be a mapping.",
                                "write e.g. 'weights: {staleness: 1.0, spatial: 0.5}'.")
        wknown = set(ScoreWeights.__dataclass_fields__)
        if set(w) - wknown:
            raise ProCacheError(f"selective.weights.{sorted(set(w) - wknown)[0]}", "is not a known weight.",
                                f"use only {sorted(wknown)}.")
        try:
            weights = ScoreWeights(**{k: float(v) for k, v in w.items()})
            sb = data.get("start_block")
            out = cls(enabled=bool(data.get("enabled", True)),
                      depth_fraction=float(data.get("depth_fraction", 0.25)),
                      start_block=None if sb is None else int(sb),
                      ratio=float(data.get("ratio", 0.3)), weights=weights)
        except (TypeError, ValueError) as exc:
            raise ProCacheError("selective", f"has a value of the wrong type ({exc}).",
                                "use numbers for ratio/depth_fraction/weights and an integer start_block.") from None
        return out.validate()
