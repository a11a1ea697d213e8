"""Tiny LTX-2 audio-video network (host class ``comfy.ldm.lightricks.av_model.LTXAVModel``).

Loaded by ``nodes_tiny_families._load_tiny_builders`` (``seeded_`` is set as a global). Video width 64 (2 heads of
32), audio width 32 (2 heads of 16), 2 audio-video blocks, the latents' fixed channel layouts (video 128,
audio 8 channels x 16 frequency bins). The host's loader fixes the widths (32 heads of 128 / 64), so a
checkpoint cannot be small. Text: the conditioning is ``2 * context_dim`` wide, the video and the audio
halves of an already-encoded LTX-2 prompt (``caption_channels`` each), so ComfyUI 0.29's text connectors
pass it through; they are built at a tiny width too.
"""
from __future__ import annotations


def tiny_ltxav_net(seed: int = 0, context_dim: int = 48):
    import comfy.ops
    from comfy.ldm.lightricks.av_model import LTXAVModel

    # text cross-attention reads the projected prompt (inner width), the cross-modal RoPE is sized by
    # audio_cross_attention_dim: both equal the stream widths, as in the released models
    cfg = {"image_model": "ltxav", "in_channels": 128, "audio_in_channels": 128, "attention_head_dim": 32,
           "num_attention_heads": 2, "cross_attention_dim": 64, "audio_attention_head_dim": 16,
           "audio_num_attention_heads": 2, "audio_cross_attention_dim": 32, "caption_channels": context_dim,
           "num_layers": 2}
    if hasattr(LTXAVModel, "preprocess_text_embeds"):  # 0.29: Gemma-side connectors (default 30 x 128 wide)
        cfg.update({"connector_attention_head_dim": 8, "connector_num_attention_heads": 2, "connector_num_layers": 1})
    net = LTXAVModel(operations=comfy.ops.disable_weight_init, **cfg)
    seeded_(net, seed)  # noqa: F821 (set by the loader)
    return net, cfg


try:  # a host without LTX-2 (0.3.75) offers no ltxav
    import comfy.ldm.lightricks.av_model  # noqa: F401

    TINY = {"ltxav": ("LTXAV", tiny_ltxav_net)}
except ImportError:
    TINY = {}
