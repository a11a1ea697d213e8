"""A compact class-conditional DiT (the paper's DiT-XL/2 architecture) wired to the ProCache engine.

Used by the host-free tests and the benchmarks: it gives the runtime a real adaLN-Zero transformer
without ComfyUI. Parameter names follow the public DiT checkpoints (``x_embedder.proj``,
``t_embedder.mlp``, ``y_embedder.embedding_table``, ``blocks.N.attn.qkv`` ...), so such a state dict
loads with ``load_state_dict``.

``DiT.forward(x, t, y, cache_run=None)``: without a run every block is computed plainly; with one
each block goes through ``cache_run.run_block`` as two branches, self-attention (not token-local)
and MLP (token-local), gated by the adaLN gates of the current timestep.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .engine import Branch, CacheRun
from .modulation import LazyModulation, linear_rows


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of a (B, N, C) tensor by per-sample (B, C) shift and scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _unsqueeze1(t: Tensor) -> Tensor:
    return t.unsqueeze(1)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of (possibly fractional) timesteps, in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_pos_embed(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (1, h*w, dim), float32; first half encodes columns."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2-D sin-cos embedding")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))

    def axis(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    emb = torch.cat([axis(cols), axis(rows)], dim=1)
    return emb.to(torch.float32).unsqueeze(0)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (index ``num_classes``) for the unconditional label."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += gate_msa * attn(mod(norm1 x)); x += gate_mlp * mlp(mod(norm2 x))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def branches(self, c: Tensor) -> list[Branch]:
        """The two residual branches for conditioning ``c``.

        adaLN follows the current timestep on every step, lazily: computed steps evaluate it whole
        (the unpatched expression), reused steps only the two gate chunks (see procache_core.modulation).
        """
        lin = self.adaLN_modulation[1]
        width = lin.out_features // 6
        act: list[Tensor] = []

        def chunk(i: int) -> Tensor:
            if not act:
                act.append(self.adaLN_modulation[0](c))
            return linear_rows(act[0], lin.weight, lin.bias, i * width, (i + 1) * width)

        mod = LazyModulation(lambda: self.adaLN_modulation(c).chunk(6, dim=1), chunk)
        return [
            Branch("attn", lambda h: self.attn(modulate(self.norm1(h), mod[0], mod[1])),
                   mod.lazy_gate(2, _unsqueeze1), token_local=False),
            Branch("mlp", lambda h: self.mlp(modulate(self.norm2(h), mod[3], mod[4])),
                   mod.lazy_gate(5, _unsqueeze1), token_local=True),
        ]

    def forward(self, x: Tensor, c: Tensor, cache_run: CacheRun | None = None, index: int = 0) -> Tensor:
        branches = self.branches(c)
        if cache_run is not None:
            return cache_run.run_block(index, x, branches)
        attn, mlp = branches
        a = attn.compute(x)
        x = x + attn.gate() * a
        m = mlp.compute(x)
        x = x + mlp.gate() * m
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Class-conditional diffusion transformer (Peebles & Xie) with optional ProCache run."""

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4,
                 hidden_size: int = 1152, depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_classes: int = 1000, learn_sigma: bool = True, zero_init: bool = True) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        g = input_size // patch_size
        self.register_buffer("pos_embed", sincos_pos_embed(hidden_size, g, g))
        self._extra_pos: dict[tuple, Tensor] = {}
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights(zero_init)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def grid_hw(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of a latent of ``height`` x ``width``."""
        return height // self.patch_size, width // self.patch_size

    @torch.no_grad()
    def initialize_weights(self, zero_init: bool = True) -> None:
        """DiT initialisation; ``zero_init`` zeroes adaLN and the output layer (adaLN-Zero).

        Zeroed gates make an untrained model compute nothing, so tests with random weights pass
        ``zero_init=False`` to get blocks that actually contribute.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if not zero_init:  # random test model: unit-scale conditioning so the gates are O(1)
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=1.0)
            return
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if zero_init:
            for blk in self.blocks:
                nn.init.zeros_(blk.adaLN_modulation[-1].weight)
                nn.init.zeros_(blk.adaLN_modulation[-1].bias)
            for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def _pos_embed(self, h: int, w: int, like: Tensor) -> Tensor:
        if h * w == self.pos_embed.shape[1] and h == w:
            pos = self.pos_embed
        else:  # other resolutions: the same fixed formula, evaluated once per grid and device
            key = (h, w, like.device)
            pos = self._extra_pos.get(key)
            if pos is None:
                pos = self._extra_pos[key] = sincos_pos_embed(self.hidden_size, h, w).to(like.device)
        return pos.to(like.dtype)

    def unpatchify(self, x: Tensor, h: int, w: int) -> Tensor:
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, cache_run: CacheRun | None = None) -> Tensor:
        """Predict (B, out_channels, H, W) from latents ``x``, timesteps ``t`` (B,) and labels ``y`` (B,)."""
        h, w = self.grid_hw(x.shape[-2], x.shape[-1])
        tokens = self.x_embedder(x)
        tokens = tokens + self._pos_embed(h, w, tokens)
        c = self.t_embedder(t) + self.y_embedder(y)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, c, cache_run, i)
        return self.unpatchify(self.final_layer(tokens, c), h, w)


