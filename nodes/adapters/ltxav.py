"""LTX-2 / LTX-2.3 audio-video (``comfy.ldm.lightricks.av_model.LTXAVModel``, ``BasicAVTransformerBlock``).

Patched with the host's ``dit`` replace patches ``("double_block", i)``: both hosts with LTX-2 (0.8.1,
0.29.0) hand the patch the block's whole call (``img = (vx, ax)``, both streams' timesteps, RoPE tables,
the cross-modal adaLN timesteps; 0.29 adds ``self_attention_mask`` and the prompt timesteps).

A host block runs, in this order: video self-attention + text cross-attention, audio self-attention +
text cross-attention, audio-to-video attention (video queries, audio keys), video-to-audio attention
(audio queries, keys from the video stream *before* the audio-to-video update), then each stream's MLP.
The cross-modal attentions read the other stream in the middle of the block, so one host block is
four engine blocks (index ``4i + k``), each needing only streams that are final when it runs:

* ``4i``     video: ``attn`` (``attn1``, gated), ``cross`` (``attn2`` on the text);
* ``4i + 1`` audio: ``attn`` (``audio_attn1``, gated), ``cross`` (``audio_attn2``);
* ``4i + 2`` video: ``a2v_attn`` (``audio_to_video_attn``, context = the audio stream after ``4i + 1``,
  gated), ``mlp`` (``ff``, gated);
* ``4i + 3`` audio: ``v2a_attn`` (``video_to_audio_attn``, context = the video stream after ``4i``, gated),
  ``mlp`` (``audio_ff``, gated).

The MLPs run before the other stream's cross-modal attention here (the host runs both attentions
first); nothing reads a stream's MLP result until the next host block, so the values are the same.

Selective steps (token-local branches recompute the chosen tokens): the text cross-attention of both
streams (with the 9-row adaLN table of LTX-2.3, ``cross_attention_adaln``, only with per-sample
timesteps) and both MLPs with per-sample timesteps. With per-token timesteps (image / keyframe / audio
conditioning through a noise mask) the modulation differs per token and those branches are reused.
Self-attention and the cross-modal attentions mix tokens (and carry per-token RoPE for the queries):
always reused on selective steps.

Arithmetic is each host's own, read from its block: the adaLN rows come from the block's own
``get_ada_values`` (0.29 hands it per-frame ``CompressedTimestep`` objects, which that method expands);
0.8.1 adds every residual as ``x += out * gate`` (the engine's ``x + gate * out``, the same bits),
0.29 adds the gated ones in place with ``x.addcmul_(out, gate)`` (one fused multiply-add: those branches
are ``fused`` when the block's ``forward`` calls ``addcmul_``) and the text cross-attention with
``x.add_``. So an all-FULL schedule equals the unpatched model bit for bit.

An LTXAV model sampled without an audio latent (video only: the host skips the audio stream and the
cross-modal attentions) caches the video engine blocks alone. Options that switch a stream or a
cross-modal attention off (``run_vx``, ``run_ax``, ``a2v_cross_attn``, ``v2a_cross_attn`` in
``transformer_options``) make that call the host's own block (not cached, one log line).

Cache layout: the sampler packs the video and audio latents into one tensor; the cache size estimate
gets both latents' shapes (``memory_bridge.estimate``'s ``latent_shapes``): one token per video voxel
(patch 1), one per audio latent frame (plus ID-LoRA reference audio tokens, 0.29), two branches per
engine block, ``inner_dim`` / ``audio_inner_dim`` wide.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from comfy.ldm.lightricks.av_model import BasicAVTransformerBlock, LTXAVModel  # ImportError: no LTX-2 here

from ...procache_core.engine import Branch
from . import DitBlockReplace, FamilyAdapter, install_dit_replace, outside_compile, registry

_SWITCHES = ("run_vx", "run_ax", "a2v_cross_attn", "v2a_cross_attn")   # the host block's stream switches


def _fuses(block: Any) -> bool:
    """Whether the host's block adds its gated residuals in place with ``addcmul_`` (0.29) rather than
    ``+= out * gate`` (0.8.1)."""
    return "addcmul_" in type(block).forward.__code__.co_names


def _takes_self_mask(block: Any) -> bool:
    """Whether the host's block passes ``self_attention_mask`` to the video self-attention (0.29)."""
    return "self_attention_mask" in inspect.signature(type(block).forward).parameters


def _per_sample(*ada) -> bool:
    """All adaLN rows are one per sample (B, 1, C): a branch modulated by them can run on any token subset."""
    return all(t.shape[1] == 1 for t in ada)


def _clone_streams(args: dict) -> dict:
    """``args`` with copies of the two streams: the host's block adds into ``vx`` / ``ax`` in place."""
    return {**args, "img": tuple(t.clone() for t in args["img"])}


