"""HTTP routes of the ProCache front-end, registered on the host's server under ``/procache/``.

The host also serves every route under ``/api/...``; the front-end calls them through
``api.fetchApi("/procache/...")``.

* ``GET  /procache/presets``          every preset (shipped and user) with a summary: steps, family,
                                       counts, estimated compute fraction, source (shipped | user).
* ``GET  /procache/presets/{name}``   one preset: its YAML text, the summary and the actions string.
                                       ``name`` is a listed name ("fast-dit", "user/mine").
* ``POST /procache/presets``           JSON ``{name, yaml}`` or ``{name, actions, family, model, selective}``
                                       (+ ``overwrite: true`` to replace an existing *user* preset).
                                       Writes ``<user dir>/procache_presets/<name>.yaml`` and nothing else.
* ``GET  /procache/preview``          ``?actions=FCS..|preset=name&steps=N`` -> the schedule remapped to
                                       N steps (``Schedule.remap``) with counts and compute estimate.
* ``POST /procache/preview``          JSON ``{text|actions|preset, steps}``; ``text`` is what a user typed
                                       into the Schedule Loader (an actions string or preset YAML).

Every refusal is HTTP 4xx with JSON ``{"error": message, "field": ..., "fix": ...}``; a broken preset
gives the ``ProCacheError`` message (which names the field at fault and the fix).

Importing this module registers the routes on ``server.PromptServer.instance`` when a host is running
(once, however often it is imported); without a host it only defines them.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from ..procache_core.errors import ProCacheError
from .preset_index import PresetIndex, stat_key
from .schedule_loader import available_presets, load_listed_preset, read_listed_preset, user_presets_dir

log = logging.getLogger("ProCache")

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
USER_PREFIX = "user/"
MAX_BODY_BYTES = 64 * 1024          # a request body or a preset's YAML text may not be larger
MAX_STEPS = 1000                    # preview refuses more steps than this
MAX_ACTIONS = 1000                  # ... and longer schedules

# Estimated share of a block's work done on a *selective* deep block: the token-local branches
# (MLP; PixArt also cross-attention) recompute `ratio` of the tokens, the self-attention is reused.
# Branches are weighed equally, like RunStats.block_eval_fraction.
_TOKEN_LOCAL_SHARE = {"pixart": 2.0 / 3.0}
_DEFAULT_TOKEN_LOCAL_SHARE = 0.5


# -- helpers ------------------------------------------------------------------------------------
class RouteError(Exception):
    """A refusal: HTTP ``status`` with a JSON body."""

    def __init__(self, status: int, message: str, field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": scrub_paths(message)}
        if field:
            self.body["field"] = scrub_paths(str(field))
        if fix:
            self.body["fix"] = scrub_paths(fix)

    @classmethod
    def from_procache(cls, exc: ProCacheError, status: int = 400) -> "RouteError":
        return cls(status, str(exc), getattr(exc, "field", None), getattr(exc, "fix", None))


def _server_roots() -> list[tuple[str, str]]:
    """(absolute folder, what a client is shown instead), most specific first."""
    roots: list[tuple[str, str]] = []
    try:
        udir = user_presets_dir(create=False)
        roots += [(str(udir.resolve()), "<user dir>/procache_presets"), (str(udir), "<user dir>/procache_presets"),
                  (str(udir.parent.resolve()), "<user dir>"), (str(udir.parent), "<user dir>")]
    except Exception:  # no host (plain tests): nothing to hide but the pack itself
        pass
    pack = Path(__file__).resolve().parent.parent
    roots += [(str(pack / "schedules"), "<ProCache>/schedules"), (str(pack), "<ProCache>")]
    try:
        import folder_paths

        roots.append((str(Path(folder_paths.base_path).resolve()), "<ComfyUI>"))
        roots.append((str(folder_paths.base_path), "<ComfyUI>"))
    except Exception:
        pass
    return sorted({r for r in roots if len(r[0]) > 1}, key=lambda r: -len(r[0]))


_ABS_PATH_RE = re.compile(r"(?<![\w.<>])/(?:[^\s/'\"(),:]+/)+([^\s/'\"(),:]*)")


def scrub_paths(text: str, any_path: bool = False) -> str:
    """``text`` without the server's folders (shown as placeholders such as ``<user dir>``); with
    ``any_path`` (text of an unexpected exception) every other absolute path is cut to its last part.
    A refusal tells the user what is wrong, not where the server keeps its files."""
    for root, shown in _server_roots():
        text = text.replace(root, shown)
    return _ABS_PATH_RE.sub(lambda m: ".../" + m.group(1), text) if any_path else text


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
    return available_presets()


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
    """A user preset name: [A-Za-z0-9_.-], 1..64 chars, not starting with '.', no path parts."""
    if not isinstance(name, str):
        raise RouteError(400, "ProCache: 'name' must be a string.", "name", "send e.g. {\"name\": \"my-preset\"}.")
    if name.startswith(USER_PREFIX):
        name = name[len(USER_PREFIX):]
    if not NAME_RE.fullmatch(name) or name.startswith(".") or name in (".", ".."):
        raise RouteError(400, f"ProCache: 'name' {name[:80]!r} is not allowed (use 1-64 letters, digits, '_', '-', "
                              "'.'; no leading dot, no slashes).", "name",
                         "pick a plain name such as 'dit-fast_v2'.")
    validate = getattr(_presets_mod(), "validate_preset_name", None)
    if validate is not None:
        try:
            res = validate(name)
        except ProCacheError as exc:
            raise RouteError.from_procache(exc) from None
        if isinstance(res, str) and res:
            name = res
    return name


def user_preset_path(name: str) -> Path:
    """The file a user preset is written to; refuses anything that resolves outside the folder."""
    folder = user_presets_dir()
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


def parse_typed_text(text: str, source: str):
    """What a user typed into the Schedule Loader: an actions string ("FCSC...") or preset YAML.

    Returns ``(actions_string, preset_or_None)``.
    """
    compact = re.sub(r"[\s,|_-]+", "", text)
    t = text.strip()
    # the same rule as the Schedule Loader node: F/C/S text, or anything without ':' and newlines
    if (compact and re.fullmatch(r"[FCSfcs]+", compact)) or (":" not in t and "\n" not in t):
        sched = _schedule_mod().Schedule.from_string(compact)
        return sched.to_string(), None
    preset = _presets_mod().parse_preset_text(text, source)
    return _actions_of(preset), preset


def _parse_steps(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        steps = int(str(value))
    except ValueError:
        raise RouteError(400, f"ProCache: 'steps' is {str(value)[:40]!r}, not an integer.", "steps",
                         "send steps=N with N a whole number of sampling steps.") from None
    if not 1 <= steps <= MAX_STEPS:
        raise RouteError(400, f"ProCache: 'steps' is {steps}, outside [1, {MAX_STEPS}].", "steps",
                         f"use between 1 and {MAX_STEPS} steps.")
    return steps


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
    return _INDEX.get(name, path, _parse_listed, read_listed_preset)


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
        return summarize(load_listed_preset(name, path), name, _source_of(name))
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
            _, typed = parse_typed_text(actions, source)
            if typed is not None:
                raise ProCacheError("actions", "must contain only F, C and S.", "send e.g. \"FCSCFCSCF\".")
            sched = _schedule_mod().Schedule.from_string(re.sub(r"[\s,|_-]+", "", actions).upper())
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
            raw = read_listed_preset(listed, path)
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


def preview_payload(data: dict[str, Any]) -> dict[str, Any]:
    steps = _parse_steps(data.get("steps"))
    preset = None
    family = None
    try:
        if data.get("preset"):
            presets = _all_presets()
            pname = str(data["preset"])
            if pname not in presets:
                raise RouteError(404, f"ProCache: preset {pname[:80]!r} not found.", "preset",
                                 "use a name from GET /procache/presets.")
            preset = cached_preset(pname, presets[pname]).preset
            actions = _actions_of(preset)
        elif data.get("text") not in (None, ""):
            text = str(data["text"])
            if len(text.encode("utf-8")) > MAX_BODY_BYTES:
                raise RouteError(413, f"ProCache: 'text' is larger than {MAX_BODY_BYTES // 1024} KiB.", "text",
                                 "a schedule is a few lines.")
            try:
                actions, preset = parse_typed_text(text, "schedule_text")
            except ProCacheError as exc:
                if str(exc.field).startswith("schedule_text"):
                    raise
                raise ProCacheError("schedule_text", f"is not a valid schedule: {exc.field!r} {exc.problem}",
                                    exc.fix or "type one letter per step (F, C, S), starting with F.") from None
        elif data.get("actions") not in (None, ""):
            raw = str(data["actions"])
            if len(raw) > MAX_ACTIONS * 4:
                raise RouteError(400, f"ProCache: 'actions' is longer than {MAX_ACTIONS} steps.", "actions",
                                 "use fewer steps.")
            actions, preset = parse_typed_text(raw, "actions")
            if preset is not None:
                raise ProCacheError("actions", "must contain only F, C and S.", "send e.g. actions=FCSCF.")
        else:
            raise RouteError(400, "ProCache: send 'actions', 'text' or 'preset'.", "actions",
                             "e.g. /procache/preview?actions=FCSCF&steps=30.")
        if len(actions) > MAX_ACTIONS:
            raise RouteError(400, f"ProCache: the schedule is longer than {MAX_ACTIONS} steps.", "actions",
                             "use fewer steps.")
        source_steps = len(actions)
        sched = _schedule_mod().Schedule.from_string(actions)
        if steps is not None and steps != source_steps:
            sched = sched.remap(steps)
        # what ProCache Apply will run (nodes/runtime_bridge.build_run_schedule): a connected
        # Selective Compute Settings node injects S where the schedule has none, or turns S into C
        selective = getattr(preset, "selective", None) if preset is not None else None
        applied = data.get("selective")
        if applied is not None:
            from ..procache_core.settings import SelectiveSettings

            if not isinstance(applied, dict):
                raise ProCacheError("selective", "must be a JSON object.", "send e.g. {\"enabled\": true, \"ratio\": 0.3}.")
            known = {"enabled", "depth_fraction", "start_block", "ratio", "weights"}
            selective = SelectiveSettings.from_dict({k: v for k, v in applied.items() if k in known})
            if selective.enabled and not sched.has_selective():
                sched = sched.with_selective(True)
        if selective is not None and not selective.enabled:
            sched = sched.with_selective(False)
        start, end = _percent(data, "start_percent", 0.0), _percent(data, "end_percent", 1.0)
        if start > end:
            raise ProCacheError("start_percent", f"is {start}, after end_percent {end}.",
                                "make start_percent <= end_percent.")
        n = len(sched)
        if (start, end) != (0.0, 1.0):  # by step share; the real run uses the sampler's sigmas
            acts = [a if start <= i / n < end else "F" for i, a in enumerate(sched.to_string())]
            sched = _schedule_mod().Schedule.from_string("".join(acts))
        actions = sched.to_string()
    except ProCacheError as exc:
        raise RouteError.from_procache(exc) from None
    if preset is not None:
        family = getattr(preset, "family", None)
    out = {"actions": actions, "steps": len(actions), "source_steps": source_steps,
           "remapped": len(actions) != source_steps, "counts": _counts(actions), "family": family,
           "model": getattr(preset, "model", None) if preset is not None else None,
           "selective": selective.to_dict() if hasattr(selective, "to_dict") else None,
           "kind": kind_of(preset) if preset is not None else "typed"}
    out.update(estimate_compute(actions, selective, family))
    return out


def _percent(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key)
    if value in (None, ""):
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ProCacheError(key, f"is {str(value)[:40]!r}, not a number.", "use a share between 0 and 1.") from None
    if not 0.0 <= x <= 1.0:
        raise ProCacheError(key, f"is {x}, outside [0, 1].", "use a share between 0 and 1.")
    return x


# -- aiohttp glue --------------------------------------------------------------------------------
def _json(status: int, payload: dict[str, Any]) -> web.Response:
    return web.json_response(payload, status=status)


# PROCACHE_ROUTE_TIMING=1 (set by benchmarks/load.py) adds the event-loop thread's run-queue wait to the
# Server-Timing header: with it, a slow answer splits into work, waiting for a CPU and the rest
# (waiting for the interpreter lock, I/O).
_TIMING_DETAIL = os.environ.get("PROCACHE_ROUTE_TIMING") == "1"


class _GcPauses:
    """Cyclic-GC pauses of the server process (any thread; every thread stops for them), recorded only
    with PROCACHE_ROUTE_TIMING=1: a request can wait behind a collection before its handler runs. Keeps
    running totals and the last pauses themselves (start on the system-wide monotonic clock that
    ``time.perf_counter`` reads on Linux, duration, generation), so a client on the same machine can tell
    which of its requests a pause overlapped."""

    def __init__(self, keep: int = 20000) -> None:
        self.t0 = 0.0
        self.total_ms = 0.0
        self.max_ms = 0.0
        self.count = 0
        self.pauses: collections.deque = collections.deque(maxlen=keep)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
        elif self.t0:
            ms = (time.perf_counter() - self.t0) * 1e3
            self.total_ms += ms
            self.max_ms = max(self.max_ms, ms)
            self.count += 1
            self.pauses.append((round(self.t0, 6), round(ms, 3), int(info.get("generation", -1))))


_GC = _GcPauses()
if _TIMING_DETAIL:
    import gc

    gc.callbacks.append(_GC)


def _runqueue_wait_ms() -> float | None:
    """Time this thread has spent runnable but not running (Linux schedstat), or None."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def _server_timing(t0: float, c0: float, rq0: float | None, extra: dict[str, float]) -> str:
    """``Server-Timing`` value: the handler's wall time, the event-loop thread's CPU time in it, and what
    the handler measured itself (``extra``: reading the body, work done on the save thread)."""
    parts = [f"handler;dur={(time.perf_counter() - t0) * 1e3:.2f}", f"cpu;dur={(time.thread_time() - c0) * 1e3:.2f}"]
    if rq0 is not None:
        rq1 = _runqueue_wait_ms()
        if rq1 is not None:
            parts.append(f"runqueue;dur={rq1 - rq0:.2f}")
    parts += [f"{k};dur={v:.2f}" for k, v in extra.items()]
    if _TIMING_DETAIL:  # totals since the server started: the benchmark takes differences
        parts += [f"gc_total;dur={_GC.total_ms:.2f}", f"gc_max;dur={_GC.max_ms:.2f}", f"gc_count;dur={_GC.count}"]
    return ", ".join(parts)


