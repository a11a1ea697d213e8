"""The host's own EasyCache / LazyCache decision code, driven around a model that is not a ComfyUI model.

The PixArt speed bench runs EasyCache and LazyCache through ComfyUI's real sampling path (their nodes
patch a ModelPatcher). The reference DiT (procache_core.reference_dit) is not a ComfyUI model, so here
we call the host's *unmodified* wrapper functions (`comfy_extras.nodes_easycache.easycache_forward_wrapper`
and `lazycache_predict_noise_wrapper`) with our model evaluation as their `executor`, and feed them exactly
what ComfyUI would:

- EasyCache wraps the diffusion model (DIFFUSION_MODEL wrapper): input is the model input
  x_t (= c_in * x_sigma for an eps model, i.e. the DDPM-scaled latent) for the CFG batch
  [cond | uncond], output is the raw eps prediction; `transformer_options` carries `sigmas` and `uuids`
  (one uuid per CFG chunk), and `skip_current_step` is cleared once per step as its CALC_COND_BATCH
  wrapper does.
- LazyCache wraps PREDICT_NOISE: input is x_sigma = x_t / sqrt(abar_t) with timestep sigma, output is
  the CFG-combined denoised prediction x0 = x_sigma - sigma * eps.
- Timestep thresholds come from `holder.prepare_timesteps(model_sampling)` with the host's
  `ModelSamplingDiscrete` configured with the DiT noise schedule (linear betas 1e-4..0.02, 1000 steps:
  the host calls that schedule "sqrt_linear").
The defaults are the nodes' defaults (start 0.15, end 0.95, subsample factor 8).
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_host():
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host()
    import comfy_extras.nodes_easycache as ec

    return ec


def dit_model_sampling():
    import_host()
    from comfy.model_sampling import ModelSamplingDiscrete

    cfg = SimpleNamespace(sampling_settings={"beta_schedule": "sqrt_linear", "linear_start": 1e-4,
                                             "linear_end": 0.02, "timesteps": 1000})
    return ModelSamplingDiscrete(cfg)


class HostStepCache:
    """One sampling run's EasyCache or LazyCache state (a fresh holder per run, like OUTER_SAMPLE does).

    `eps(x_t_batch, t_index, sigma, cfg_fn)` returns eps for the CFG batch; see `step()`.
    """

    def __init__(self, kind: str, reuse_threshold: float, channels: int, start_percent: float = 0.15,
                 end_percent: float = 0.95, model_sampling=None):
        ec = import_host()
        self.ec = ec
        self.kind = kind
        cls = {"easycache": ec.EasyCacheHolder, "lazycache": ec.LazyCacheHolder}[kind]
        self.holder = cls(reuse_threshold, start_percent, end_percent, subsample_factor=8,
                          offload_cache_diff=False, verbose=False, output_channels=channels)
        self.holder.prepare_timesteps(model_sampling if model_sampling is not None else dit_model_sampling())
        self.uuids = [uuid.uuid4(), uuid.uuid4()]  # cond, uncond
        self.model_calls = 0

    def eps(self, x_t: torch.Tensor, sigma: float, model_fn: Callable[[torch.Tensor], torch.Tensor],
            cfg_combine: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One denoising step. x_t: (2B, C, H, W) CFG batch [cond | uncond] at DDPM scale;
        model_fn(x_t) -> eps (2B, C, H, W); cfg_combine(eps2) -> guided eps (B, C, H, W).
        Returns the guided eps (B, C, H, W) the sampler should use."""
        h = self.holder
        if self.kind == "easycache":
            h.skip_current_step = False  # easycache_calc_cond_batch_wrapper
            sig = torch.full((x_t.shape[0],), float(sigma), dtype=x_t.dtype)
            topts = {"easycache": h, "sigmas": sig, "uuids": self.uuids}

            def executor(x, topts_):
                self.model_calls += 1
                return model_fn(x)

            out = self.ec.easycache_forward_wrapper(executor, x_t.clone(), topts)
            return cfg_combine(out)
        # LazyCache: operates on the CFG-combined denoised prediction in sigma space.
        b = x_t.shape[0] // 2
        scale = (1.0 + sigma ** 2) ** 0.5          # x_sigma = x_t * sqrt(1 + sigma^2) = x_t / sqrt(abar)
        x_sigma = x_t[:b] * scale
        sig = torch.full((b,), float(sigma), dtype=x_t.dtype)

        def executor(x, timestep, model_options):
            self.model_calls += 1
            e = cfg_combine(model_fn(x_t))
            return x - float(sigma) * e

        den = self.ec.lazycache_predict_noise_wrapper(executor, x_sigma.clone(), sig,
                                                      {"transformer_options": {"easycache": h}})
        return (x_sigma - den) / float(sigma)

    @property
    def steps_skipped(self) -> int:
        return int(self.holder.total_steps_skipped)
