"""Where cached tensors live: on the activation device (default) or in CPU memory, in any dtype.

The engine always computes with *working* tensors on the activation device in the activation dtype.
:class:`CacheStorage` turns them into *stored* tensors and back:

* ``device`` placement with the activation dtype is a pass-through: the stored tensor is the working
  tensor (no copy, in-place updates persist), exactly the behaviour without this layer.
* ``cpu`` placement keeps stored tensors in CPU memory, pinned when CUDA is present, written with
  non-blocking copies. Loads run on a side CUDA stream and the engine asks for the next block while
  it computes the current one (:meth:`BlockCache.checkout` prefetches one block ahead), so the
  transfer overlaps compute. On a machine without CUDA the same code path runs with plain copies
  (a stored tensor is never the working one), which is what the CPU tests exercise.
* A storage ``dtype`` other than the activation dtype converts on the way in and out (lossy when
  narrower: e.g. float32 activations kept as bfloat16).

Ordering rules on CUDA: a load waits for everything queued on the compute stream before it (so
write-backs of earlier steps are complete), and the compute stream waits for the load before using
it; a store into a buffer that has a load in flight waits for that load first.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PLACEMENTS = ("device", "cpu")


class Loaded:
    """Working tensors of one entry being brought to the device (maybe still in flight)."""

    def __init__(self, source: Any, tensors: dict[str, Tensor], stream: Any = None) -> None:
        self.source = source        # the stored BlockEntry these were loaded from
        self.tensors = tensors      # name -> working tensor ("input_ref" for the input reference)
        self.stream = stream        # side CUDA stream of the copy, or None when already usable

    def ready(self) -> dict[str, Tensor]:
        """The tensors, safe to use on the current stream."""
        if self.stream is not None:
            cur = torch.cuda.current_stream(self.stream.device)
            cur.wait_stream(self.stream)
            for t in self.tensors.values():
                t.record_stream(cur)
            self.stream = None
        return self.tensors


class CacheStorage:
    """Conversion between working and stored tensors (see module docstring)."""

    def __init__(self, placement: str = "device", dtype: torch.dtype | None = None) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
        self.placement = placement
        self.dtype = dtype
        self._streams: dict[Any, Any] = {}

    def describe(self) -> str:
        where = "CPU memory" if self.placement == "cpu" else "the model's device"
        return f"{where}, {str(self.dtype).replace('torch.', '') if self.dtype else 'activation dtype'}"

    def passthrough(self, dtype: torch.dtype) -> bool:
        """True when stored tensors are the working tensors themselves (no copies)."""
        return self.placement == "device" and (self.dtype is None or self.dtype == dtype)

    def store_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    # -- writing ------------------------------------------------------------------------------
    def store(self, t: Tensor, old: Tensor | None = None) -> Tensor:
        """The stored form of working tensor ``t``; writes into ``old`` when it has the right layout."""
        if self.passthrough(t.dtype):
            return t
        dtype = self.store_dtype(t.dtype)
        if self.placement == "device":
            if old is not None and old.shape == t.shape and old.dtype == dtype and old.device == t.device:
                return old.copy_(t)
            return t.to(dtype=dtype, copy=True, memory_format=torch.contiguous_format)
        src = t.to(dtype) if t.dtype != dtype else t  # narrow on the device: less to transfer
        if old is None or old.shape != t.shape or old.dtype != dtype or old.device.type != "cpu":
            pin = t.is_cuda and torch.cuda.is_available()
            old = torch.empty(tuple(t.shape), dtype=dtype, device="cpu", pin_memory=pin)
        return old.copy_(src, non_blocking=old.is_pinned())

    def write_back(self, stored: Tensor, working: Tensor) -> Tensor:
        """Make ``stored`` hold ``working`` (after an in-place update of the working copy)."""
        if stored is working:
            return stored
        return self.store(working, old=stored)

    # -- reading ------------------------------------------------------------------------------
    def _side_stream(self, device: torch.device) -> Any:
        s = self._streams.get(device)
        if s is None:
            s = self._streams[device] = torch.cuda.Stream(device=device)
        return s

    def load(self, source: Any, stored: dict[str, Tensor], device: torch.device, dtype: torch.dtype) -> Loaded:
        """Start bringing ``stored`` tensors to ``device``/``dtype`` (activation layout)."""
        if self.passthrough(dtype) and all(t.dtype == dtype and t.device == device for t in stored.values()):
            return Loaded(source, dict(stored))
        if device.type == "cuda" and any(t.device.type == "cpu" for t in stored.values()):
            stream = self._side_stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))  # earlier write-backs are done
            with torch.cuda.stream(stream):
                out = {k: t.to(device, non_blocking=True).to(dtype) for k, t in stored.items()}
            return Loaded(source, out, stream)
        # always a distinct tensor, so an update of the working copy needs an explicit write-back
        return Loaded(source, {k: t.to(device=device, dtype=dtype, copy=True) for k, t in stored.items()})
