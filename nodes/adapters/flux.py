"""Flux.1 (``comfy.ldm.flux.model.Flux`` with the host's Double/SingleStreamBlock).

Patched with ``dit`` replace patches ``("double_block", i)`` and ``("single_block", i)``.

* A double block has two residual streams (image, text) sharing one joint attention. It is run as two
  engine blocks (image stream ``2i``, text stream ``2i+1``) with branches ``attn`` (the stream's
  output projection of the joint attention, gated by ``mod1.gate``; the joint attention is computed
  lazily, once, only when some stream needs it) and ``mlp`` (gated by ``mod2.gate``; token-local, so
  selective steps recompute it for the top-k tokens of that stream).
* A single block fuses attention and MLP in ``linear2(cat(attn, mlp))``: one branch ``attn_mlp``, gated
  by ``mod.gate``. Only its attention input mixes tokens, so in the deep blocks the attention output is
  kept as the branch's token-mixing half (``Branch.aux``) and selective steps recompute the MLP half for
  the chosen tokens (``linear1``'s MLP rows, ``mlp_act``, ``linear2``) with the kept attention rows
  (``Branch.partial``). ``linear1`` is sliced to its MLP rows when it is a plain host Linear; a cast,
  patched or quantized ``linear1`` is evaluated whole for those tokens (one log line).

Engine blocks: ``2 * n_double + n_single``, so the stats' block evaluations count a double block
twice per model evaluation (2 double + 2 single blocks, 4 steps: 24 block evaluations, not 16).

Modulation is lazy (``nodes/adapters/modulation.py``): a reused block evaluates only the gate rows
of its ``Modulation`` linear; computed blocks call the host's ``Modulation`` itself.

Arithmetic is the host's (``x + gate * out`` is what its ``x += out * gate`` computes), so an
all-FULL schedule reproduces the unpatched model. What differs between hosts is read from the block,
never from a version string:

* token order of the joint attention (``flipped_img_txt`` before ComfyUI 0.14, text first after);
* in-block patches: from 0.14 the host's blocks apply ``transformer_options["patches"]``
  (``attn1_patch`` around q/k/v, with ``img_slice`` in the double block's options, and
  ``attn1_output_patch`` on the attention output: NAG, FluxKVCache). The adapter applies them the same
  way where the host's ``forward`` does (told from its source) and ignores them where it does not;
  a model carrying them on a block whose source cannot be read runs that block as the host's own;
* per-token-range modulation (``modulation_dims``): HunyuanVideo passes it in the patch's arguments,
  Flux (0.29, reference images at timestep zero, two-row ``vec``) only to its own block call; it is
  read from there, and a multi-row modulation whose ranges cannot be read runs the host's block;
* Ovis' ``yak_mlp`` single blocks (SiLU(second half) * first half of the MLP rows).

``block_index`` / ``total_blocks`` / ``block_type`` are set in the options the patches and attention
see, as the host's forward sets them.
"""
from __future__ import annotations

import inspect
import threading
from typing import Any, Callable

import torch

from ...procache_core.engine import Branch
from ...procache_core.modulation import LazyModulation
from ..run_context import block_compile
from . import DitBlockReplace, FamilyAdapter, install_dit_replace, log, outside_compile
from .compiled import compiled
from .registry import register
from .modulation import lazy_chunks, reused_gates, row_evaluator


def _img_first(block) -> bool:
    """Joint-attention order of a double block: image tokens first (HunyuanVideo's blocks before ComfyUI
    0.14, ``flipped_img_txt=True``) or text first (Flux, and every double block from 0.14 on, which has no
    ``flipped_img_txt`` attribute any more)."""
    return bool(getattr(block, "flipped_img_txt", False))


_READS_PATCHES: dict[type, bool | None] = {}


def reads_patches(block) -> bool | None:
    """Whether the host block's ``forward`` applies ``transformer_options["patches"]`` (``attn1_patch`` /
    ``attn1_output_patch``: ComfyUI 0.14 on), told from its source; None when the source is unavailable."""
    cls = type(block)
    if cls not in _READS_PATCHES:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            _READS_PATCHES[cls] = None
        else:
            _READS_PATCHES[cls] = "attn1_patch" in src or "attn1_output_patch" in src
    return _READS_PATCHES[cls]