def _guard(fn):
    async def handler(request: web.Request) -> web.Response:
        t0, c0 = time.perf_counter(), time.thread_time()
        rq0 = _runqueue_wait_ms() if _TIMING_DETAIL else None
        request["procache_timing"] = extra = {}
        try:
            resp = await fn(request)
        except RouteError as exc:
            resp = _json(exc.status, exc.body)
        except ProCacheError as exc:
            resp = _json(400, RouteError.from_procache(exc).body)
        except Exception as exc:  # never leak a traceback page to the UI
            log.exception("ProCache route %s failed", request.path)
            resp = _json(500, {"error": scrub_paths(f"ProCache: internal error ({type(exc).__name__}: {exc})",
                                                    any_path=True), "field": "server"})
        resp.headers["Server-Timing"] = _server_timing(t0, c0, rq0, extra)
        return resp
    handler.__name__ = fn.__name__
    return handler


async def _read_json(request: web.Request) -> Any:
    t0 = time.perf_counter()
    try:
        return await _read_json_body(request)
    finally:
        timing = request.get("procache_timing")
        if timing is not None:
            timing["body"] = (time.perf_counter() - t0) * 1e3


async def _read_json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RouteError(413, f"ProCache: the request is larger than {MAX_BODY_BYTES // 1024} KiB.", "body",
                         "a preset is a few lines.")
    chunks: list[bytes] = []
    total = 0
    while True:  # StreamReader.read(n) may return less than n: read to the end, but never past the limit
        chunk = await request.content.read(16 * 1024)
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise RouteError(413, f"ProCache: the request is larger than {MAX_BODY_BYTES // 1024} KiB.", "body",
                             "a preset is a few lines.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RouteError(400, f"ProCache: the request body is not JSON ({exc}).", "body",
                         "send Content-Type: application/json with a JSON object.") from None