def DiT_XL_2(**kwargs) -> DiT:
    """DiT-XL/2 as in the paper: 28 blocks, hidden 1152, 16 heads, patch 2 (256 px -> 32x32 latent)."""
    cfg = dict(input_size=32, patch_size=2, hidden_size=1152, depth=28, num_heads=16)
    cfg.update(kwargs)
    return DiT(**cfg)


def tiny_dit(seed: int = 0, **kwargs) -> DiT:
    """A small random DiT for tests (8x8 token grid, 4 blocks, width 64), seeded and eval-mode."""
    cfg = dict(input_size=16, patch_size=2, in_channels=4, hidden_size=64, depth=4, num_heads=4,
               num_classes=10, learn_sigma=True, zero_init=False)
    cfg.update(kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiT(**cfg)
    return model.eval()


# -- sampler -------------------------------------------------------------------------------------

def _alphas_cumprod(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> list[float]:
    """Linear-beta schedule of DiT as Python floats (no tensors: the sampler loop stays sync-free)."""
    out, prod = [], 1.0
    for i in range(num_train_steps):
        beta = beta_start + (beta_end - beta_start) * i / (num_train_steps - 1)
        prod *= 1.0 - beta
        out.append(prod)
    return out


def ddim_timesteps(steps: int, num_train_steps: int = 1000) -> list[int]:
    """``steps`` evenly spaced training timesteps, from the noisiest down to 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        return [num_train_steps - 1]
    return [round((num_train_steps - 1) * (1 - i / (steps - 1))) for i in range(steps)]


@torch.no_grad()
def ddim_sample(model: DiT, noise: Tensor, labels: Tensor, steps: int = 20, cfg_scale: float = 4.0,
                cache_run: CacheRun | None = None, stream_key: str = "cond_uncond",
                timesteps: Sequence[int] | None = None) -> Tensor:
    """Deterministic DDIM (eta 0); returns the final latent.

    With ``cfg_scale != 1`` cond and uncond go through the model as ONE batch ``[cond; uncond]``
    and the run is told ``chunks=2``, as ComfyUI batches them. Each step calls
    ``cache_run.begin_step(i)`` and ``set_stream`` before the model.
    """
    ab = _alphas_cumprod()
    ts = list(timesteps) if timesteps is not None else ddim_timesteps(steps)
    use_cfg = cfg_scale != 1.0
    chunks = 2 if use_cfg else 1
    grid = model.grid_hw(noise.shape[-2], noise.shape[-1])
    y_in = torch.cat([labels, torch.full_like(labels, model.null_class)]) if use_cfg else labels
    x = noise
    for i, t in enumerate(ts):
        if cache_run is not None:
            cache_run.begin_step(i)
            cache_run.set_stream(stream_key, chunks=chunks, grid_hw=grid)
        x_in = torch.cat([x, x]) if use_cfg else x
        t_in = torch.full((x_in.shape[0],), float(t), device=x.device)
        out = model(x_in, t_in, y_in, cache_run=cache_run)
        eps = out[:, : model.in_channels]
        if use_cfg:
            cond, uncond = eps.chunk(2)
            eps = uncond + cfg_scale * (cond - uncond)
        a_t = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps
    return x
