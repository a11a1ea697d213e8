"""What the /procache/ routes answer, as plain functions (no aiohttp; ``nodes/routes.py`` is the glue).

* the preset list (``list_body``: each unchanged file's entry reused as JSON text), one preset
  (``get_payload``) and saving a user preset (``save_payload``: writes
  ``<user dir>/procache_presets/<name>.yaml`` and nothing else);
* the summary of a preset (steps, counts, estimated compute fraction, source, kind).

Every refusal is a :class:`~.route_errors.RouteError` (HTTP 4xx, JSON naming the field and the fix).
The preview is ``nodes/preview.py``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ..procache_core.errors import ProCacheError
from . import preset_files
from .preset_index import PresetIndex, stat_key
from .route_errors import RouteError, scrub_paths

log = logging.getLogger("ProCache")

USER_PREFIX = "user/"
MAX_BODY_BYTES = 64 * 1024          # a request body or a preset's YAML text may not be larger
MAX_ACTIONS = 1000                  # longest schedule a route accepts

# Estimated share of a block's work done on a *selective* deep block: the token-local branches
# (MLP; PixArt also cross-attention) recompute `ratio` of the tokens, the self-attention is reused.
# Branches are weighed equally, like RunStats.block_eval_fraction.
_TOKEN_LOCAL_SHARE = {"pixart": 2.0 / 3.0}
_DEFAULT_TOKEN_LOCAL_SHARE = 0.5


def _schedule_mod():
    from ..procache_core import schedule
    return schedule


def _presets_mod():
    from ..procache_core import presets
    return presets


def _shipped_dir() -> Path:
    return Path(_presets_mod().shipped_presets_dir())


def _all_presets() -> dict[str, Path]:
    """{listed name: path}, exactly as the Schedule Loader lists them."""
    return preset_files.available_presets()


def _shipped_names() -> set[str]:
    return {str(n) for n in _presets_mod().list_presets([_shipped_dir()])}


def _source_of(name: str) -> str:
    return "user" if name.startswith(USER_PREFIX) else "shipped"


def selective_cost(selective: Any = None, family: str | None = None) -> float:
    """Estimated cost of a SELECTIVE step relative to a FULL one.

    depth_fraction x ratio x (share of a block's branches that are token-local: MLP, and for PixArt
    cross-attention too); 0 when selective computation is off. A rough, model-independent figure
    for the UI (branches weighed equally, like RunStats.block_eval_fraction).
    """
    if selective is None:
        from ..procache_core.settings import SelectiveSettings

        selective = SelectiveSettings()
    if not getattr(selective, "enabled", True):
        return 0.0
    share = _TOKEN_LOCAL_SHARE.get((family or "").lower(), _DEFAULT_TOKEN_LOCAL_SHARE)
    # with an absolute start_block the block count is unknown here: depth_fraction stands in
    depth = float(getattr(selective, "depth_fraction", 0.25))
    return min(1.0, max(0.0, depth * float(getattr(selective, "ratio", 0.3)) * share))


def estimate_compute(actions: str, selective: Any = None, family: str | None = None) -> dict[str, float]:
    """Expected share of the unpatched model's block compute (Schedule.compute_fraction) and its
    inverse, the speed-up. The real accounting of a run is RunStats."""
    if not actions:
        return {"compute_fraction": 1.0, "speedup": 1.0}
    frac = _schedule_mod().Schedule.from_string(actions).compute_fraction(selective_cost(selective, family))
    return {"compute_fraction": round(frac, 4), "speedup": round(1.0 / frac, 3) if frac > 0 else None}


def _counts(actions: str) -> dict[str, int]:
    return {"full": actions.count("F"), "cached": actions.count("C"), "selective": actions.count("S")}


def _actions_of(preset) -> str:
    sched = preset.schedule
    try:
        return sched.to_string()
    except AttributeError:
        return "".join(getattr(a, "value", str(a)) for a in sched)


def kind_of(preset) -> str:
    """What a preset is, for the dropdown and the schedule strip: "searched" (a pattern scored on a proxy),
    "rule" (follows a documented rule on the noise axis), "typed", or "unrecorded" (no provenance kind)."""
    prov = getattr(preset, "provenance", None) or {}
    kind = prov.get("kind") if isinstance(prov, dict) else None
    if kind in ("searched", "rule"):
        return kind
    if isinstance(prov, dict) and prov.get("source") in ("typed schedule", "schedule_text"):
        return "typed"
    return "unrecorded"


def summarize(preset, name: str | None = None, source: str | None = None) -> dict[str, Any]:
    actions = _actions_of(preset)
    sel = getattr(preset, "selective", None)
    out: dict[str, Any] = {
        "name": name if name is not None else preset.name,
        "source": source or _source_of(name or ""),
        "steps": len(actions),
        "actions": actions,
        "family": getattr(preset, "family", None),
        "model": getattr(preset, "model", None),
        "counts": _counts(actions),
        "selective": sel.to_dict() if hasattr(sel, "to_dict") else None,
        "version": getattr(preset, "version", None),
        "kind": kind_of(preset),
        "noise": list(preset.noise) if getattr(preset, "noise", None) is not None else None,
    }
    out.update(estimate_compute(actions, sel, out["family"]))
    prov = getattr(preset, "provenance", None)
    if isinstance(prov, dict):
        out["provenance"] = {k: v for k, v in prov.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return out


def check_name(name: Any) -> str:
    """A user preset name (``user/`` prefix allowed): the presets' one name rule,
    ``procache_core.presets.validate_preset_name``."""
    if isinstance(name, str) and name.startswith(USER_PREFIX):
        name = name[len(USER_PREFIX):]
    try:
        return _presets_mod().validate_preset_name(name)
    except ProCacheError as exc:
        raise RouteError.from_procache(exc) from None


def user_preset_path(name: str) -> Path:
    """The file a user preset is written to; refuses anything that resolves outside the folder."""
    folder = preset_files.user_presets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    target = folder / f"{name}.yaml"
    if not target.exists() and not target.is_symlink() and (folder / f"{name}.yml").exists():
        target = folder / f"{name}.yml"  # the listed file: saving over it must not add a twin
    resolved = target.resolve()
    if resolved.parent != root or resolved.name != target.name:
        raise RouteError(400, f"ProCache: 'name' {name!r} resolves outside the user preset folder.", "name",
                         "use a plain name without path parts or links.")
    return resolved


# -- handlers' logic (plain functions, easy to test) ---------------------------------------------
class _Parsed:
    """One preset file as parsed: the Preset, the text it was parsed from, and its list entry's JSON
    (made on first use; the list answer is these fragments joined)."""

    __slots__ = ("preset", "text", "item_json")

    def __init__(self, preset, text: str) -> None:
        self.preset, self.text, self.item_json = preset, text, None


def _parse_listed(name: str, path: Path, raw: bytes) -> _Parsed:
    preset = _presets_mod().parse_preset_text(raw, f"preset {name}")
    return _Parsed(preset, raw.decode("utf-8"))  # parsing proved it UTF-8


_INDEX = PresetIndex()


def cached_preset(name: str, path: Path) -> _Parsed:
    """A listed preset as it is on disk now, parsed once per version of the file (nodes/preset_index.py);
    raises the ProCacheError of load_listed_preset for a broken or vanished file."""
    return _INDEX.get(name, path, _parse_listed, preset_files.read_listed_preset)


def list_body() -> str:
    """The JSON text of ``GET /procache/presets`` (what ``json.dumps(list_payload())`` gives): each unchanged
    file's entry is reused as JSON text, so a list costs a directory read and a stat per file."""
    listed = sorted(_all_presets().items(), key=lambda kv: (kv[0].startswith(USER_PREFIX), kv[0]))
    parts = []
    for name, path in listed:
        try:
            parsed = cached_preset(name, path)
        except Exception:  # a broken file is listed with its error (not cached: it is read again next time)
            parts.append(json.dumps(_list_item(name, path)))
            continue
        if parsed.item_json is None:
            parsed.item_json = json.dumps(summarize(parsed.preset, name, _source_of(name)))
        parts.append(parsed.item_json)
    return '{"presets": [' + ", ".join(parts) + "]}"