def in_block_patches(block, to: dict) -> tuple[list, list] | None:
    """(``attn1_patch``, ``attn1_output_patch``) as the host's block applies them: empty lists where the
    host's block ignores them; None when the model carries some and that cannot be told."""
    p = to.get("patches") or {}
    pre, post = list(p.get("attn1_patch") or ()), list(p.get("attn1_output_patch") or ())
    if not pre and not post:
        return [], []
    mode = reads_patches(block)
    if mode is None:
        return None
    return (pre, post) if mode else ([], [])


def patched_attention(q, k, v, pe, mask, to: dict, patches: tuple[list, list], img_slice: list | None = None):
    """The host's attention with its in-block patches around it, in the host's order: ``attn1_patch``
    may replace q/k/v/pe/mask, ``attn1_output_patch`` the output; both get a copy of the block's
    options (plus ``img_slice`` in a double block)."""
    from comfy.ldm.flux.math import attention

    pre, post = patches
    if not pre and not post:
        return attention(q, k, v, pe=pe, mask=mask, transformer_options=to)
    extra = to.copy()
    if img_slice is not None:
        extra["img_slice"] = img_slice
    for p in pre:
        out = p(q, k, v, pe=pe, attn_mask=mask, extra_options=extra)
        q, k, v, pe, mask = out.get("q", q), out.get("k", k), out.get("v", v), out.get("pe", pe), \
            out.get("attn_mask", mask)
    a = attention(q, k, v, pe=pe, mask=mask, transformer_options=to)
    for p in post:
        a = p(a, extra)
    return a


def host_block_kwargs(original_block: Callable | None) -> dict | None:
    """Keyword arguments the host's ``block_wrap`` gives its block beyond the patch's ``args`` (ComfyUI
    0.29 Flux: ``modulation_dims_img`` / ``modulation_dims`` for reference images at timestep zero,
    held in its closure as ``extra_kwargs``): {} when it gives none, None when it cannot be read."""
    code = getattr(original_block, "__code__", None)
    if code is None:
        return None
    names = code.co_freevars
    if "extra_kwargs" not in names:
        return {}
    try:
        value = (original_block.__closure__ or ())[names.index("extra_kwargs")].cell_contents
    except (IndexError, ValueError):
        return None
    return dict(value) if isinstance(value, dict) else None


