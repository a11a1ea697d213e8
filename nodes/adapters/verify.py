"""Self-verification of block adapters against the host's own blocks, and the safe fallback.

A block adapter re-implements the host's block arithmetic split into branches. A future ComfyUI can
change a block (an extra scale, a renamed attribute, another keyword); the adapter would then silently
compute another model, or fail. So on the first model evaluation of a FULL step of a run, every
patched block's result is compared with the host's own forward on the same input (``dit`` replace
patches: ``extra["original_block"](args)``; object-patched blocks: ``ChainedForward.call_prev``).

* Match (relative L2 within :func:`tolerance`, finite where the host is finite): the adapter's result is
  returned (the check never changes an exact run's output) and the model is recorded as verified.
* Mismatch, or any exception from the adapter's block (AttributeError / TypeError / KeyError / ...): ONE
  warning line (family, ComfyUI version, block class, what differed), the host's own result is
  returned for that block, every later block of the run uses the host's forward (full compute for the
  rest of the run: the run's cache was laid out for the block adapter, so switching it to the
  model-level fallback mid-run is not clean), and the model is recorded as failed: its next run (and
  every ProCache Apply on it) uses the model-level fallback (``generic.py``) for the rest of the process.
  Exceptions that are not about the adapter pass through: ProCache's own errors (they carry a fix),
  out-of-memory and the host's interrupt.

The record is process-wide and keyed by :func:`host_key`: the family, the network class and, for
every module class inside the network, its qualified name + a hash of its ``forward``'s code and of the
source file that defines it. Why this key and not the ComfyUI version: the version does not change when
a user edits or another pack monkeypatches a block, and a pinned version is not a pinned block; the
class + code hash changes exactly when the arithmetic can have changed (a new class, a patched
``forward``, an edited module-level helper such as ``block_mixing``), so verification runs once per
process per model class and host code, and again when that code differs.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...procache_core.errors import ProCacheError

log = logging.getLogger("ProCache")

REL_TOL_FP32 = 1e-5     # beyond float reordering of an fp32 block (documented reorderings stay ~1e-7)

_RECORD: dict[tuple, str | None] = {}   # host_key -> None (verified) or why it failed
_LOCK = threading.Lock()
_FILE_HASH: dict[str, str] = {}
_CLASS_HASH: dict[type, str] = {}


def comfy_version() -> str:
    try:
        from comfyui_version import __version__  # the host's module

        return str(__version__)
    except Exception:
        return "unknown version"


def _file_hash(path: str | None) -> str:
    if not path:
        return "-"
    h = _FILE_HASH.get(path)
    if h is None:
        try:
            with open(path, "rb") as f:
                h = hashlib.sha1(f.read()).hexdigest()[:16]
        except OSError:
            h = "-"
        _FILE_HASH[path] = h
    return h


def _class_hash(cls: type) -> str:
    h = _CLASS_HASH.get(cls)
    if h is None:
        fwd = getattr(cls, "forward", None)
        code = getattr(fwd, "__code__", None)
        parts = [f"{cls.__module__}.{cls.__qualname__}"]
        if code is not None:
            parts += [code.co_code.hex(), repr(code.co_consts), repr(code.co_names), repr(code.co_varnames)]
        try:
            parts.append(_file_hash(inspect.getsourcefile(cls)))
        except (TypeError, OSError):
            parts.append("-")
        h = _CLASS_HASH[cls] = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]
    return h


_HOST_PACKAGES = ("comfy", "comfy_extras")


def _host_class(cls: type) -> bool:
    """The host's own module classes and their subclasses (another pack's block subclass changes the key).

    Left out: plain wrapper modules another pack or a test puts into the network as object patches. The
    host applies those when it loads the model and the key is taken at the start of a run, before the load,
    so with them in it a model with such a patch would be verified again on its second run; what they wrap
    is still in the key, and a host class whose ``forward`` another pack rewrote in place changes it too."""
    return any(c.__module__.split(".", 1)[0] in _HOST_PACKAGES for c in cls.__mro__)


def host_key(family: str, dm: Any) -> tuple:
    """(family, network class, hash over its module classes' code): see the module docstring."""
    classes = {type(m) for m in dm.modules() if _host_class(type(m))} if isinstance(dm, torch.nn.Module) else set()
    classes.add(type(dm))
    parts = sorted(f"{c.__module__}.{c.__qualname__}:{_class_hash(c)}" for c in classes)
    digest = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]
    return family, f"{type(dm).__module__}.{type(dm).__qualname__}", digest