def list_payload() -> dict[str, Any]:
    """Every listed preset's summary (a broken user file is listed with its error)."""
    return json.loads(list_body())


def _list_item(name: str, path: Path) -> dict[str, Any]:
    """The summary of one listed preset, or its error (a broken user file never breaks the listing)."""
    try:
        return summarize(preset_files.load_listed_preset(name, path), name, _source_of(name))
    except ProCacheError as exc:
        return {"name": name, "source": _source_of(name), "error": scrub_paths(str(exc)), "field": exc.field}
    except Exception as exc:
        log.warning("ProCache: listing preset %s failed: %r", name, exc)
        return {"name": name, "source": _source_of(name), "field": "preset",
                "error": scrub_paths(f"ProCache: 'preset' {name!r} could not be read ({type(exc).__name__}: {exc}).",
                                     any_path=True)}


def get_payload(name: str) -> dict[str, Any]:
    presets = _all_presets()
    if name not in presets:   # only listed names: the request never builds a path
        raise RouteError(404, f"ProCache: preset {name[:80]!r} not found.", "name",
                         "use a name from GET /procache/presets.")
    path = presets[name]
    try:
        parsed = cached_preset(name, path)  # the text is exactly what was parsed
    except FileNotFoundError:  # removed between listing and reading
        raise RouteError(404, f"ProCache: preset {name[:80]!r} not found.", "name",
                         "use a name from GET /procache/presets.") from None
    except (UnicodeDecodeError, OSError):
        raise RouteError(409, f"ProCache: preset {name[:80]!r} changed while it was read.", "name",
                         "request it again.") from None
    except ProCacheError as exc:
        raise RouteError(422, str(exc), getattr(exc, "field", None), getattr(exc, "fix", None)) from None
    summary = summarize(parsed.preset, name, _source_of(name))
    return {"name": name, "source": summary["source"], "yaml": parsed.text, "actions": summary["actions"],
            "summary": summary}