def gate_layout(dims: list | None, n: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Gate chunk -> tensor broadcasting over (B, n, C) with each token range's row, the values the
    host's ``apply_mod(out, gate, None, dims)`` multiplies each range by; None without ranges."""
    if dims is None:
        return None

    def layout(g: torch.Tensor) -> torch.Tensor:
        parts = []
        for start, stop, row in dims:
            stop = n if stop is None else min(stop, n)
            if stop > start:
                parts.append(g[:, row:row + 1].expand(g.shape[0], stop - start, g.shape[-1]))
        return torch.cat(parts, dim=1)
    return layout


def _flat(mods) -> list:
    """(ModulationOut, ModulationOut | None) -> [shift, scale, gate, (shift, scale, gate)]."""
    return [t for m in mods if m is not None for t in (m.shift, m.scale, m.gate)]


def _lazy_mod(modulation, vec) -> LazyModulation:
    """The host's ``Modulation(vec)`` (full, exact) with gate chunks from their weight rows alone."""
    import torch.nn.functional as F

    v = vec[:, None, :] if vec.ndim == 2 else vec
    return lazy_chunks(lambda: _flat(modulation(vec)), modulation.lin, lambda: F.silu(v), v,
                       modulation.multiplier)


def _gates(run: Any, modulation: Any, vec, chunks: tuple[int, ...], layout=None) -> list:
    """Gate chunks of a reused block: what ``_lazy_mod(modulation, vec).lazy_gate(i, layout)`` gives,
    with the activation of ``vec`` computed once per evaluation; ``modulation`` None: ``vec`` is the
    block's (ModulationOut, ModulationOut | None) from outside (Flux.2 / Chroma)."""
    import torch.nn.functional as F

    if modulation is None:
        flat = _flat(vec)
        out = [flat[i] for i in chunks]
    else:
        v = vec[:, None, :] if vec.ndim == 2 else vec
        out = reused_gates(run, modulation.lin, vec, lambda: F.silu(v), v, modulation.multiplier, chunks)
        if out is None:  # not sliced: the host's Modulation, once
            flat = _flat(modulation(vec))
            out = [flat[i] for i in chunks]
    return out if layout is None else [layout(g) for g in out]


def _qkv(attn_mod, x, shift, scale, norm, num_heads, dims=None):
    """q, k, v of one stream; ``dims`` is the host's per-token modulation layout (HunyuanVideo I2V)."""
    from comfy.ldm.flux.layers import apply_mod

    h = apply_mod(norm(x), (1 + scale), shift, dims)
    qkv = attn_mod.qkv(h)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn_mod.norm(q, k, v)
    return q, k, v


def _single_act(block, mlp):
    """The single block's MLP activation: Ovis' ``yak_mlp`` multiplies SiLU of the second half of the
    rows by the first half; every other layout applies ``mlp_act``."""
    if getattr(block, "yak_mlp", False):
        half = block.mlp_hidden_dim_first // 2
        return block.mlp_act(mlp[..., half:]) * mlp[..., :half]
    return block.mlp_act(mlp)


# Pure branch maths (block module, tensors in; tensors out): what ``compiled`` hands to torch.compile
# when the host compiled the model. No ProCache state in here.
# The host's attention itself (rope + optimized attention) runs eagerly between the graphs: its CPU
# sub-quadratic path reads the free memory (dynamo would guard on that number), and it needs the run's
# transformer_options (a tensor like ``sample_sigmas`` in there would be guarded on, per step count).

def double_qkv(block, img, txt, ishift, iscale, tshift, tscale, dims_img=None, dims_txt=None):
    """q, k, v of the joint attention of a double block (both streams, in the block's order)."""
    iq, ik, iv = _qkv(block.img_attn, img, ishift, iscale, block.img_norm1, block.num_heads, dims_img)
    tq, tk, tv = _qkv(block.txt_attn, txt, tshift, tscale, block.txt_norm1, block.num_heads, dims_txt)
    if _img_first(block):
        return torch.cat((iq, tq), dim=2), torch.cat((ik, tk), dim=2), torch.cat((iv, tv), dim=2)
    return torch.cat((tq, iq), dim=2), torch.cat((tk, ik), dim=2), torch.cat((tv, iv), dim=2)


def stream_mlp(norm, mlp, h, shift, scale, dims=None):
    """One stream's MLP branch output (any subset of its tokens when ``dims`` is None), before gating."""
    from comfy.ldm.flux.layers import apply_mod

    return mlp(apply_mod(norm(h), (1 + scale), shift, dims))


def single_pre(block, h, shift, scale, dims=None):
    """A single block's q, k, v and MLP input (``linear1`` of the modulated stream)."""
    from comfy.ldm.flux.layers import apply_mod

    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(h), (1 + scale), shift, dims)),
                           [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    return q, k, v, mlp


def single_post(block, attn, mlp):
    """A single block's fused branch output before gating: ``linear2(cat(attn, act(mlp)))``."""
    return block.linear2(torch.cat((attn, _single_act(block, mlp)), 2))


def _rows(t) -> int:
    """Rows of a modulation input / chunk (1 for a (B, C) vector)."""
    return int(t.shape[1]) if getattr(t, "ndim", 0) == 3 else 1


_HOST_CALLS = threading.local()   # per thread: id(patch) -> the host's block_wrap of the call in progress


class FluxBlockReplace(DitBlockReplace):
    """What Flux-family blocks share: the host's own block call (kept per call for the two fallbacks
    below), the block's transformer_options, and the modulation ranges of the call.

    The patch object is shared by every thread that samples the model (the host's multi-GPU CFG split
    runs cond and uncond in worker threads at once), so the host's block call is kept per thread and
    per call (restored after a nested call), never on the object."""

    block_type = ""

    @outside_compile
    def __call__(self, args: dict, extra: dict) -> dict:
        calls = _HOST_CALLS.__dict__.setdefault("calls", {})
        key = id(self)
        outer = calls.get(key)
        calls[key] = extra.get("original_block")  # the host's block_wrap for this call
        try:
            return super().__call__(args, extra)
        finally:
            if outer is None:
                calls.pop(key, None)
            else:
                calls[key] = outer

    @property
    def host_call(self) -> Callable | None:
        """The host's block call of this thread's call in progress (None outside one)."""
        return getattr(_HOST_CALLS, "calls", {}).get(id(self))

    def block_options(self, args: dict, total: int) -> dict:
        """A copy of the call's transformer_options with block_index / total_blocks / block_type, as the
        host's forward sets them before every block."""
        to = dict(args.get("transformer_options") or {})
        to.update(block_index=self.index, total_blocks=total, block_type=self.block_type)
        return to

    def mod_dims(self, args: dict, keys: tuple[str, ...], multi_row: bool) -> tuple | None:
        """The call's ``modulation_dims`` per stream: from the patch's args (HunyuanVideo), else from the
        host's block call (Flux 0.29); None when the modulation has several rows and neither tells."""
        if any(k in args for k in keys):
            return tuple(args.get(k) for k in keys)
        kw = host_block_kwargs(getattr(self, "host_call", None))
        dims = tuple((kw or {}).get(k) for k in keys)
        if multi_row and all(d is None for d in dims):
            return None  # several modulation rows need ranges: another pack's wrapper may hide the host's
        return dims

    def host_block(self, args: dict, why: str) -> dict:
        """Run the host's own block for this call (not cached): what the adapter cannot reproduce."""
        self.adapter.note_host_block(why)
        call = getattr(self, "host_call", None)
        if call is None:
            raise RuntimeError(f"ProCache: {why}, and the host's block is not available")
        return call(args)


class FluxDoubleBlock(FluxBlockReplace):
    block_type = "double"

    def run_block(self, run: Any, args: dict) -> dict:
        block = self.adapter.dm.double_blocks[self.index]
        img, txt, vec = args["img"], args["txt"], args["vec"]
        patches = in_block_patches(block, args.get("transformer_options") or {})  # reads "patches" only
        if patches is None:
            return self.host_block(args, "the model has attention patches the adapter cannot place")
        multi = _rows(vec) > 1 if block.modulation else _rows(vec[0][0].shift) > 1
        dims = self.mod_dims(args, ("modulation_dims_img", "modulation_dims_txt"), multi)
        if dims is None:
            return self.host_block(args, "the modulation has per-token ranges the adapter cannot read")
        dims_i, dims_t = dims
        gi, gt = gate_layout(dims_i, img.shape[1]), gate_layout(dims_t, txt.shape[1])
        # a reused block: only its gates (no branches, no lazy modulation, no options copy)
        mods = (block.img_mod, block.txt_mod) if block.modulation else (None, None)
        vecs = (vec, vec) if block.modulation else vec
        img_out = run.reuse_block(2 * self.index, img, ("attn", "mlp"),
                                  lambda: _gates(run, mods[0], vecs[0], (2, 5), gi))
        if img_out is not None:
            txt_out = run.reuse_block(2 * self.index + 1, txt, ("attn", "mlp"),
                                      lambda: _gates(run, mods[1], vecs[1], (2, 5), gt))
            if txt_out is not None:
                return self._out(img_out, txt_out)
        return self._computed(run, args, block, patches, dims_i, dims_t, gi, gt, img_out)

    @staticmethod
    def _out(img, txt) -> dict:
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": img, "txt": txt}

    def _computed(self, run: Any, args: dict, block, patches, dims_i, dims_t, gi, gt, img_done=None) -> dict:
        """The block through its branches (``img_done``: the image stream's result when it was reused)."""
        img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
        attn_mask = args["attn_mask"] if "attn_mask" in args else args.get("attention_mask")
        to = self.block_options(args, self.adapter.n_double)
        if block.modulation:
            im, tm = _lazy_mod(block.img_mod, vec), _lazy_mod(block.txt_mod, vec)
        else:
            im, tm = (LazyModulation(lambda m=m: _flat(m)) for m in vec)
        img_in, txt_in = img, txt
        joint: dict = {}
        # compiled maths only without token ranges (those are Python lists dynamo would specialise on)
        kw = block_compile(self.owner) if dims_i is None and dims_t is None else None
        qkv_fn, compiled_mlp = compiled(double_qkv, kw), compiled(stream_mlp, kw)
        first = _img_first(block)

        def attn_out() -> dict:
            if not joint:
                q, k, v = qkv_fn(block, img_in, txt_in, im[0], im[1], tm[0], tm[1], dims_i, dims_t)
                a = patched_attention(q, k, v, pe, attn_mask, to, patches,
                                      None if first else [txt_in.shape[1], q.shape[2]])
                n = img_in.shape[1] if first else txt_in.shape[1]
                ia, ta = (a[:, :n], a[:, n:]) if first else (a[:, n:], a[:, :n])
                joint["img"], joint["txt"] = block.img_attn.proj(ia), block.txt_attn.proj(ta)
            return joint

        def mlp_fn(norm, mlp, h, shift, scale, dims):
            if kw:  # token count varies (both streams, selective rows): one dynamic graph, no recompiles
                torch._dynamo.maybe_mark_dynamic(h, 1)
            return compiled_mlp(norm, mlp, h, shift, scale, dims)

        img = img_done if img_done is not None else run.run_block(2 * self.index, img, (
            Branch("attn", lambda h: attn_out()["img"], im.lazy_gate(2, gi), False),
            Branch("mlp", lambda h: mlp_fn(block.img_norm2, block.img_mlp, h, im[3], im[4], dims_i),
                   im.lazy_gate(5, gi), dims_i is None),
        ))
        txt = run.run_block(2 * self.index + 1, txt, (
            Branch("attn", lambda h: attn_out()["txt"], tm.lazy_gate(2, gt), False),
            Branch("mlp", lambda h: mlp_fn(block.txt_norm2, block.txt_mlp, h, tm[3], tm[4], dims_t),
                   tm.lazy_gate(5, gt), dims_t is None),
        ))
        joint.clear()
        return self._out(img, txt)


class FluxSingleBlock(FluxBlockReplace):
    block_type = "single"
    keeps_attention = True  # selective steps recompute the MLP half of chosen tokens (Branch.partial)

    def run_block(self, run: Any, args: dict) -> dict:
        from comfy.ldm.flux.layers import apply_mod

        block = self.adapter.dm.single_blocks[self.index]
        x, vec = args["img"], args["vec"]
        patches = in_block_patches(block, args.get("transformer_options") or {})  # reads "patches" only
        if patches is None:
            return self.host_block(args, "the model has attention patches the adapter cannot place")
        multi = _rows(vec) > 1 if block.modulation else _rows(vec.shift) > 1
        dims = self.mod_dims(args, ("modulation_dims",), multi)
        if dims is None:
            return self.host_block(args, "the modulation has per-token ranges the adapter cannot read")
        (dims,) = dims
        engine_block = self.adapter.single_offset + self.index
        layout = gate_layout(dims, x.shape[1])
        out = run.reuse_block(engine_block, x, ("attn_mlp",), lambda: _gates(
            run, block.modulation if block.modulation else None, vec if block.modulation else (vec, None), (2,), layout))
        if out is not None:
            return self._out(out)
        pe = args["pe"]
        attn_mask = args["attn_mask"] if "attn_mask" in args else args.get("attention_mask")
        to = self.block_options(args, self.adapter.n_single)
        mod = _lazy_mod(block.modulation, vec) if block.modulation else LazyModulation(lambda: _flat((vec, None)))

        kept: dict = {}
        kw = block_compile(self.owner) if dims is None else None
        pre_fn, post_fn = compiled(single_pre, kw), compiled(single_post, kw)

        def compute(h):
            q, k, v, mlp = pre_fn(block, h, mod[0], mod[1], dims)
            attn = kept["attn"] = patched_attention(q, k, v, pe, attn_mask, to, patches)
            return post_fn(block, attn, mlp)

        def partial(rows, attn_rows):
            h = apply_mod(block.pre_norm(rows), (1 + mod[1]), mod[0], None)
            width = 3 * block.hidden_size
            sliced = row_evaluator(block.linear1, lambda: h, h)
            if sliced is not None:
                mlp = sliced(width, width + block.mlp_hidden_dim_first)
            else:
                self.adapter.note_unsliced()
                mlp = block.linear1(h)[..., width:]
            return block.linear2(torch.cat((attn_rows.to(mlp.dtype), _single_act(block, mlp)), 2))

        if self.keeps_attention and dims is None:
            branch = Branch("attn_mlp", compute, mod.lazy_gate(2), False, aux=lambda: kept.pop("attn", None),
                            partial=partial)
        else:
            branch = Branch("attn_mlp", compute, mod.lazy_gate(2, gate_layout(dims, x.shape[1])), False)
        x = run.run_block(engine_block, x, (branch,))
        kept.clear()
        return self._out(x)

    @staticmethod
    def _out(x) -> dict:
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return {"img": x}


class FluxAdapter(FamilyAdapter):
    family = "flux"
    compiles_branches = True  # double/single branch maths go through adapters/compiled.py
    selective_support = ("full (double-block MLPs and the MLP half of single blocks recompute top-k tokens; "
                         "attention reused)")

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.n_double = len(diffusion_model.double_blocks)
        self.n_single = len(diffusion_model.single_blocks)
        self.single_offset = 2 * self.n_double
        self.num_blocks = 2 * self.n_double + self.n_single
        self.patch_size = int(getattr(diffusion_model, "patch_size", 2))
        self._noted = False

    def note_unsliced(self) -> None:
        if not self._noted:
            self._noted = True
            log.info("ProCache: Flux single-block linear1 is cast, patched or quantized; selective steps evaluate "
                     "its full width (attention rows included) for the chosen tokens.")

    def install(self, model_patcher: Any, owner: Any) -> None:
        for i in range(self.n_double):
            install_dit_replace(model_patcher, FluxDoubleBlock(self, i, owner), "double_block", i)
        for i in range(self.n_single):
            install_dit_replace(model_patcher, FluxSingleBlock(self, i, owner), "single_block", i)

    def lanes(self) -> list | None:
        return ["img", "txt"] * self.n_double + ["joint"] * self.n_single

    def cache_layout(self, x_shape: tuple, context_tokens: int | None, cond: dict | None = None) -> list | None:
        from ...procache_core.memory import double_single_layout
        from . import ref_latent_tokens

        hw = self.grid_hw(x_shape)
        if hw is None:
            return None
        img = hw[0] * hw[1] + ref_latent_tokens(cond, self.patch_size)  # Kontext / Flux.2 reference images
        return double_single_layout(self.n_double, self.n_single, img, context_tokens or 512,
                                    int(self.dm.hidden_size))

    def grid_hw(self, x_shape: tuple) -> tuple[int, int] | None:
        if len(x_shape) != 4:
            return None
        p = self.patch_size
        return ((x_shape[2] + p // 2) // p, (x_shape[3] + p // 2) // p)

    def text_tokens(self, x_shape: tuple, context_tokens: int | None) -> tuple[int, int, int] | None:
        # single blocks run on cat((txt, img)): the prompt's tokens come first
        return (0, int(context_tokens), self.single_offset) if context_tokens else None

    def modulation_layers(self) -> dict[str, Any]:
        out = {}
        for i, b in enumerate(self.dm.double_blocks):
            if b.modulation:  # Flux.2 / Chroma blocks take their modulation from outside the block
                out[f"double_blocks.{i}.img_mod.lin"] = b.img_mod.lin
                out[f"double_blocks.{i}.txt_mod.lin"] = b.txt_mod.lin
        for i, b in enumerate(self.dm.single_blocks):
            if b.modulation:
                out[f"single_blocks.{i}.modulation.lin"] = b.modulation.lin
        return out


# -- registration ---------------------------------------------------------------------------------------

FLUX_SELECTIVE = "double-block MLPs, the MLP half of single blocks"  # flux, flux2 and chroma (Apply's text)


def flux_blocks(dm: Any) -> bool:
    """Every double / single block is exactly the host's Flux.1 block class (a subclass may change the
    maths: it gets the model-level fallback)."""
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock

    return all(type(b) is DoubleStreamBlock for b in dm.double_blocks) and \
        all(type(b) is SingleStreamBlock for b in dm.single_blocks)


def is_flux_network(dm: Any, global_modulation: bool) -> bool:
    """The host's ``Flux`` with Flux.1 blocks; ``params.global_modulation`` tells Flux.2 from Flux.1."""
    from comfy.ldm.flux.model import Flux

    return isinstance(dm, Flux) and flux_blocks(dm) and \
        bool(getattr(getattr(dm, "params", None), "global_modulation", False)) == global_modulation


# the Flux-block families (flux and flux2 at 10, chroma at 11) are asked before every other family
register("flux", "Flux.1 (dev, schnell)", lambda dm, cfg: is_flux_network(dm, False), lambda dm, name: FluxAdapter(dm),
         preset="flux-28-balanced", priority=10, selective=FLUX_SELECTIVE)