@_guard
async def handle_gc_pauses(request: web.Request) -> web.Response:
    """The recorded GC pauses (registered only with PROCACHE_ROUTE_TIMING=1, for benchmarks/load.py)."""
    return _json(200, {"clock": "perf_counter", "pauses": list(_GC.pauses), "count": _GC.count,
                       "total_ms": round(_GC.total_ms, 3), "max_ms": round(_GC.max_ms, 3)})


@_guard
async def handle_list(request: web.Request) -> web.Response:
    return web.Response(text=list_body(), content_type="application/json")


@_guard
async def handle_get(request: web.Request) -> web.Response:
    return _json(200, get_payload(request.match_info["name"]))


# Saves write files: a slow disk must not stall the event loop (every other request of the UI and the
# host waits behind it). One thread, so saves still run one at a time, in the order they came.
_SAVE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procache-save")


def _timed_save(data: Any, timing: dict[str, float]) -> tuple[int, dict[str, Any]]:
    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        return save_payload(data)
    finally:
        timing["save_thread"] = (time.perf_counter() - t0) * 1e3
        timing["save_thread_cpu"] = (time.thread_time() - c0) * 1e3


@_guard
async def handle_save(request: web.Request) -> web.Response:
    data = await _read_json(request)
    status, payload = await asyncio.get_running_loop().run_in_executor(
        _SAVE_THREAD, _timed_save, data, request["procache_timing"])
    return _json(status, payload)