def adapter_key(adapter: Any) -> tuple:
    """``host_key`` of an adapter's network, computed once per adapter."""
    key = adapter._host_key
    if key is None:
        key = host_key(adapter.family, adapter.dm)
        try:
            adapter._host_key = key
        except AttributeError:
            pass
    return key


def failure(key: tuple) -> str | None:
    with _LOCK:
        return _RECORD.get(key)


def is_verified(key: tuple) -> bool:
    with _LOCK:
        return key in _RECORD and _RECORD[key] is None


def record(key: tuple, why: str | None) -> bool:
    """Store a verdict (a failure is never overwritten); True when this call stored something new."""
    with _LOCK:
        if _RECORD.get(key) is not None:
            return False
        if why is None and key in _RECORD:
            return False
        _RECORD[key] = why
        return True


def tolerance(dtype: torch.dtype) -> float:
    """Relative L2 bound of a reordering-only difference: 1e-5 in fp32/fp64; a few ulps in half types
    (an exact adapter differs by 0 there too; reordering families differ by about one rounding)."""
    if dtype in (torch.float32, torch.float64) or not dtype.is_floating_point:
        return REL_TOL_FP32
    return max(REL_TOL_FP32, 4.0 * torch.finfo(dtype).eps)


def compare(ours: Any, host: Any, where: str = "output") -> tuple[str | None, float]:
    """(what differs or None, largest relative L2 seen) between an adapter's and the host's block output."""
    if torch.is_tensor(host):
        if not torch.is_tensor(ours):
            return f"{where}: ComfyUI returns a tensor, the adapter {type(ours).__name__}", float("inf")
        if ours.shape != host.shape:
            return f"{where}: shape {tuple(ours.shape)} vs ComfyUI's {tuple(host.shape)}", float("inf")
        if not host.is_floating_point():
            same = torch.equal(ours, host)
            return (None if same else f"{where}: differs"), 0.0 if same else float("inf")
        h, o = host.detach().double(), ours.detach().double()
        fin = torch.isfinite(h)
        if bool((~torch.isfinite(o) & fin).any()):
            return f"{where}: non-finite values where ComfyUI's are finite", float("inf")
        d = torch.where(fin, o - h, torch.zeros_like(h))
        num, den = float(d.norm()), float(torch.where(fin, h, torch.zeros_like(h)).norm())
        rel = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
        tol = tolerance(host.dtype)
        if rel > tol:
            return f"{where}: relative difference {rel:.3g} (limit {tol:.0e})", rel
        return None, rel
    if isinstance(host, dict):
        if not isinstance(ours, dict):
            return f"{where}: ComfyUI returns a dict, the adapter {type(ours).__name__}", float("inf")
        worst = 0.0
        for k, v in host.items():
            if k not in ours and v is not None:
                return f"{where}: the adapter returns no '{k}'", float("inf")
            why, rel = compare(ours.get(k), v, f"{where}['{k}']")
            if why:
                return why, rel
            worst = max(worst, rel)
        return None, worst
    if isinstance(host, (tuple, list)):
        if not isinstance(ours, (tuple, list)) or len(ours) != len(host):
            return f"{where}: ComfyUI returns {len(host)} values, the adapter {type(ours).__name__}", float("inf")
        worst = 0.0
        for i, (a, b) in enumerate(zip(ours, host)):
            why, rel = compare(a, b, f"{where}[{i}]")
            if why:
                return why, rel
            worst = max(worst, rel)
        return None, worst
    if host is None:
        return (None if ours is None or not torch.is_tensor(ours) else f"{where}: ComfyUI returns None"), 0.0
    return None, 0.0