class LTXAVBlock(DitBlockReplace):
    @outside_compile
    def __call__(self, args: dict, extra: dict) -> dict:
        self.host_call = extra.get("original_block")  # the host's block_wrap for this call
        return super().__call__(args, extra)

    def _checked(self, run: Any, args: dict, host: Callable[[dict], dict]) -> dict:
        # verify.cloned copies top-level tensors only; the streams sit in a tuple, which the host's block
        # would change in place (light mode keeps the first block's input as its lane start)
        return super()._checked(run, args, lambda a: host(a if a is args else _clone_streams(a)))

    def host_block(self, args: dict, why: str) -> dict:
        """The host's own block for this call (not cached), on copies of the streams."""
        self.adapter.note_host_block(why)
        call = getattr(self, "host_call", None)
        if call is None:
            raise RuntimeError(f"ProCache: {why}, and the host's block is not available")
        return call(_clone_streams(args))

    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.common_dit import rms_norm

        block = self.adapter.dm.transformer_blocks[self.index]
        vx, ax = args["img"]
        to = args.get("transformer_options") or {}
        if not all(to.get(k, True) for k in _SWITCHES):
            return self.host_block(args, "transformer_options switch a stream or a cross-modal attention off")
        b, fused, audio = vx.shape[0], _fuses(block), ax.numel() > 0
        mask = args.get("attention_mask")
        sa_mask = args.get("self_attention_mask") if _takes_self_mask(block) else None
        v_ts = args["v_timestep"]
        v_shift, v_scale, v_gate, v_shift_mlp, v_scale_mlp, v_gate_mlp = block.get_ada_values(
            block.scale_shift_table, b, v_ts, slice(0, 6))

        def v_attn(h):
            return block.attn1(rms_norm(h) * (1 + v_scale) + v_shift, pe=args["v_pe"], mask=sa_mask,
                               transformer_options=to)

        def v_mlp(h):
            return block.ff(rms_norm(h) * (1 + v_scale_mlp) + v_shift_mlp)

        v_cross = self._text_cross(block, vx, args["v_context"], mask, to, block.attn2, block.scale_shift_table,
                                   "prompt_scale_shift_table", v_ts, args.get("v_prompt_timestep"))
        n = 4 * self.index
        vx = run.run_block(n, vx, (Branch("attn", v_attn, v_gate, False, fused=fused), v_cross))
        if not audio:  # video only: the host runs no audio stream and no cross-modal attention
            vx = run.run_block(n + 2, vx, (Branch("mlp", v_mlp, v_gate_mlp, _per_sample(v_shift_mlp, v_scale_mlp),
                                                  fused=fused),))
            return {"img": (vx, ax)}

        a_ts = args["a_timestep"]
        a_shift, a_scale, a_gate, a_shift_mlp, a_scale_mlp, a_gate_mlp = block.get_ada_values(
            block.audio_scale_shift_table, b, a_ts, slice(0, 6))

        def a_attn(h):
            return block.audio_attn1(rms_norm(h) * (1 + a_scale) + a_shift, pe=args["a_pe"], transformer_options=to)

        def a_mlp(h):
            return block.audio_ff(rms_norm(h) * (1 + a_scale_mlp) + a_shift_mlp)

        a_cross = self._text_cross(block, ax, args["a_context"], mask, to, block.audio_attn2,
                                   block.audio_scale_shift_table, "audio_prompt_scale_shift_table", a_ts,
                                   args.get("a_prompt_timestep"))
        ax = run.run_block(n + 1, ax, (Branch("attn", a_attn, a_gate, False, fused=fused), a_cross))

        # cross-modal adaLN: rows 0-3 (scale/shift of the a2v and v2a inputs) from the scale-shift
        # timestep, row 4 (the output gate) from the gate timestep of the stream the attention writes to
        a_ss = block.get_ada_values(block.scale_shift_table_a2v_ca_audio[:4, :], b, args["a_cross_scale_shift_timestep"])
        v_ss = block.get_ada_values(block.scale_shift_table_a2v_ca_video[:4, :], b, args["v_cross_scale_shift_timestep"])
        a2v_gate = block.get_ada_values(block.scale_shift_table_a2v_ca_video[4:, :], b, args["v_cross_gate_timestep"])[0]
        v2a_gate = block.get_ada_values(block.scale_shift_table_a2v_ca_audio[4:, :], b, args["a_cross_gate_timestep"])[0]
        v_mid, a_mid = vx, ax   # the streams both cross-modal attentions read (norm3 of the host's block)
        v_cpe, a_cpe = args["v_cross_pe"], args["a_cross_pe"]

        def a2v(h):  # h is v_mid
            return block.audio_to_video_attn(rms_norm(h) * (1 + v_ss[0]) + v_ss[1],
                                             context=rms_norm(a_mid) * (1 + a_ss[0]) + a_ss[1],
                                             pe=v_cpe, k_pe=a_cpe, transformer_options=to)

        def v2a(h):  # h is a_mid
            return block.video_to_audio_attn(rms_norm(h) * (1 + a_ss[2]) + a_ss[3],
                                             context=rms_norm(v_mid) * (1 + v_ss[2]) + v_ss[3],
                                             pe=a_cpe, k_pe=v_cpe, transformer_options=to)

        vx = run.run_block(n + 2, vx, (Branch("a2v_attn", a2v, a2v_gate, False, fused=fused),
                                       Branch("mlp", v_mlp, v_gate_mlp, _per_sample(v_shift_mlp, v_scale_mlp),
                                              fused=fused)))
        ax = run.run_block(n + 3, ax, (Branch("v2a_attn", v2a, v2a_gate, False, fused=fused),
                                       Branch("mlp", a_mlp, a_gate_mlp, _per_sample(a_shift_mlp, a_scale_mlp),
                                              fused=fused)))
        return {"img": (vx, ax)}

    @staticmethod
    def _text_cross(block: Any, x, context, mask, to: dict, attn: Any, table, prompt_table: str, ts,
                    prompt_ts) -> Branch:
        """A stream's text cross-attention: ``attn(rms_norm(x), context)`` added ungated, or with the
        9-row adaLN table (LTX-2.3) ``attn(modulate(rms_norm(x)), modulate(context))`` times the gate
        (the host adds ``attn(...) * gate``; the engine's ``x + gate * out`` is the same sum)."""
        from comfy.ldm.common_dit import rms_norm

        if not getattr(block, "cross_attention_adaln", False):
            return Branch("cross", lambda h: attn(rms_norm(h), context=context, mask=mask, transformer_options=to),
                          None, True)
        b = x.shape[0]
        shift_q, scale_q, gate = block.get_ada_values(table, b, ts, slice(6, 9))
        shift_kv, scale_kv = (getattr(block, prompt_table)[None, None].to(device=x.device, dtype=x.dtype)
                              + prompt_ts.reshape(b, prompt_ts.shape[1], 2, -1)).unbind(dim=2)
        ctx = context * (1 + scale_kv) + shift_kv
        return Branch("cross", lambda h: attn(rms_norm(h) * (1 + scale_q) + shift_q, context=ctx, mask=mask,
                                              transformer_options=to), gate, _per_sample(shift_q, scale_q))


