"""Settings of selective computation, shared by presets, the runtime and the nodes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

# Token-share schedules (``SelectiveSettings.ratio_schedule``). ``constant``: every deep block of every
# selective step recomputes ``ratio`` of its tokens. The others follow the reference code's form
#   share = ratio * layer_factor(depth) * step_factor(progress) * branch_factor(kind)
# with ``progress`` the denoising progress of the step in [0, 1] and ``depth`` = block / (blocks - 1):
#   step_factor  = 1 - w_s + 2 * w_s * progress      (w_s > 0: rises with progress)
#   layer_factor = 1 - w_l + 2 * w_l * depth
# ``reference-dit`` is the reference's DiT scheduler (w_s = 2, w_l = 0.2, MLP x2.5): nothing on the
# early selective steps, then a share that rises to the end. ``reference-pixart`` reproduces the
# ranges the reference PixArt runs use (cross-attention ~3-21 %, MLP ~7-55 %, both falling with step
# and depth, each branch its own selection); its scheduler source is not in the released code, so the
# weights are fitted to those ranges.
RATIO_SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {},
    "reference-dit": {"step": 2.0, "layer": 0.2, "branch": {"mlp": 2.5, "cross": 2.5}},
    "reference-pixart": {"step": -0.6, "layer": -0.3, "branch": {"mlp": 1.17, "cross": 0.43}},
}


def branch_kind(name: str) -> str:
    """``cross`` for cross-attention branches, ``mlp`` for every other token-local branch."""
    return "cross" if "cross" in name.lower() else "mlp"

from .errors import ProCacheError
from .forecast import check_order


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of the attention-free token importance terms (see procache_core.tokens)."""

    staleness: float = 1.0   # steps since the token's cache entry was last refreshed
    input_change: float = 1.0  # relative change of the block input since it was cached
    output_norm: float = 0.25  # norm of the cached branch output of the token
    spatial: float = 0.5     # bonus spreading picks over the 2-D token grid
    # norm of the token's cached attention (token-mixing) rows: DuCa's value-norm idea, which needs no
    # attention map (fused attention never forms one); 0 in the paper's mixed score
    value_norm: float = 0.0

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProCacheError(f"weights.{name}", f"is {value!r}, not a number.",
                                    "use a non-negative weight such as 1.0 (0 switches the term off).")
            if not (0.0 <= float(value) <= 100.0):
                raise ProCacheError(f"weights.{name}", f"is {value}, outside [0, 100].",
                                    "use a non-negative weight such as 1.0 (0 switches the term off).")