@dataclass
class RunCheck:
    """Verification state of one run (held by the runtime bridge's RunState)."""

    key: tuple
    family: str
    pending: bool = True          # this host code is not verified yet in this process
    active: bool = False          # the model evaluation in progress is the one being verified
    compared: int = 0             # blocks compared in it
    worst: float = 0.0            # largest relative L2 seen (verified case)
    deferred_logged: bool = False  # said once that other nodes' in-block patches defer the check


def _passes_through(e: BaseException) -> bool:
    """Errors that are not the adapter's mismatch with the host: re-raised unchanged."""
    if isinstance(e, ProCacheError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return type(e).__name__ == "InterruptProcessingException"


def cloned(obj: Any) -> Any:
    """``obj`` with its top-level tensors cloned (dict values, tuple/list items, or itself)."""
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(v.clone() if torch.is_tensor(v) else v for v in obj)
    return obj


def guarded_block(state: Any, block: str | Callable[[], str], adapter_fn: Callable[[], Any],
                  host_fn: Callable[[bool], Any]) -> Any:
    """The adapter's result for one block, checked as the module docstring says; the host's on failure.

    ``state`` is the runtime bridge's RunState (``check``, ``blocks_off``); ``block`` names the block for
    the warning (e.g. ``"JointBlock (double_block 0)"``, or a callable giving it). ``host_fn(copy)`` runs
    the host's block; ``copy=True`` on copies of the input tensors, because some host blocks add to their
    input in place (Flux ``img +=``, LTXV ``x.addcmul_``), which must not touch tensors the run keeps."""
    check: RunCheck | None = getattr(state, "check", None)
    try:
        out = adapter_fn()
    except Exception as e:
        if _passes_through(e):
            raise
        host = host_fn(False)
        fail(state, block, f"{type(e).__name__} in the adapter: {e}")
        return host
    if check is not None and check.active:
        host = host_fn(True)
        why, rel = compare(out, host)
        check.compared += 1
        if why is not None:
            fail(state, block, why)
            return host
        check.worst = max(check.worst, rel)
    return out


def fail(state: Any, block: str | Callable[[], str], why: str) -> None:
    """Switch the run to the host's blocks, record the failure, and warn once per host code."""
    state.blocks_off = True
    block = block() if callable(block) else block
    check: RunCheck | None = getattr(state, "check", None)
    adapter = state.config.adapter
    family = adapter.family
    key = check.key if check is not None else adapter_key(adapter)
    if check is not None:
        check.pending = check.active = False
    state.verify_failure = why
    net = key[1].rsplit(".", 1)[-1]
    if record(key, f"{block}: {why}"):
        log.warning("ProCache: the %s block adapter does not match ComfyUI %s in %s of %s: %s. ProCache returned "
                    "ComfyUI's own result for that block and computes every remaining block of this run with "
                    "ComfyUI's forward (no caching for the rest of this run); from the next run this model uses "
                    "the model-level fallback (schedule-only caching of the whole model call) until restart. "
                    "Please report this with your ComfyUI version.", family, comfy_version(), block, net, why)


def finish_evaluation(state: Any) -> None:
    """After the verified model evaluation: record success, or a failure when no patched block ran."""
    check: RunCheck | None = getattr(state, "check", None)
    if check is None or not check.active:
        return
    check.active = False
    if getattr(state, "blocks_off", False):
        return
    if check.compared == 0:
        fail(state, "the model", "ComfyUI called none of the patched blocks")
        return
    check.pending = False
    if record(check.key, None):
        log.info("ProCache: %s block adapter verified against ComfyUI %s's own blocks (%d blocks, largest relative "
                 "difference %.2g).", check.family, comfy_version(), check.compared, check.worst)
