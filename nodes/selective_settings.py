"""Selective Compute Settings: how ProCache's selective (S) steps recompute tokens and reused steps forecast."""
from __future__ import annotations

from comfy_api.latest import io

from ..procache_core.forecast import ORDER_NAMES
from ..procache_core.settings import RATIO_SCHEDULES, ScoreWeights, SelectiveSettings
from ..procache_core.tokens import TIE_BREAKS

SelectiveSocket = io.Custom("PROCACHE_SELECTIVE")


class ProCacheSelectiveSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheSelectiveSettings",
            display_name="Selective Compute Settings",
            category="ProCache",
            description="On selective (S) steps the deepest blocks recompute token-local parts for the most "
                        "important tokens and reuse the rest (self-attention is always reused). What is "
                        "recomputed per family: PixArt cross-attention + MLP; Flux MLPs of double blocks and "
                        "the MLP half of single blocks (linear1 MLP rows + linear2 over the kept attention); "
                        "SD3 joint-block MLPs; Wan cross-attention and FFN (FFN only with per-sample "
                        "modulation).",
            inputs=[
                io.Boolean.Input("enabled", default=False,
                                 tooltip="Off (default): selective steps become cached steps; on the digits "
                                         "benches spending the same compute on more full steps did better. On, "
                                         "connected to Apply: a schedule's S steps run selectively, and a schedule "
                                         "without S steps gets them (every 2nd step of each cached run)."),
                io.Float.Input("depth_fraction", default=1.0, step=0.01,
                               tooltip="Share of blocks, counted from the deepest, that recompute tokens (0..1). "
                                       "Default 1.0 (every block): on the digits bench the paper's deepest 25% changed "
                                       "nothing measurable (benchmarks/results/README.md). Checked when the node runs."),
                io.Float.Input("ratio", default=0.3, step=0.01,
                               tooltip="Share of tokens recomputed in those blocks (0..1), or the base share a "
                                       "ratio schedule scales. Checked when the node runs."),
                io.Float.Input("w_staleness", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of steps since a token was last recomputed. The defaults (staleness "
                                       "only: picks rotate through the tokens) scored best on the digits bench."),
                io.Float.Input("w_input_change", default=0.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of how much a token's block input changed since then."),
                io.Float.Input("w_output_norm", default=0.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the size of the token's cached output."),
                io.Float.Input("w_spatial", default=0.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the bonus that spreads picks over the image."),
                io.Combo.Input("ratio_schedule", options=list(RATIO_SCHEDULES), default="constant", optional=True,
                               tooltip="constant: every selective block recomputes `ratio` of its tokens. "
                                       "reference-dit / reference-pixart: the reference code's token share, "
                                       "scaled by step and depth, each branch (MLP, cross-attention) its own."),
                io.Combo.Input("forecast", options=list(ORDER_NAMES.values()), default=ORDER_NAMES[0], optional=True,
                               tooltip="Reused (C and S) steps: off copies each block's cached output; light "
                                       "extrapolates it along the noise level from the last two computed steps "
                                       "(one more cached tensor per branch), full from the last three (two "
                                       "more). Stats shows the order and the memory it took."),
                io.Combo.Input("tie_break", options=list(TIE_BREAKS), default="index", optional=True,
                               tooltip="How tokens that score the same are picked on selective steps (right "
                                       "after a full step every token ties on staleness). stratified (slightly "
                                       "better on the token-picks bench, with image_first on): a seeded spread "
                                       "over the image, rotating from step to step (same output run after run). "
                                       "index (default, so workflows saved before this choice reproduce): the "
                                       "first tokens (top rows of the image), as the paper's code."),
                io.Float.Input("drift_guard", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="0: off. Else the first block runs on every reused step as a probe, and a "
                                       "step whose probe moved more than this many times the drift the last full "
                                       "steps showed runs in full (e.g. 2.0). Stats counts the extra full steps."),
                io.Float.Input("drift_budget", default=0.1, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="At most this share of the run's steps may be turned full by the drift guard."),
                io.Float.Input("w_value_norm", default=0.0, min=0.0, max=100.0, step=0.05, optional=True,
                               tooltip="Weight of the size of the token's cached attention rows (DuCa's value-norm "
                                       "score: needs no attention map, so it works with fused attention)."),
                io.Boolean.Input("image_first", default=False, optional=True,
                                 tooltip="Joint blocks (Flux single blocks hold the text tokens, then the image "
                                         "tokens): among equal scores pick image tokens before text tokens; a "
                                         "text token goes first only when it scores higher (slightly better on the "
                                         "token-picks bench). Off (default, so saved workflows reproduce): sequence "
                                         "order, as the paper's code."),
            ],
            outputs=[SelectiveSocket.Output(display_name="selective")],
        )

    @classmethod
    def execute(cls, enabled: bool, depth_fraction: float, ratio: float, w_staleness: float = 1.0,
                w_input_change: float = 0.0, w_output_norm: float = 0.0, w_spatial: float = 0.0,
                ratio_schedule: str = "constant", forecast: str = ORDER_NAMES[0],
                tie_break: str = "index", drift_guard: float = 0.0, drift_budget: float = 0.1,
                w_value_norm: float = 0.0, image_first: bool = False) -> io.NodeOutput:
        orders = {name: order for order, name in ORDER_NAMES.items()}
        if forecast not in orders:
            from ..procache_core.errors import ProCacheError

            raise ProCacheError("forecast", f"is {forecast!r}, not one of the choices.",
                                f"pick one of {list(orders)}.")
        settings = SelectiveSettings(
            enabled=bool(enabled), depth_fraction=float(depth_fraction), ratio=float(ratio),
            weights=ScoreWeights(staleness=float(w_staleness), input_change=float(w_input_change),
                                 output_norm=float(w_output_norm), spatial=float(w_spatial),
                                 value_norm=float(w_value_norm)),
            ratio_schedule=str(ratio_schedule), forecast=orders[forecast], tie_break=str(tie_break),
            image_first=bool(image_first), drift_guard=float(drift_guard), drift_budget=float(drift_budget),
        ).validate()
        return io.NodeOutput(settings)