@dataclass(frozen=True)
class SelectiveSettings:
    """How `selective` steps work.

    `depth_fraction` is the share of blocks, counted from the deepest, that recompute tokens on a
    selective step (the paper: the deepest 25%). `start_block`, when given, overrides it with an
    absolute block index (negative counts from the end). `ratio` is the share of tokens recomputed
    (`ratio_schedule` "constant") or the base share a named schedule scales by step, depth and
    branch (see RATIO_SCHEDULES).
    """

    enabled: bool = True
    depth_fraction: float = 0.25
    start_block: int | None = None
    ratio: float = 0.3
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    ratio_schedule: str = "constant"
    # reused steps: 0 copies the cached outputs, 1 / 2 extrapolate them on the noise axis from the last
    # computed outputs (procache_core.forecast); independent of ``enabled``, which is about selective steps
    forecast: int = 0
    # how tokens that score the same are ordered on selective steps (procache_core.tokens): "index" (the
    # lower index first, the paper code's stable sort) or "stratified" (seeded, spread over the image)
    tie_break: str = "index"
    # joint blocks (text and image tokens in one sequence, Flux single blocks): True orders image tokens
    # before text tokens among equal scores (a text token is picked first only when it scores higher);
    # False keeps the sequence order (text first in Flux). Needs the adapter to name the text range.
    # Here, as tie_break, the paper code's order (what presets without the key mean); the Selective Compute
    # Settings node defaults to the bench's winner (stratified, image first: benchmarks/results/token_picks_cpu.md)
    image_first: bool = False
    # drift guard (procache_core.engine): 0 = off; else a reused step whose first block moved more than this
    # many times the drift the last computed steps predict becomes a full step, at most ``drift_budget`` of
    # the steps in a run
    drift_guard: float = 0.0
    drift_budget: float = 0.1

    def token_ratio(self, kind: str, progress: float, depth: float) -> float:
        """Share of tokens a ``kind`` ("mlp"/"cross") branch recomputes at ``progress``/``depth`` in [0, 1]."""
        spec = RATIO_SCHEDULES.get(self.ratio_schedule) or {}
        if not spec:
            return self.ratio
        ws, wl = spec["step"], spec["layer"]
        step_f = 1.0 - ws + 2.0 * ws * min(max(progress, 0.0), 1.0)
        layer_f = 1.0 - wl + 2.0 * wl * min(max(depth, 0.0), 1.0)
        share = self.ratio * step_f * layer_f * spec["branch"].get(kind, spec["branch"]["mlp"])
        return min(max(share, 0.0), 1.0)

    def validate(self) -> "SelectiveSettings":
        if not (0.0 <= self.depth_fraction <= 1.0):
            raise ProCacheError("depth_fraction", f"is {self.depth_fraction}, outside [0, 1].",
                                "use 0.25 to recompute the deepest quarter of the blocks.")
        if not (0.0 <= self.ratio <= 1.0):
            raise ProCacheError("ratio", f"is {self.ratio}, outside [0, 1].",
                                "use a token share such as 0.3 (0 = reuse only, 1 = every token).")
        if self.ratio_schedule not in RATIO_SCHEDULES:
            raise ProCacheError("ratio_schedule", f"is '{self.ratio_schedule}', which is not a known schedule.",
                                f"use one of {sorted(RATIO_SCHEDULES)}.")
        self.weights.validate()
        check_order(self.forecast)
        if not (self.drift_guard == 0.0 or 1.0 <= self.drift_guard <= 100.0):
            raise ProCacheError("drift_guard", f"is {self.drift_guard}, neither 0 (off) nor in [1, 100].",
                                "use 0 to switch it off or e.g. 2.0 (twice the expected drift).")
        if not (0.0 <= self.drift_budget <= 1.0):
            raise ProCacheError("drift_budget", f"is {self.drift_budget}, outside [0, 1].",
                                "use a share of the steps such as 0.1 (at most one extra full step in ten).")
        if not isinstance(self.image_first, bool):
            raise ProCacheError("image_first", f"is {self.image_first!r}, not true or false.",
                                "use true to pick image tokens before text tokens among equal scores.")
        if self.tie_break not in ("index", "stratified"):
            raise ProCacheError("tie_break", f"is {self.tie_break!r}, not 'index' or 'stratified'.",
                                "use 'stratified' to spread tied picks over the image, 'index' for raster order.")
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
        known = {"enabled", "depth_fraction", "start_block", "ratio", "weights", "ratio_schedule", "forecast",
                 "tie_break", "image_first", "drift_guard", "drift_budget"}
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
        forecast = check_order(data.get("forecast", 0), "selective.forecast")
        image_first = data.get("image_first", False)
        if not isinstance(image_first, bool):
            raise ProCacheError("selective.image_first", f"is {image_first!r}, not true or false.",
                                "write 'image_first: true' (image tokens before text on ties) or false.")
        try:
            weights = ScoreWeights(**{k: float(v) for k, v in w.items()})
            sb = data.get("start_block")
            out = cls(enabled=bool(data.get("enabled", True)),
                      depth_fraction=float(data.get("depth_fraction", 0.25)),
                      start_block=None if sb is None else int(sb),
                      ratio=float(data.get("ratio", 0.3)), weights=weights,
                      ratio_schedule=str(data.get("ratio_schedule", "constant")),
                      forecast=forecast, tie_break=str(data.get("tie_break", "index")),
                      image_first=image_first,
                      drift_guard=float(data.get("drift_guard", 0.0)), drift_budget=float(data.get("drift_budget", 0.1)))
        except (TypeError, ValueError) as exc:
            raise ProCacheError("selective", f"has a value of the wrong type ({exc}).",
                                "use numbers for ratio/depth_fraction/weights and an integer start_block.") from None
        return out.validate()
