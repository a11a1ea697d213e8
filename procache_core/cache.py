"""BlockCache: the tensors ProCache reuses between denoising steps.

Layout: stream key -> block index -> :class:`BlockEntry`. A stream is one layout of the batch the
host sends through the model (for example ComfyUI's cond+uncond batch), so every tensor holds the
full batch ``(B, N, C)`` and each CFG branch / batch row keeps its own features.

Branch outputs are stored *before* gating: adaLN gates (and the shift/scale inside ``compute``)
depend on the timestep and are recomputed on every step, so a reused step still follows the current
noise level. For the deep blocks that can run selectively, the entry also keeps what token scoring
needs: the block input at the last refresh of each token and that refresh's step (int32, on device).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterator

import torch
from torch import Tensor

from .storage import CacheStorage, Loaded

_INPUT = "\x00input_ref"  # key of the input reference among an entry's loaded tensors
_AUX = "\x00aux:"         # prefix of the kept token-mixing halves (``BlockEntry.aux``) among them


@dataclass
class BlockEntry:
    """Cached state of one block in one stream."""

    signature: tuple                    # (shape, dtype, device, branch names): reuse only on an exact match
    outputs: dict[str, Tensor]          # branch name -> output before gating, (B, N, C), activation dtype
    input_ref: Tensor | None = None     # block input as of each token's last refresh (B, N, C) (deep blocks)
    last_refresh: Tensor | None = None  # step of each token's last refresh, int32 (B, N) (deep blocks)
    segment: int = -1                   # segment (opening FULL step) in which the outputs were computed
    aux: dict[str, Tensor] = field(default_factory=dict)  # branch name -> its token-mixing half (deep
                                        # blocks of branches with ``Branch.partial``, e.g. Flux single blocks)
    # forecast history (procache_core.forecast): noise-axis values of the computed outputs, newest first,
    # and per branch the divided differences [d1, d2, ...] (``outputs`` is d0); empty when not forecasting
    nodes: tuple[float, ...] = ()
    diffs: dict[str, list[Tensor]] = field(default_factory=dict)
    gains: dict[str, Tensor] = field(default_factory=dict)  # per branch: share of the extrapolation used

    def history_nbytes(self) -> int:
        """Bytes of the forecast differences (part of :meth:`nbytes`)."""
        return sum(t.nbytes for ds in self.diffs.values() for t in ds)

    def nbytes(self) -> int:
        total = sum(t.nbytes for t in self.outputs.values()) + sum(t.nbytes for t in self.aux.values())
        total += self.history_nbytes()
        for t in (self.input_ref, self.last_refresh):
            if t is not None:
                total += t.nbytes
        return total


@dataclass
class StreamState:
    """Everything cached for one stream, plus per-stream bookkeeping used by the engine."""

    chunks: int = 1
    blocks: dict[int, BlockEntry] = field(default_factory=dict)
    lanes: dict[Hashable, BlockEntry] = field(default_factory=dict)  # light mode: one residual per lane
    forced_full_eval: int = -1          # model evaluation in which this stream must run FULL
    refresh_segment: int = -1           # scheduled FULL step whose segment this stream's cache belongs to
    refresh_step: int = -1              # step of the evaluation that last computed this stream in full
    decided_eval: int = -1              # model evaluation the FULL/reuse decision below was made for
    eval_full: bool = False             # that evaluation runs every block FULL
    # drift guard (engine): block 0's outputs at the last full evaluation, its noise value, and the drift
    # per noise unit measured between the last two full evaluations
    guard_ref: tuple | None = None
    guard_rate: float | None = None


def block_signature(x: Tensor, names: tuple[str, ...]) -> tuple:
    """What must match for a cached entry to be reusable for input ``x``."""
    return (tuple(x.shape), x.dtype, x.device, names)


class BlockCache:
    """Per stream, per block, per branch tensors (see module docstring).

    Where the tensors live is :class:`~procache_core.storage.CacheStorage`'s business: ``put`` stores
    working tensors, ``checkout`` gives working tensors for a reused step (and starts loading the
    next block's), ``checkin`` writes back what a selective step updated in place.
    """

    def __init__(self, storage: CacheStorage | None = None) -> None:
        self._streams: dict[Hashable, StreamState] = {}
        self.storage = storage if storage is not None else CacheStorage()
        self._pending: dict[tuple, Loaded] = {}   # (stream key, block) -> load in flight

    def stream(self, key: Hashable) -> StreamState:
        """The state of stream ``key`` (created empty on first use)."""
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = StreamState()
        return state

    def get(self, key: Hashable, block: int, signature: tuple) -> BlockEntry | None:
        """The entry of ``block`` in stream ``key`` when it matches ``signature``, else None."""
        state = self._streams.get(key)
        if state is None:
            return None
        entry = state.blocks.get(block)
        if entry is None or entry.signature != signature:
            return None
        return entry

    def put(self, key: Hashable, block: int, entry: BlockEntry, old: BlockEntry | None = None) -> None:
        """Store (replacing) the entry of ``block`` in stream ``key`` (working tensors; ``old``: buffers to reuse)."""
        self._settle(key, block)
        self._place(entry, old)
        self.stream(key).blocks[block] = entry

    def put_lane(self, key: Hashable, lane: Hashable, entry: BlockEntry) -> None:
        """Store the light-mode residual of ``lane`` (``outputs["residual"]``)."""
        self._settle(key, ("lane", lane))
        self._place(entry, self.stream(key).lanes.get(lane))
        self.stream(key).lanes[lane] = entry

    def get_lane(self, key: Hashable, lane: Hashable, signature: tuple) -> BlockEntry | None:
        state = self._streams.get(key)
        entry = state.lanes.get(lane) if state is not None else None
        return entry if entry is not None and entry.signature == signature else None

    def _place(self, entry: BlockEntry, old: BlockEntry | None) -> None:
        st = self.storage
        old_out = old.outputs if old is not None else {}
        entry.outputs = {k: st.store(t, old_out.get(k)) for k, t in entry.outputs.items()}
        old_aux = old.aux if old is not None else {}
        entry.aux = {k: st.store(t, old_aux.get(k)) for k, t in entry.aux.items()}
        if entry.input_ref is not None:
            entry.input_ref = st.store(entry.input_ref, old.input_ref if old is not None else None)

    def _settle(self, key: Hashable, block: Hashable) -> None:
        """Finish (and forget) a load in flight from the buffers of ``block`` before they are rewritten."""
        pending = self._pending.pop((key, block), None)
        if pending is not None:
            pending.ready()

    def checkout(self, key: Hashable, block: Hashable, entry: BlockEntry, ahead: Hashable | None = None) -> BlockEntry:
        """Working copy of ``entry`` (the entry itself when storage is a pass-through); starts loading ``ahead``."""
        device, dtype = entry.signature[2], entry.signature[1]
        pending = self._pending.pop((key, block), None)
        if pending is None or pending.source is not entry:
            if pending is not None:
                pending.ready()
            pending = self._load(entry, device, dtype)
        if ahead is not None:
            self.prefetch(key, ahead)
        if pending is None:
            return entry
        t = pending.ready()
        return BlockEntry(signature=entry.signature, outputs={k: v for k, v in t.items() if not k.startswith("\x00")},
                          input_ref=t.get(_INPUT), last_refresh=entry.last_refresh, segment=entry.segment,
                          aux={k[len(_AUX):]: v for k, v in t.items() if k.startswith(_AUX)},
                          nodes=entry.nodes, diffs=entry.diffs, gains=entry.gains)  # forecasting runs only on a pass-through

    def prefetch(self, key: Hashable, block: Hashable) -> None:
        """Start loading the stored entry of ``block`` (if any) so a later ``checkout`` finds it ready."""
        if (key, block) in self._pending:
            return
        state = self._streams.get(key)
        if state is None:
            return
        entry = state.lanes.get(block[1]) if isinstance(block, tuple) else state.blocks.get(block)
        if entry is None:
            return
        pending = self._load(entry, entry.signature[2], entry.signature[1])
        if pending is not None:
            self._pending[(key, block)] = pending

    def _load(self, entry: BlockEntry, device: torch.device, dtype: torch.dtype) -> Loaded | None:
        stored = dict(entry.outputs)
        if entry.input_ref is not None:
            stored[_INPUT] = entry.input_ref
        stored.update({_AUX + k: t for k, t in entry.aux.items()})
        if self.storage.passthrough(dtype):
            return None
        return self.storage.load(entry, stored, device, dtype)

    def checkin(self, stored: BlockEntry, working: BlockEntry, names: tuple[str, ...]) -> None:
        """Write back the outputs ``names`` and the input reference a selective step updated in place."""
        if working is stored:
            return
        wb = self.storage.write_back
        for name in names:
            stored.outputs[name] = wb(stored.outputs[name], working.outputs[name])
        if stored.input_ref is not None and working.input_ref is not None:
            stored.input_ref = wb(stored.input_ref, working.input_ref)

    def drop_stream(self, key: Hashable) -> None:
        self._streams.pop(key, None)

    def clear(self) -> None:
        """Free every cached tensor (the dicts are emptied, so nothing keeps them alive)."""
        for pending in self._pending.values():
            pending.ready()
        self._pending.clear()
        for state in self._streams.values():
            for entry in list(state.blocks.values()) + list(state.lanes.values()):
                entry.outputs.clear()
                entry.aux.clear()
                entry.diffs.clear()
                entry.input_ref = None
                entry.last_refresh = None
            state.blocks.clear()
            state.lanes.clear()
        self._streams.clear()

    def entries(self) -> Iterator[BlockEntry]:
        for state in self._streams.values():
            yield from state.blocks.values()
            yield from state.lanes.values()

    def nbytes(self) -> int:
        """Bytes held by cached tensors (metadata only: no device sync)."""
        return sum(entry.nbytes() for entry in self.entries())

    def history_nbytes(self) -> int:
        """Bytes of the forecast differences among :meth:`nbytes`."""
        return sum(entry.history_nbytes() for entry in self.entries())

    def nbytes_by_device(self) -> dict[str, int]:
        """Bytes held per device (``"cuda:0"``, ``"cpu"``, ...), loads in flight not included."""
        out: dict[str, int] = {}
        for entry in self.entries():
            for t in (*entry.outputs.values(), *entry.aux.values(), entry.input_ref, entry.last_refresh,
                      *(d for ds in entry.diffs.values() for d in ds)):
                if t is not None:
                    out[str(t.device)] = out.get(str(t.device), 0) + t.nbytes
        return out

    def __len__(self) -> int:
        return sum(len(state.blocks) for state in self._streams.values())

    @property
    def stream_keys(self) -> tuple[Hashable, ...]:
        return tuple(self._streams)


def own(t: Tensor) -> Tensor:
    """``t`` itself when it is the only thing in its storage, else a compact copy.

    A view into a larger buffer (e.g. one chunk of a fused projection) would pin the whole buffer in
    memory and the in-place scatter of selective steps would write into it.
    """
    if torch.compiler.is_compiling():  # traced by torch.compile (TorchCompileModel): storage is not
        return t.clone(memory_format=torch.contiguous_format)  # inspectable with symbolic shapes; copy
    if t.untyped_storage().nbytes() != t.nbytes:  # larger buffer, or broadcast (stride 0)
        return t.clone(memory_format=torch.contiguous_format)
    return t
