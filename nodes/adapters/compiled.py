"""Block maths compiled with the host's ``torch.compile`` settings, decisions kept eager.

ProCache's patched blocks run outside the host's compiled model (``outside_compile``): their Python
state (step action, cache dicts) would otherwise become guards that fail every step. The tensor maths
of a branch (attention, MLP) has no such state, so an adapter can hand it to :func:`compiled`: a pure
function taking the block module as an argument. Dynamo inlines modules passed as inputs
(``inline_inbuilt_nn_modules``): their parameters become graph inputs, so ONE graph serves every
block of the same kind and shape, and step-to-step nothing is recompiled.

The compiled functions are kept per (function, settings) in a small module cache: compiling them again
for every run would throw dynamo's work away; they hold no run state.
"""
from __future__ import annotations

from typing import Any, Callable

_COMPILED: dict[tuple, Callable] = {}


def settings_key(kw: dict | None) -> tuple | None:
    """Hashable form of the host's ``torch_compile_kwargs`` (None: the model is not compiled)."""
    if not kw:
        return None
    opts = kw.get("options")
    return (kw.get("backend") or "inductor", repr(sorted(opts.items())) if isinstance(opts, dict) else repr(opts),
            kw.get("mode"), kw.get("dynamic"))


def compiled(fn: Callable, kw: dict | None) -> Callable:
    """``fn`` compiled with the host's backend / options / mode / dynamic; ``fn`` itself when ``kw`` is None."""
    key = settings_key(kw)
    if key is None:
        return fn
    c = _COMPILED.get((fn, key))
    if c is None:
        import torch

        extra: dict[str, Any] = {}
        if kw.get("options"):
            extra["options"] = kw["options"]
        elif kw.get("mode"):
            extra["mode"] = kw["mode"]
        c = _COMPILED[(fn, key)] = torch.compile(fn, backend=kw.get("backend") or "inductor",
                                                 dynamic=kw.get("dynamic"), **extra)
    return c
