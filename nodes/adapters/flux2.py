"""Flux.2 (``comfy.ldm.flux.model.Flux`` with ``params.global_modulation``).

The host builds Flux.2 from the Flux.1 classes (``DoubleStreamBlock`` / ``SingleStreamBlock`` with
``modulation=False``): the adaLN chunks come from three model-wide ``Modulation`` layers evaluated once
per model call and handed to every block as ``vec``. The Flux.1 adapter's branch split applies as is
(``nodes/adapters/flux.py``): double blocks run as an image and a text engine block with ``attn`` and a
token-local ``mlp`` (SiLU-gated MLP in Flux.2); single blocks are one fused ``attn_mlp`` branch reused on
selective steps. Reference images of Flux.2 edits are part of the image stream and cached with it.

Flux.2 klein is the same network with another config (no guidance embedding, fewer double blocks, a
Qwen3 prompt); the host's ``model_base.Flux2`` pads its prompt to 512 tokens too, so nothing differs here.

There is no per-block adaLN linear to slice, so reused steps cost the shared modulation only. The
family has its own name so presets and the ``auto`` choice can tell Flux.2 from Flux.1.
"""
from __future__ import annotations

from .flux import FLUX_SELECTIVE, FluxAdapter, is_flux_network
from .registry import register


class Flux2Adapter(FluxAdapter):
    family = "flux2"

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        # the host's model_base.Flux2 pads the prompt to 512 tokens before the network sees it
        return super().cache_layout(x_shape, max(context_tokens or 0, 512), cond)


# asked with flux (the two exclude each other); no preset of its own: Flux.1's rule preset (ProCache Schedule
# Search tunes one)
register("flux2", "Flux.2", lambda dm, cfg: is_flux_network(dm, True), lambda dm, name: Flux2Adapter(dm),
         preset="flux-28-balanced", priority=10, selective=FLUX_SELECTIVE)
