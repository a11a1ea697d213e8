"""Families register themselves: one file per family, found by name, no central list to edit.

A family file ``nodes/adapters/<name>.py`` calls :func:`register` at import time with its name, label,
detector, adapter builder and "auto" preset; everything that lists families derives from these rows:
detection (``adapters.detect_family``), the adapter (``adapters.adapter_for``), the supported-families
text (``adapters.supported_text``), the "auto" presets (``auto_preset``) and ProCache Apply's description
(``nodes/family_text.py``, also the zh translation in ``locales/``). :func:`families` imports every module
of this package whose name is not in ``_NOT_FAMILIES`` once (a module whose host classes are missing on
this ComfyUI fails to import and is skipped, logged at debug level). ``docs/families.md`` has the recipe.

Detection order is explicit: ascending ``priority``, then name; never import order. Most detectors are
exact (every block of the host's own class) and do not overlap, so they keep the default priority; a
family whose detector would also match another's network (a subclass, a shared block type) sets a lower
priority to be asked first. The model-level fallback (``generic``) is not a row: it is what no row claims.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("ProCache")

# modules of this package that are helpers, not families (the others are imported by ``families``)
_NOT_FAMILIES = {"registry", "verify", "compiled", "modulation", "generic"}

DEFAULT_PRIORITY = 100


@dataclass(frozen=True)
class Family:
    name: str                                   # the family's name in presets, Stats and the log
    label: str                                  # what the supported-families list shows users
    detect: Callable[[Any, Any], bool]          # (diffusion_model, model_config) -> is it this family
    build: Callable[[Any, str], Any]            # (diffusion_model, name) -> FamilyAdapter
    preset: str | None = None                   # the shipped preset ProCache Apply's "auto" picks
    priority: int = DEFAULT_PRIORITY            # detection order: lower is asked first (ties: by name)
    selective: str = ""                         # what selective steps recompute, for Apply's description


_FAMILIES: dict[str, Family] = {}
_SKIPPED: list[str] = []   # family modules that did not import on this host (their host classes are missing)
_LOADED = False
_LOCK = threading.RLock()


def register(name: str, label: str, detect: Callable[[Any, Any], bool], build: Callable[[Any, str], Any],
             preset: str | None = None, priority: int = DEFAULT_PRIORITY, selective: str = "") -> None:
    """Called by a family file at import time; a second call with the same name replaces the first."""
    if not name or not label:
        raise ValueError(f"register: a family needs a name and a label (got name={name!r}, label={label!r})")
    if ";" in selective:
        raise ValueError(f"register({name!r}): selective={selective!r} may not contain ';' (Apply's description "
                         "separates families with it); use commas")
    _FAMILIES[name] = Family(name, label, detect, build, preset, priority, selective)


def _load_all() -> None:
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        _LOADED = True  # set first: a family module importing another one must not start the scan again
        for info in pkgutil.iter_modules(_package_path()):
            if info.name in _NOT_FAMILIES or info.name.startswith("_"):
                continue
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ImportError as e:  # the family's host classes are not on this ComfyUI
                log.debug("ProCache: family module %s not loaded on this host: %s", info.name, e)
                _SKIPPED.append(info.name)


def _package_path() -> list[str]:
    import os

    return [os.path.dirname(__file__)]


def families() -> dict[str, Family]:
    """Every registered family by name, in detection order (after importing the family files)."""
    _load_all()
    return {f.name: f for f in sorted(_FAMILIES.values(), key=lambda f: (f.priority, f.name))}


def unloaded() -> list[tuple[int, str, str]]:
    """(priority, name, label) of the families in the modules this host could not import, read from their
    ``register(...)`` calls without running them: texts that every host shares (the zh locale) list them.
    Those calls pass name and label (and priority, when given) as literals."""
    import ast
    import os

    _load_all()
    rows = []
    for mod in _SKIPPED:
        path = os.path.join(_package_path()[0], f"{mod}.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            if not isinstance(node, ast.Call) or getattr(func, "id", getattr(func, "attr", None)) != "register":
                continue
            try:
                name, label = (ast.literal_eval(a) for a in node.args[:2])
                prio = next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "priority"),
                            DEFAULT_PRIORITY)
            except ValueError as e:
                raise ValueError(f"{path}:{node.lineno}: register(...) must pass name, label and priority as "
                                 "literals (this host cannot import the file to evaluate them)") from e
            if name not in _FAMILIES:  # a module that failed after registering some families
                rows.append((int(prio), str(name), str(label)))
    return sorted(rows)


def detect(dm: Any, model_config: Any) -> str | None:
    """Name of the first family (detection order) claiming ``dm``, or None. A detector that raises
    counts as no match (a host class that lost an attribute must not break Apply)."""
    for fam in families().values():
        try:
            if fam.detect(dm, model_config):
                return fam.name
        except Exception as e:
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