def save_payload(data: Any) -> tuple[int, dict[str, Any]]:
    if not isinstance(data, dict):
        raise RouteError(400, "ProCache: the request body must be a JSON object.", "body",
                         "send {\"name\": ..., \"yaml\": ...} or {\"name\": ..., \"actions\": \"FCS...\"}.")
    name = check_name(data.get("name"))
    if name.lower() in {n.lower() for n in _shipped_names()}:
        raise RouteError(409, f"ProCache: 'name' {name!r} is a shipped preset and cannot be overwritten.", "name",
                         "save under another name, e.g. '" + name + "-mine'.")
    presets_mod = _presets_mod()
    source = f"POST /procache/presets ({name})"
    if "yaml" in data and data["yaml"] is not None:
        text = data["yaml"]
        if not isinstance(text, str):
            raise RouteError(400, "ProCache: 'yaml' must be a string.", "yaml", "send the preset's YAML text.")
        if len(text.encode("utf-8")) > MAX_BODY_BYTES:
            raise RouteError(413, f"ProCache: 'yaml' is larger than {MAX_BODY_BYTES // 1024} KiB.", "yaml",
                             "a preset is a few lines; remove what is not part of it.")
        try:
            preset = presets_mod.parse_preset_text(text, source)
            parsed_from = text
        except ProCacheError as exc:
            raise RouteError.from_procache(exc) from None
    elif "actions" in data:
        actions = data.get("actions")
        if not isinstance(actions, str) or not actions.strip():
            raise RouteError(400, "ProCache: 'actions' must be a non-empty string of F/C/S.", "actions",
                             "send e.g. \"FCSCFCSCF\".")
        if len(actions) > MAX_ACTIONS:
            raise RouteError(400, f"ProCache: 'actions' is longer than {MAX_ACTIONS} steps.", "actions",
                             "use fewer steps.")
        try:
            letters = presets_mod.typed_actions(actions)
            if letters is None:
                raise ProCacheError("actions", "must contain only F, C and S.", "send e.g. \"FCSCFCSCF\".")
            sched = _schedule_mod().Schedule.from_string(letters)
            from ..procache_core.settings import SelectiveSettings

            selective = SelectiveSettings.from_dict(data.get("selective"))
            family = data.get("family") or "any"
            if not isinstance(family, str):
                raise ProCacheError("family", "must be a string.", "e.g. \"pixart\", \"dit\", \"flux\" or \"any\".")
            model = data.get("model")
            if model is not None and not isinstance(model, str):
                raise ProCacheError("model", "must be a string.", "e.g. \"PixArt-alpha 256\".")
            preset = presets_mod.Preset(name=name, schedule=sched, family=family, model=model or "",
                                        selective=selective, provenance={"source": "saved from the ProCache UI"})
            # round trip through the text parser: the same validation a file gets
            parsed_from = presets_mod.dump_preset(preset)
            preset = presets_mod.parse_preset_text(parsed_from, source)
        except ProCacheError as exc:
            raise RouteError.from_procache(exc) from None
    else:
        raise RouteError(400, "ProCache: send 'yaml' (preset text) or 'actions' (F/C/S string).", "yaml",
                         "e.g. {\"name\": \"mine\", \"actions\": \"FCSCF\"}.")
    if dataclasses.is_dataclass(preset) and getattr(preset, "name", name) != name:
        preset = dataclasses.replace(preset, name=name)
    text = presets_mod.dump_preset(preset)
    if text != parsed_from:  # parse(text) is known to be `preset` only when text is what was parsed
        parsed_from = None
    if len(text.encode("utf-8")) > MAX_BODY_BYTES:
        raise RouteError(413, f"ProCache: the preset is larger than {MAX_BODY_BYTES // 1024} KiB.", "yaml",
                         "a preset is a few lines; remove what is not part of it.")
    try:
        path = user_preset_path(name)
        existed = path.exists()
        if existed and not data.get("overwrite"):
            raise RouteError(409, f"ProCache: user preset {name!r} already exists.", "name",
                             "pick another name or send \"overwrite\": true.")
        _presets_mod().write_text_atomic(path, text)
    except OSError as exc:
        raise _write_refusal(exc) from None
    listed = USER_PREFIX + name
    try:
        summary = summarize(_load_back(listed, path, text, preset if parsed_from is not None else None).preset,
                            listed, "user")
    except ProCacheError as exc:  # should not happen: dump -> load must round-trip
        path.unlink(missing_ok=True)
        raise RouteError(500, f"ProCache: the saved preset did not load back ({exc}); nothing was kept.") from None
    log.info("ProCache: saved user preset %s (%s)", listed, summary["actions"])
    return (200 if existed else 201), {"name": listed, "file": path.name, "summary": summary,
                                        "overwritten": existed}


