"""Families that register themselves: one file per family, found by name, no central list to edit.

A family file ``nodes/adapters/<name>.py`` that calls :func:`register` at import time is detected and
built without touching ``adapters/__init__.py``: :func:`detect` imports every module of this package whose
name is not in ``_NOT_FAMILIES`` once (a module whose host classes are missing on this ComfyUI fails to
import and is skipped, logged at debug level) and asks each registered family in turn.

The Flux-block families (flux, flux2, chroma), Qwen-Image and LTX-Video are still detected in
``adapters/__init__.py`` (``detect_family`` / ``_detect_more``); they are checked first, so a registered
family never shadows one of them. Registered detectors are exact (every block of the host's own class),
so their order does not matter.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("ProCache")

# modules of this package that are helpers, not families (the others are imported by ``detect``)
_NOT_FAMILIES = {"registry", "verify", "compiled", "modulation", "generic"}


@dataclass(frozen=True)
class Family:
    name: str                                   # the family's name in presets, Stats and the log
    label: str                                  # what the supported-families list shows users
    detect: Callable[[Any, Any], bool]          # (diffusion_model, model_config) -> is it this family
    build: Callable[[Any, str], Any]            # (diffusion_model, name) -> FamilyAdapter
    preset: str | None = None                   # the shipped preset ProCache Apply's "auto" picks


_FAMILIES: dict[str, Family] = {}
_LOADED = False
_LOCK = threading.Lock()


def register(name: str, label: str, detect: Callable[[Any, Any], bool], build: Callable[[Any, str], Any],
             preset: str | None = None) -> None:
    """Called by a family file at import time; a second call with the same name replaces the first."""
    _FAMILIES[name] = Family(name, label, detect, build, preset)


def _load_all() -> None:
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        for info in pkgutil.iter_modules(_package_path()):
            if info.name in _NOT_FAMILIES or info.name.startswith("_"):
                continue
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ImportError as e:  # the family's host classes are not on this ComfyUI
                log.debug("ProCache: family module %s not loaded on this host: %s", info.name, e)
        _LOADED = True


def _package_path() -> list[str]:
    import os

    return [os.path.dirname(__file__)]


def families() -> dict[str, Family]:
    """Every registered family by name (after importing the family files)."""
    _load_all()
    return dict(_FAMILIES)


def detect(dm: Any, model_config: Any) -> str | None:
    """Name of the registered family of ``dm``, or None. A detector that raises counts as no match."""
    for fam in families().values():
        try:
            if fam.detect(dm, model_config):
                return fam.name
        except Exception as e:  # a detector must never break Apply on a host it does not know
            log.debug("ProCache: %s detection raised %s: %s", fam.name, type(e).__name__, e)
    return None


def preset_of(name: str) -> str | None:
    """The registered family's "auto" preset (None: not registered, or no preset of its own)."""
    fam = families().get(name)
    return None if fam is None else fam.preset


def build(name: str, dm: Any) -> Any | None:
    """The registered family's adapter for ``dm``, or None when ``name`` is not a registered family."""
    fam = families().get(name)
    return None if fam is None else fam.build(dm, name)
