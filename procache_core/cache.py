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


@dataclass
class BlockEntry:
    """Cached state of one block in one stream."""

    signature: tuple                    # (shape, dtype, device, branch names): reuse only on an exact match
    outputs: dict[str, Tensor]          # branch name -> output before gating, (B, N, C), activation dtype
    input_ref: Tensor | None = None     # block input as of each token's last refresh (B, N, C) (deep blocks)
    last_refresh: Tensor | None = None  # step of each token's last refresh, int32 (B, N) (deep blocks)

    def nbytes(self) -> int:
        total = sum(t.nbytes for t in self.outputs.values())
        for t in (self.input_ref, self.last_refresh):
            if t is not None:
                total += t.nbytes
        return total


@dataclass
class StreamState:
    """Everything cached for one stream, plus per-stream bookkeeping used by the engine."""

    chunks: int = 1
    blocks: dict[int, BlockEntry] = field(default_factory=dict)
    forced_full_eval: int = -1          # model evaluation in which this stream must run FULL


def block_signature(x: Tensor, names: tuple[str, ...]) -> tuple:
    """What must match for a cached entry to be reusable for input ``x``."""
    return (tuple(x.shape), x.dtype, x.device, names)


class BlockCache:
    """Per stream, per block, per branch tensors (see module docstring)."""

    def __init__(self) -> None:
        self._streams: dict[Hashable, StreamState] = {}

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

    def put(self, key: Hashable, block: int, entry: BlockEntry) -> None:
        """Store (replacing) the entry of ``block`` in stream ``key``."""
        self.stream(key).blocks[block] = entry

    def drop_stream(self, key: Hashable) -> None:
        self._streams.pop(key, None)

    def clear(self) -> None:
        """Free every cached tensor (the dicts are emptied, so nothing keeps them alive)."""
        for state in self._streams.values():
            for entry in state.blocks.values():
                entry.outputs.clear()
                entry.input_ref = None
                entry.last_refresh = None
            state.blocks.clear()
        self._streams.clear()

    def entries(self) -> Iterator[BlockEntry]:
        for state in self._streams.values():
            yield from state.blocks.values()

    def nbytes(self) -> int:
        """Bytes held by cached tensors (metadata only: no device sync)."""
        return sum(entry.nbytes() for entry in self.entries())

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
