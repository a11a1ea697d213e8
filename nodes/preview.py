"""``/procache/preview``: what a schedule will do on an N-step run, planned by the run's own planner.

The preview has no sampler, so it plans on evenly spaced noise positions (``plan.even_run_noise``) with
the active range read off them; everything else (the noise record, the few-step preset, the short-run
floor, selective injection) is the run's rule (``procache_core.plan.plan_schedule``), so the preview
cannot disagree with the run. The few-step preset is the one of the previewed preset's family.
"""
from __future__ import annotations

from typing import Any

from ..procache_core.errors import ProCacheError
from ..procache_core.plan import SHORT_RUN_FLOOR, SHORT_RUN_FLOOR_MAX, even_run_noise, few_step_name, plan_schedule
from ..procache_core.schedule import Schedule
from ..procache_core.settings import SelectiveSettings
from .preset_payloads import (MAX_ACTIONS, MAX_BODY_BYTES, _actions_of, _all_presets, _counts, _presets_mod,
                              cached_preset, estimate_compute, kind_of)
from .route_errors import RouteError

MAX_STEPS = 1000                    # preview refuses more steps than this


def _parse_int(value: Any, key: str, low: int, high: int, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        out = int(str(value))
    except ValueError:
        raise RouteError(400, f"ProCache: '{key}' is {str(value)[:40]!r}, not an integer.", key,
                         f"send {key}=N with N a whole number of {what}.") from None
    if not low <= out <= high:
        raise RouteError(400, f"ProCache: '{key}' is {out}, outside [{low}, {high}].", key,
                         f"use between {low} and {high} {what}.")
    return out


def _parse_steps(value: Any) -> int | None:
    return _parse_int(value, "steps", 1, MAX_STEPS, "sampling steps")


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


def _typed(text: str, field: str) -> tuple[str, Any]:
    """(actions, preset or None) of typed text (``presets.typed_actions`` tells which); errors name ``field``
    only for YAML, as the parsers do."""
    pm = _presets_mod()
    letters = pm.typed_actions(text)
    if letters is not None:
        return Schedule.from_string(letters).to_string(), None
    preset = pm.parse_preset_text(text, field)
    return _actions_of(preset), preset


def _few_step_preset(family: str, schedule_steps: int, run_steps: int) -> Any:
    """The shipped few-step preset the run would take (None: the schedule is kept, as the run does when
    the file is missing or broken)."""
    name = few_step_name(family, schedule_steps, run_steps)
    if name is None:
        return None
    pm = _presets_mod()
    path = pm.list_presets([pm.shipped_presets_dir()]).get(name)
    if path is None:
        return None
    try:
        return cached_preset(name, path).preset
    except Exception:  # noqa: BLE001 - like the run: a broken few-step file keeps the schedule
        return None


def _source(data: dict[str, Any]) -> tuple[str, Any]:
    """(actions, preset or None) of what the request previews: a listed preset, typed text or actions."""
    if data.get("preset"):
        presets = _all_presets()
        pname = str(data["preset"])
        if pname not in presets:
            raise RouteError(404, f"ProCache: preset {pname[:80]!r} not found.", "preset",
                             "use a name from GET /procache/presets.")
        preset = cached_preset(pname, presets[pname]).preset
        return _actions_of(preset), preset
    if data.get("text") not in (None, ""):
        text = str(data["text"])
        if len(text.encode("utf-8")) > MAX_BODY_BYTES:
            raise RouteError(413, f"ProCache: 'text' is larger than {MAX_BODY_BYTES // 1024} KiB.", "text",
                             "a schedule is a few lines.")
        try:
            return _typed(text, "schedule_text")
        except ProCacheError as exc:
            if str(exc.field).startswith("schedule_text"):
                raise
            raise ProCacheError("schedule_text", f"is not a valid schedule: {exc.field!r} {exc.problem}",
                                exc.fix or "type one letter per step (F, C, S), starting with F.") from None
    if data.get("actions") not in (None, ""):
        raw = str(data["actions"])
        if len(raw) > MAX_ACTIONS * 4:
            raise RouteError(400, f"ProCache: 'actions' is longer than {MAX_ACTIONS} steps.", "actions",
                             "use fewer steps.")
        letters = _presets_mod().typed_actions(raw)
        if letters is None:
            raise ProCacheError("actions", "must contain only F, C and S.", "send e.g. actions=FCSCF.")
        return Schedule.from_string(letters).to_string(), None
    raise RouteError(400, "ProCache: send 'actions', 'text' or 'preset'.", "actions",
                     "e.g. /procache/preview?actions=FCSCF&steps=30.")


def preview_payload(data: dict[str, Any]) -> dict[str, Any]:
    """The schedule an N-step run of it uses (``steps``, default its own length), with the Apply settings
    the request gives: ``selective`` (a connected Selective Compute Settings node), ``start_percent`` /
    ``end_percent``, ``short_run_floor``."""
    steps = _parse_steps(data.get("steps"))
    floor = _parse_int(data.get("short_run_floor"), "short_run_floor", 0, SHORT_RUN_FLOOR_MAX, "steps")
    try:
        actions, preset = _source(data)
        if len(actions) > MAX_ACTIONS:
            raise RouteError(400, f"ProCache: the schedule is longer than {MAX_ACTIONS} steps.", "actions",
                             "use fewer steps.")
        source_steps = len(actions)
        sched = Schedule.from_string(actions)
        # what ProCache Apply decides: a connected Selective Compute Settings node injects S where the
        # schedule has none (or turns S into C); else the preset's own settings apply
        selective = getattr(preset, "selective", None) if preset is not None else None
        inject = False
        applied = data.get("selective")
        if applied is not None:
            if not isinstance(applied, dict):
                raise ProCacheError("selective", "must be a JSON object.", "send e.g. {\"enabled\": true, \"ratio\": 0.3}.")
            known = {"enabled", "depth_fraction", "start_block", "ratio", "weights"}
            selective = SelectiveSettings.from_dict({k: v for k, v in applied.items() if k in known})
            inject = bool(selective.enabled and not sched.has_selective())
        start, end = _percent(data, "start_percent", 0.0), _percent(data, "end_percent", 1.0)
        if start > end:
            raise ProCacheError("start_percent", f"is {start}, after end_percent {end}.",
                                "make start_percent <= end_percent.")
        family = getattr(preset, "family", None) if preset is not None else None
        n = steps if steps is not None else source_steps
        plan = plan_schedule(sched, getattr(preset, "noise", None), even_run_noise(n),
                             name=getattr(preset, "name", "custom"),
                             selective_enabled=selective is None or bool(selective.enabled), inject_selective=inject,
                             start_percent=start, end_percent=end,
                             short_run_floor=SHORT_RUN_FLOOR if floor is None else floor,
                             few=_few_step_preset(family or "", source_steps, n))
        actions = plan.schedule.to_string()
    except ProCacheError as exc:
        raise RouteError.from_procache(exc) from None
    out = {"actions": actions, "steps": len(actions), "source_steps": source_steps,
           "remapped": len(actions) != source_steps, "counts": _counts(actions), "family": family,
           "model": getattr(preset, "model", None) if preset is not None else None,
           "selective": selective.to_dict() if hasattr(selective, "to_dict") else None,
           "kind": kind_of(preset) if preset is not None else "typed",
           "mapping": plan.mapping, "few_step": getattr(plan.few_step, "name", None)}
    out.update(estimate_compute(actions, selective, family))
    return out