class LTXAVAdapter(FamilyAdapter):
    family = "ltxav"
    selective_support = ("full (text cross-attention and, with per-sample timesteps, the MLPs of both streams "
                         "recompute top-k tokens; self- and cross-modal attention reused)")

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.n_host = len(diffusion_model.transformer_blocks)
        self.num_blocks = 4 * self.n_host   # video, audio, video, audio per host block

    def describe(self) -> str:
        return (f"{self.family}: {self.n_host} audio-video blocks ({self.num_blocks} cached stream blocks), "
                f"selective compute {self.selective_support}")

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.n_host):
            install_dit_replace(model_patcher, LTXAVBlock(self, i, owner), "double_block", i)

    def lanes(self) -> list | None:
        return ["video", "audio", "video", "audio"] * self.n_host

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        """Video and audio tokens from the latents' shapes: ``((B, C, F, H, W), (B, C, T, bins))`` for a
        packed audio-video latent, or the video latent alone (then the audio blocks cache nothing)."""
        from ...procache_core.memory import BlockShape

        shapes = x_shape if x_shape and isinstance(x_shape[0], (tuple, list)) else (x_shape,)
        video = shapes[0]
        if len(video) != 5:
            return None   # a packed latent without its parts' shapes: no estimate
        nv = int(video[2]) * int(video[3]) * int(video[4])
        na = int(shapes[1][2]) if len(shapes) > 1 and len(shapes[1]) == 4 else 0
        ref = (cond or {}).get("ref_audio")
        tokens = ref.get("tokens") if isinstance(ref, dict) else None
        if na and getattr(tokens, "ndim", 0) == 3:  # ID-LoRA reference audio (0.29): prepended audio tokens
            na += int(tokens.shape[1])
        vw, aw = int(self.dm.inner_dim), int(self.dm.audio_inner_dim)
        per_host = [BlockShape(nv, vw, 2, "video"), BlockShape(na, aw, 2 if na else 0, "audio"),
                    BlockShape(nv, vw, 2 if na else 1, "video"), BlockShape(na, aw, 2 if na else 0, "audio")]
        return per_host * self.n_host

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        """Video token grid (frames x rows, columns) of a video-only latent; None for the packed
        audio-video latent (its parts' shapes are not in the model input)."""
        if len(x_shape) != 5 or not all(isinstance(d, int) for d in x_shape):
            return None
        return (x_shape[2] * x_shape[3], x_shape[4])


def _is_ltxav(dm: Any, model_config: Any = None) -> bool:
    """Exactly the host's LTXAVModel whose every block is the host's BasicAVTransformerBlock (a subclass
    may change the maths: it gets the model-level fallback)."""
    blocks = getattr(dm, "transformer_blocks", None)
    return type(dm) is LTXAVModel and blocks is not None and len(blocks) > 0 and \
        all(type(b) is BasicAVTransformerBlock for b in blocks)


registry.register("ltxav", "LTX-2 audio-video", _is_ltxav, lambda dm, name: LTXAVAdapter(dm),
                  preset="wan-30-balanced",
                  selective="text cross-attention, and the MLPs of both streams when the timestep is per sample")