@_guard
async def handle_preview_get(request: web.Request) -> web.Response:
    return _json(200, preview_payload(dict(request.query)))


@_guard
async def handle_preview_post(request: web.Request) -> web.Response:
    data = await _read_json(request)
    if not isinstance(data, dict):
        raise RouteError(400, "ProCache: the request body must be a JSON object.", "body",
                         "send {\"text\": ..., \"steps\": N}.")
    return _json(200, preview_payload(data))


def register(routes: web.RouteTableDef) -> None:
    routes.get("/procache/presets")(handle_list)
    routes.post("/procache/presets")(handle_save)
    routes.get("/procache/presets/{name:.+}")(handle_get)
    routes.get("/procache/preview")(handle_preview_get)
    routes.post("/procache/preview")(handle_preview_post)
    if _TIMING_DETAIL:
        routes.get("/procache/timing/gc")(handle_gc_pauses)


def sweep_stale_temp_files() -> list[str]:
    """Removes what an interrupted save left: ``.tmp-*.yaml`` files of write_text_atomic. Called when
    the server starts, when no save of this server can be under way; the presets themselves are never
    half-written (a save renames a complete file over the old one)."""
    removed: list[str] = []
    try:
        folder = user_presets_dir(create=False)
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


def _register_on_host() -> bool:
    try:
        from server import PromptServer  # the host's module; absent outside ComfyUI
    except Exception:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None or getattr(instance, "_procache_routes", False):
        return False
    register(instance.routes)
    instance._procache_routes = True
    app = getattr(instance, "app", None)
    if app is not None:
        from . import gc_freeze

        try:
            app.on_startup.append(gc_freeze.on_startup)
        except RuntimeError:  # the app already started (its signals are frozen): nothing to tune then
            pass
    sweep_stale_temp_files()
    _SAVE_THREAD.submit(_warm_index)
    return True


def _warm_index() -> None:
    """Parses every listed preset once, off the event loop, while the server starts: the UI's first list
    then costs what every later one does."""
    try:
        list_body()
    except Exception as exc:  # a later list reports whatever is wrong
        log.debug("ProCache: warming the preset index failed: %r", exc)


_register_on_host()
