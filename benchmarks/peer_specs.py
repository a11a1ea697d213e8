"""The caching packs `make bench-peers` compares ProCache with: folder, node, knob sweep, families, caveats.

Read by the runner (benchmarks/peers.py: which node to wire, which settings to sweep) and by the report
(benchmarks/peers_report.py: the caveat written beside a peer's row).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Peer:
    """One peer pack: its folder name, the node it adds, the knob sweep, and which of our families it takes.

    families maps our family name to the pack's own model-type choice (None where the node has no such
    input); unsupported maps a family to the reason the pack cannot run it (written beside its row)."""

    name: str
    folder: str
    node: str
    knob: str
    sweep: list[dict]
    families: dict[str, str | None]
    unsupported: dict[str, str] = field(default_factory=dict)
    caveats: dict[str, str] = field(default_factory=dict)
    fixed: Callable[[str | None], dict] = lambda model_type: {}
    documented: dict[str, dict] = field(default_factory=dict)
    documented_source: str = ""

    def inputs(self, family: str, setting: dict) -> dict:
        return {**self.fixed(self.families.get(family)), **setting}

    def settings(self, family: str) -> list[dict]:
        """The sweep, then the README's recommended setting for `family` where the sweep lacks it (a user's
        first try is the documented value, so each peer is also measured there)."""
        doc = self.documented.get(family)
        return self.sweep + ([doc] if doc is not None and doc not in self.sweep else [])

    def is_documented(self, family: str, setting: dict) -> bool:
        return self.documented.get(family) == setting


PEERS = [
    Peer("TeaCache", "ComfyUI-TeaCache", "TeaCache", "rel_l1_thresh",
         [{"rel_l1_thresh": t} for t in (0.15, 0.2, 0.25, 0.4, 0.6, 0.8)],
         {"flux": "flux"},
         {"pixart": "no PixArt model_type in the TeaCache node (its choices: flux, ltxv, lumina_2, hunyuan_video, "
                    "hidream, wan2.1)"},
         {"flux": "rescaling polynomial fit to the released FLUX.1 weights, not ours; the node cannot refit it"},
         lambda mt: {"model_type": mt, "start_percent": 0.0, "end_percent": 1.0, "cache_device": "cpu"},
         # README "Usage" table, row FLUX: rel_l1_thresh 0.4, start_percent 0, end_percent 1 (~2x)
         {"flux": {"rel_l1_thresh": 0.4}}, "README.md, Usage table, FLUX row (start 0, end 1)"),
    Peer("FBCache", "Comfy-WaveSpeed", "ApplyFBCacheOnModel", "residual_diff_threshold",
         [{"residual_diff_threshold": t} for t in (0.12, 0.25, 0.3, 0.4, 0.5, 0.7)],
         {"flux": None, "pixart": None}, {}, {},
         lambda mt: {"object_to_patch": "diffusion_model", "start": 0.0, "end": 1.0,
                     "max_consecutive_cache_hits": -1},
         # README, First Block Cache: 0.12 for flux-dev (fp8_e4m3fn_fast, 28 steps); no PixArt value given
         {"flux": {"residual_diff_threshold": 0.12}}, "README.md, First Block Cache table, flux-dev row"),
    Peer("MagCache", "ComfyUI-MagCache", "MagCache", "magcache_thresh/magcache_K",
         [{"magcache_thresh": t, "magcache_K": k} for k in (2, 4) for t in (0.03, 0.06, 0.12, 0.24)],
         {"flux": "flux"},
         {"pixart": "no PixArt model_type in the MagCache node (its choices: flux, chroma, qwen_image, "
                    "hunyuan_video, wan2.1)"},
         {"flux": "magnitude ratios of the released FLUX.1 weights (28 steps, interpolated)"},
         lambda mt: {"model_type": mt, "retention_ratio": 0.2, "start_step": 0, "end_step": -1},
         # README "MagCache" table, row FLUX: magcache_thresh 0.24, retention_ratio 0.1, magcache_K 5
         {"flux": {"magcache_thresh": 0.24, "magcache_K": 5, "retention_ratio": 0.1}},
         "README.md, MagCache table, FLUX row"),
]