def _load_back(listed: str, path: Path, text: str, parsed) -> _Parsed:
    """The saved file as the next list will see it. When the file holds exactly ``text`` and ``parsed`` is
    what parsing ``text`` gave, that is remembered without parsing it again; otherwise it is parsed."""
    if parsed is not None:
        key = stat_key(path)
        try:
            raw = preset_files.read_listed_preset(listed, path)
        except ProCacheError:
            raw = None
        if raw is not None and raw == text.encode("utf-8"):
            entry = _Parsed(parsed, text)
            _INDEX.store(listed, path, key, raw, entry)
            return entry
    return cached_preset(listed, path)


def _write_refusal(exc: OSError) -> RouteError:
    """A preset that cannot be written: the folder is read-only, full, or not a folder."""
    import errno

    why = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RouteError(403, f"ProCache: the user preset folder is not writable ({why}); nothing was saved.",
                          "user_presets_folder", "make <user dir>/procache_presets writable by the ComfyUI process.")
    return RouteError(507, f"ProCache: the preset could not be written ({why}); nothing was saved.",
                      "user_presets_folder", "free disk space in <user dir> and save again.")


def sweep_stale_temp_files() -> list[str]:
    """Removes what an interrupted save left: ``.tmp-*.yaml`` files of write_text_atomic. Called when
    the server starts, when no save of this server can be under way; the presets themselves are never
    half-written (a save renames a complete file over the old one)."""
    removed: list[str] = []
    try:
        folder = preset_files.user_presets_dir(create=False)
        if not folder.is_dir():
            return removed
        for f in folder.glob(".tmp-*.yaml"):
            try:
                if f.is_file() and not f.is_symlink():
                    f.unlink()
                    removed.append(f.name)
            except OSError:
                pass
    except Exception:  # a read-only or odd folder: nothing to do at start-up
        return removed
    if removed:
        log.info("ProCache: removed %d unfinished preset save(s) left in the user preset folder", len(removed))
    return removed


def warm_index() -> None:
    """Parses every listed preset once, off the event loop, while the server starts: the UI's first list
    then costs what every later one does."""
    try:
        list_body()
    except Exception as exc:  # a later list reports whatever is wrong
        log.debug("ProCache: warming the preset index failed: %r", exc)
