"""LTX-2 audio-video test nodes: the empty audio latent without the audio VAE, and one flat latent to save.

The host's ``LTXVEmptyLatentAudio`` reads the latent layout from an audio VAE (``LTXVAudioVAELoader``: a
full checkpoint of the audio autoencoder and vocoder); no small one exists. The node below makes the same
zero latent from the numbers that VAE gives: ``z_channels`` 8, 16 latent frequency bins (64 mel bins / the
host's ``LATENT_DOWNSAMPLE_FACTOR``) and 25 latents per second (16 kHz, hop 160, / 4), which are also the
channel layout ``LTXAVModel`` unpatchifies (``num_audio_channels`` x ``audio_frequency_bins``).
The sampler returns the audio-video latent as the host's NestedTensor, which SaveLatent cannot write;
``ProCacheTestPackLatent`` packs it with the host's own ``comfy.utils.pack_latents`` (what the sampler
samples) so one saved latent holds both streams.
"""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io

AUDIO_CHANNELS = 8          # the LTX-2 audio VAE's z_channels
MEL_BINS = 64               # its mel bins (latent frequency bins = MEL_BINS / LATENT_DOWNSAMPLE_FACTOR)
SAMPLE_RATE, HOP = 16000, 160


class ProCacheTestLTXAVEmptyAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestLTXAVEmptyAudio",
            display_name="ProCache Test LTX-2 Empty Audio Latent",
            category="ProCache/testing",
            inputs=[io.Int.Input("frames_number", default=9, min=1, max=1000),
                    io.Int.Input("frame_rate", default=25, min=1, max=1000),
                    io.Int.Input("batch_size", default=1, min=1, max=64)],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, frames_number: int, frame_rate: int, batch_size: int) -> io.NodeOutput:
        import comfy.model_management
        from comfy.ldm.lightricks.vae.audio_vae import LATENT_DOWNSAMPLE_FACTOR

        per_second = SAMPLE_RATE / HOP / LATENT_DOWNSAMPLE_FACTOR
        n = math.ceil(float(frames_number) / frame_rate * per_second)   # AudioVAE.num_of_latents_from_frames
        samples = torch.zeros((batch_size, AUDIO_CHANNELS, n, MEL_BINS // LATENT_DOWNSAMPLE_FACTOR),
                              device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples, "sample_rate": SAMPLE_RATE, "type": "audio"})


class ProCacheTestPackLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProCacheTestPackLatent",
            display_name="ProCache Test Pack Latent",
            category="ProCache/testing",
            inputs=[io.Latent.Input("samples")],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        import comfy.utils

        lat = samples["samples"]
        if getattr(lat, "is_nested", False):
            lat = comfy.utils.pack_latents(lat.unbind())[0]
        return io.NodeOutput({"samples": lat})


try:  # a host without LTX-2 (0.3.75) offers neither
    import comfy.ldm.lightricks.vae.audio_vae  # noqa: F401

    NODES = [ProCacheTestLTXAVEmptyAudio, ProCacheTestPackLatent]
except ImportError:
    NODES = []
