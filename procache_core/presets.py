"""Versioned YAML presets: a schedule plus the settings and provenance that explain it.

Format (version 1; see docs/schedules.md)::

    version: 1
    name: dit-xl2-ddim50-paper          # [A-Za-z0-9_.-], 1..64 chars, no leading dot
    family: dit                          # pixart / flux / sd3 / wan / dit / any ...
    model: DiT-XL/2 256x256
    steps: 50                            # optional; must equal the number of actions
    actions: FCSC FCSC FCS FC ...        # F/C/S string (spaces, commas ignored) or a list of strings
    selective: {enabled: true, depth_fraction: 0.25, ratio: 0.07}
    provenance: {source: ..., sampler: ..., budget: 17, objective: ..., date: "2025-11-23", notes: ...}

Files are read with ``yaml.safe_load`` only. Every problem becomes a ``ScheduleError`` / ``ProCacheError``
that names the field and the fix (and the line, where YAML knows it): users edit these files by hand.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ProCacheError, ScheduleError
from .schedule import MAX_STEPS, Schedule, check_noise, even_noise
from .settings import ScoreWeights, SelectiveSettings

PRESET_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_PRESET_BYTES = 256 * 1024
USER_PREFIX = "user/"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # fullmatch: a trailing newline is not a name
_FAMILY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_MAX_MODEL_CHARS = 200
_MAX_PROVENANCE_KEYS = 32
_MAX_PROVENANCE_CHARS = 4000
_PROV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,39}$")
KNOWN_KEYS = ("version", "name", "family", "model", "steps", "actions", "selective", "provenance", "noise")
NOISE_DECIMALS = 6
_ProvValue = (str, int, float, bool, type(None))


_TYPED_SEPARATORS = re.compile(r"[\s,|_\-]+")
_TYPED_SCHEDULE = re.compile(r"[FCSfcs\s,|_\-]+")


def typed_actions(text: str) -> str | None:
    """The step letters of what a user typed (Schedule Loader's schedule_text, the preview, a UI save)
    when it is a schedule string such as ``"FCSC FCS|FC"``, else None: the text is preset YAML.

    The one rule: only F/C/S and separators (spaces, ``,|_-``), or anything without ':' and newlines (a
    typo in a schedule string is then reported as one, not as broken YAML)."""
    t = text.strip()
    if _TYPED_SCHEDULE.fullmatch(t) or (":" not in t and "\n" not in t):
        return _TYPED_SEPARATORS.sub("", t)
    return None


def validate_preset_name(name: Any) -> str:
    """The name itself when it is a safe file stem: [A-Za-z0-9_.-], 1..64 chars, no leading dot."""
    if not isinstance(name, str):
        raise ProCacheError("name", f"must be text, got {type(name).__name__}.", "use a name such as 'flux-28-fast'.")
    if not _NAME_RE.fullmatch(name) or name.startswith("."):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ProCacheError("name", f"{shown!r} is not allowed (1-64 letters, digits, '_', '-', '.'; "
                                    "no leading dot, no spaces or slashes).",
                            "pick a plain name such as 'flux-28-fast' or 'my_preset.v2'.")
    return name


def _check_family(family: Any) -> str:
    if not isinstance(family, str) or not _FAMILY_RE.fullmatch(family):
        raise ScheduleError("family", f"is {family!r}; it must be a short name (letters, digits, '_', '-', '.').",
                            "use the model family, e.g. pixart, flux, sd3, wan, dit, or 'any'.")
    return family.lower()


def _check_model(model: Any) -> str:
    if not isinstance(model, str):
        raise ScheduleError("model", f"must be text, got {type(model).__name__}.",
                            "quote it, e.g. model: \"PixArt-alpha 512\".")
    if len(model) > _MAX_MODEL_CHARS or any(ord(c) < 32 for c in model):
        raise ScheduleError("model", f"must be one line of at most {_MAX_MODEL_CHARS} characters.",
                            "write a short model description on one line.")
    return model


def _check_provenance(prov: Any) -> dict[str, Any]:
    if prov is None:
        return {}
    if not isinstance(prov, Mapping):
        raise ScheduleError("provenance", f"must be a mapping, got {type(prov).__name__}.",
                            "write e.g. 'provenance: {source: my search, date: \"2025-01-31\"}'.")
    if len(prov) > _MAX_PROVENANCE_KEYS:
        raise ScheduleError("provenance", f"has {len(prov)} keys, more than {_MAX_PROVENANCE_KEYS}.",
                            "keep source, sampler, budget, objective, date and notes.")
    out: dict[str, Any] = {}
    for key, value in prov.items():
        if not isinstance(key, str) or not _PROV_KEY_RE.fullmatch(key):
            shown = key if isinstance(key, str) and len(key) <= 40 else repr(key)[:40]
            raise ScheduleError(f"provenance.{shown}", "is not a valid provenance key.",
                                "use short keys of letters, digits and '_' such as source, sampler, budget, notes.")
        if isinstance(value, (_dt.date, _dt.datetime)):
            value = value.isoformat()  # YAML reads 2025-01-31 as a date; keep it as text
        if not isinstance(value, _ProvValue):
            raise ScheduleError(f"provenance.{key}", f"is a {type(value).__name__}; only single values are allowed.",
                                "use text, a number, true/false or null (quote lists into one string).")
        if isinstance(value, float) and not math.isfinite(value):
            raise ScheduleError(f"provenance.{key}", f"is {value}.", "use a finite number or text.")
        if isinstance(value, str) and len(value) > _MAX_PROVENANCE_CHARS:
            raise ScheduleError(f"provenance.{key}", f"is longer than {_MAX_PROVENANCE_CHARS} characters.",
                                "shorten the note.")
        out[key] = value
    return out


@dataclass(frozen=True)
class Preset:
    """A named schedule with its selective settings and where it came from (validated on construction)."""

    name: str
    schedule: Schedule
    family: str = "any"
    model: str = ""
    selective: SelectiveSettings = field(default_factory=SelectiveSettings)
    provenance: dict = field(default_factory=dict)
    version: int = PRESET_VERSION
    noise: tuple[float, ...] | None = None   # noise position (timestep percent) of every step; None: not recorded

    def __post_init__(self) -> None:
        validate_preset_name(self.name)
        if not isinstance(self.schedule, Schedule):
            raise ScheduleError("schedule", f"must be a Schedule, got {type(self.schedule).__name__}.",
                                "build it with Schedule.from_string('FCSC...').")
        object.__setattr__(self, "family", _check_family(self.family))
        _check_model(self.model)
        if not isinstance(self.selective, SelectiveSettings):
            raise ScheduleError("selective", f"must be SelectiveSettings, got {type(self.selective).__name__}.",
                                "use SelectiveSettings(...) or SelectiveSettings.from_dict({...}).")
        self.selective.validate()
        object.__setattr__(self, "provenance", _check_provenance(self.provenance))
        _check_version(self.version)
        if self.noise is not None:
            if isinstance(self.noise, (str, bytes)) or not hasattr(self.noise, "__iter__"):
                raise ScheduleError("noise", f"must be a list of numbers, got {type(self.noise).__name__}.",
                                    "give one noise position (timestep percent, 0..1) per step, or remove it.")
            vals = []
            for i, v in enumerate(self.noise):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ScheduleError("noise", f"has {v!r} at position {i + 1}, not a number.",
                                        "give one noise position (timestep percent, 0..1) per step.")
                vals.append(round(float(v), NOISE_DECIMALS) if math.isfinite(float(v)) else float(v))
            object.__setattr__(self, "noise", check_noise(vals, "noise", len(self.schedule)))

    @property
    def noise_positions(self) -> tuple[float, ...]:
        """The recorded noise positions, or evenly spaced ones (i / steps) for a preset without a record."""
        return self.noise if self.noise is not None else even_noise(len(self.schedule))
    def __hash__(self) -> int:  # provenance is a dict; equal presets still hash equal
        return hash((self.name, self.schedule, self.family, self.model, self.selective, self.version, self.noise))

    @classmethod
    def from_schedule_text(cls, text: str, name: str = "custom", family: str = "any", model: str = "",
                           selective: SelectiveSettings | None = None, source: str = "typed schedule") -> "Preset":
        """A preset around a typed-in schedule such as ``"FCSC FCS FC"`` or ``"FC|SC"`` (the separators
        :func:`typed_actions` drops are ignored)."""
        letters = typed_actions(text) if isinstance(text, str) else None
        return cls(name=name, schedule=Schedule.from_string(text if letters is None else letters), family=family,
                   model=model, selective=selective or SelectiveSettings(), provenance={"source": source})

    @property
    def steps(self) -> int:
        return len(self.schedule)

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping, in file order."""
        out = {"version": self.version, "name": self.name, "family": self.family, "model": self.model,
               "steps": len(self.schedule), "actions": self.schedule.grouped(),
               "selective": _selective_dict(self.selective), "provenance": dict(self.provenance)}
        if self.noise is not None:
            out["noise"] = _FlowList(self.noise)
        return out


class _FlowList(list):
    """A list written on one line in YAML (the noise record)."""


def _check_version(version: Any) -> int:
    if not isinstance(version, int) or isinstance(version, bool):
        raise ScheduleError("version", f"must be a whole number, got {version!r}.", f"write 'version: {PRESET_VERSION}'.")
    if version not in SUPPORTED_VERSIONS:
        if version > max(SUPPORTED_VERSIONS):
            raise ScheduleError("version", f"is {version}, newer than this ProCache reads "
                                           f"(up to {max(SUPPORTED_VERSIONS)}).",
                                "update the ProCache node pack, or write the preset in version 1.")
        raise ScheduleError("version", f"is {version}, not a preset format version.", f"write 'version: {PRESET_VERSION}'.")
    return version


def _selective_dict(sel: SelectiveSettings) -> dict[str, Any]:
    d = sel.to_dict()
    out = {"enabled": d["enabled"], "depth_fraction": d["depth_fraction"], "start_block": d["start_block"],
           "ratio": d["ratio"], "weights": {k: v for k, v in d["weights"].items() if k != "value_norm" or v}}
    if d["ratio_schedule"] != "constant":  # written only when used, so older presets read back unchanged
        out["ratio_schedule"] = d["ratio_schedule"]
    if d["forecast"]:  # likewise
        out["forecast"] = d["forecast"]
    if d["tie_break"] != "index":  # likewise
        out["tie_break"] = d["tie_break"]
    if d["image_first"]:  # likewise (value_norm above too)
        out["image_first"] = True
    if d["drift_guard"]:  # likewise
        out["drift_guard"], out["drift_budget"] = d["drift_guard"], d["drift_budget"]
    return out


# -- parsing -------------------------------------------------------------------------------------
def _parse_actions(value: Any) -> Schedule:
    if isinstance(value, str):
        return Schedule.from_string(value)
    if isinstance(value, list):
        if not value:
            raise ScheduleError("actions", "is an empty list.", "list one F/C/S letter per step, starting with F.")
        parts = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ScheduleError(f"actions[{i}]", f"is {item!r}, not a letter F, C or S.",
                                    "quote each item or write actions as one string, e.g. 'FCSC FCS'.")
            parts.append(item)
        try:
            return Schedule.from_string(" ".join(parts))
        except ScheduleError as exc:
            raise ScheduleError("actions", exc.problem, exc.fix) from None
    if value is None:
        raise ScheduleError("actions", "is missing or empty.", "write e.g. 'actions: FCSC FCSC FCS FC'.")
    raise ScheduleError("actions", f"must be a string of F/C/S or a list, got {type(value).__name__}.",
                        "write e.g. 'actions: FCSC FCSC FCS FC'.")


def _parse_selective(value: Any) -> SelectiveSettings:
    if value is None:
        return SelectiveSettings()
    if not isinstance(value, Mapping):
        raise ScheduleError("selective", f"must be a mapping, got {type(value).__name__}.",
                            "write e.g. 'selective: {enabled: true, ratio: 0.3}'.")
    for k in value:
        if not isinstance(k, str):
            raise ScheduleError(f"selective.{k!r}", "has a key that is not text.",
                                "use enabled, depth_fraction, start_block, ratio, weights, forecast.")
    if "enabled" in value and not isinstance(value["enabled"], bool):
        raise ScheduleError("selective.enabled", f"is {value['enabled']!r}, not true/false.",
                            "write 'enabled: true' or 'enabled: false'.")
    sb = value.get("start_block")
    if sb is not None and (not isinstance(sb, int) or isinstance(sb, bool)):
        raise ScheduleError("selective.start_block", f"is {sb!r}, not a whole number or null.",
                            "use a block index such as -7, or null to use depth_fraction.")
    for k in ("depth_fraction", "ratio"):
        if k in value and (isinstance(value[k], bool) or not isinstance(value[k], (int, float))):
            raise ScheduleError(f"selective.{k}", f"is {value[k]!r}, not a number.", "use a number in [0, 1].")
    if "forecast" in value and (isinstance(value["forecast"], bool) or not isinstance(value["forecast"], int)):
        raise ScheduleError("selective.forecast", f"is {value['forecast']!r}, not 0, 1 or 2.",
                            "write 'forecast: 0' (copy), 'forecast: 1' (light) or 'forecast: 2'.")
    w = value.get("weights")
    if w is not None:
        if not isinstance(w, Mapping):
            raise ScheduleError("selective.weights", f"must be a mapping, got {type(w).__name__}.",
                                "write e.g. 'weights: {staleness: 1.0, spatial: 0.5}'.")
        known = set(ScoreWeights.__dataclass_fields__)
        for k, v in w.items():
            if not isinstance(k, str) or k not in known:
                raise ScheduleError(f"selective.weights.{k}", "is not a known weight.", f"use only {sorted(known)}.")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ScheduleError(f"selective.weights.{k}", f"is {v!r}, not a number.", "use a number in [0, 100].")
    try:
        return SelectiveSettings.from_dict(value)
    except ProCacheError as exc:
        fld = exc.field if exc.field.startswith("selective") else f"selective.{exc.field}"
        raise ScheduleError(fld, exc.problem, exc.fix) from None
    except Exception as exc:  # noqa: BLE001 - whatever from_dict trips over is a user input problem
        raise ScheduleError("selective", f"could not be read ({type(exc).__name__}: {exc}).",
                            "use numbers for ratio/depth_fraction/weights and true/false for enabled.") from None


def _safe_load_with_node(text: str) -> tuple[Any, Any]:
    """``yaml.safe_load(text)`` and the node tree it was built from, in one parse.

    The same steps as ``safe_load`` (``get_single_data`` is ``get_single_node`` + ``construct_document``);
    keeping the node gives the key lines without parsing the text a second time (the pure-Python
    parser is most of what reading a preset costs)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def _key_lines(node: Any) -> tuple[dict[str, int], list[str]]:
    """1-based line of every top-level key of a composed document, and keys that appear more than once."""
    lines: dict[str, int] = {}
    dupes: list[str] = []
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in lines:
                    dupes.append(k.value)
                lines.setdefault(k.value, k.start_mark.line + 1)
    return lines, dupes


def _where(source: str, line: int | None = None) -> str:
    return f" (in {source}, line {line})" if line else f" (in {source})"


def parse_preset_text(text: str, source: str = "<text>") -> Preset:
    """A Preset from YAML text; any problem raises ScheduleError naming field, fix, source and line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ScheduleError("preset", f"is not UTF-8 text{_where(source)}.", "save the file as UTF-8.") from None
    if not isinstance(text, str):
        raise ScheduleError("preset", f"must be YAML text, got {type(text).__name__}{_where(source)}.",
                            "pass the file's text.")
    if len(text) > MAX_PRESET_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_PRESET_BYTES:
        raise ScheduleError("preset", f"is larger than {MAX_PRESET_BYTES // 1024} KiB{_where(source)}.",
                            "a preset is a few lines; remove what does not belong to it.")
    try:
        data, node = _safe_load_with_node(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _where(source, mark.line + 1 if mark else None)
        what = " ".join(str(exc.problem or exc.context or "syntax error").split())
        col = f", column {mark.column + 1}" if mark else ""
        fix = ("remove the '!!' tag: presets hold only text, numbers, true/false, lists and mappings."
               if isinstance(exc, yaml.constructor.ConstructorError) else
               "fix the YAML syntax at that line (indentation, ':' after keys, matching quotes).")
        raise ScheduleError("yaml", f"is not valid YAML: {what}{where[:-1]}{col}).", fix) from None
    except RecursionError:
        raise ScheduleError("yaml", f"is nested too deeply{_where(source)}.", "write a flat preset mapping.") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a date like 2025-13-45 raises ValueError deep inside PyYAML
        what = " ".join(str(exc).split())[:200]
        raise ScheduleError("yaml", f"could not be read: {type(exc).__name__}: {what}{_where(source)}.",
                            "check values such as dates and numbers; quote them to keep them as text.") from None
    if not isinstance(data, dict):
        got = "nothing" if data is None else f"a {type(data).__name__}"
        raise ScheduleError("preset", f"must be a YAML mapping of keys, got {got}{_where(source)}.",
                            "start with 'version: 1', 'name: ...', 'actions: F...' on separate lines.")
    lines, dupes = _key_lines(node)
    if dupes:
        raise ScheduleError(dupes[0], f"appears more than once{_where(source, lines.get(dupes[0]))}.",
                            "keep a single entry for each key.")
    try:
        return _preset_from_mapping(data)
    except ProCacheError as exc:
        top = exc.field.split(".")[0].split("[")[0]
        raise type(exc)(exc.field, f"{exc.problem.rstrip('.')}{_where(source, lines.get(top))}.", exc.fix) from None


def _preset_from_mapping(data: Mapping[Any, Any]) -> Preset:
    for key in data:
        if not isinstance(key, str) or key not in KNOWN_KEYS:
            shown = key if isinstance(key, str) else repr(key)
            why = "" if isinstance(key, str) else (
                " (YAML reads an unquoted yes/no/on/off/true/false/null or number as a value, not a name)")
            raise ScheduleError(str(shown)[:60], f"is not a preset key{why}.", f"use only {', '.join(KNOWN_KEYS)}.")
    version = _check_version(data.get("version", PRESET_VERSION))
    if "name" not in data or data["name"] is None:
        raise ScheduleError("name", "is missing.", "add e.g. 'name: my-preset'.")
    name = validate_preset_name(data["name"])
    schedule = _parse_actions(data.get("actions"))
    if "steps" in data:
        steps = data["steps"]
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise ScheduleError("steps", f"is {steps!r}, not a whole number.",
                                f"write 'steps: {len(schedule)}' (the number of actions) or remove it.")
        if steps != len(schedule):
            raise ScheduleError("steps", f"is {steps}, but 'actions' has {len(schedule)} steps.",
                                f"set 'steps: {len(schedule)}', or add/remove actions to make {steps}.")
    family = data.get("family", "any")
    model = data.get("model", "")
    if model is None:
        model = ""
    selective = _parse_selective(data.get("selective"))
    provenance = _check_provenance(data.get("provenance"))
    noise = data.get("noise")
    if noise is not None and not isinstance(noise, list):
        raise ScheduleError("noise", f"must be a list of numbers, got {type(noise).__name__}.",
                            "write e.g. 'noise: [0.0, 0.05, 0.1, ...]' (one timestep percent per step) or remove it.")
    return Preset(name=name, schedule=schedule, family=family if family is not None else "any", model=model,
                  selective=selective, provenance=provenance, version=version,
                  noise=tuple(noise) if noise is not None else None)


class _PresetDumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings holding a YAML line break other than a newline.

    With ``allow_unicode`` PyYAML writes NEL (U+0085) raw inside a single-quoted scalar, and the
    loader folds it to a space; double quotes make the emitter write it as an escape sequence.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(ch in value for ch in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PresetDumper.add_representer(str, _represent_str)
_PresetDumper.add_representer(
    _FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", list(v), flow_style=True))


def dump_preset(preset: Preset) -> str:
    """YAML text of the preset; ``parse_preset_text(dump_preset(p)) == p``."""
    if not isinstance(preset, Preset):
        raise ScheduleError("preset", f"must be a Preset, got {type(preset).__name__}.", "pass a Preset.")
    return yaml.dump(preset.to_dict(), Dumper=_PresetDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)


def load_preset(path: str | os.PathLike[str]) -> Preset:
    """Read and validate one preset file (UTF-8, at most 256 KiB)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PRESET_BYTES:
            raise ScheduleError("preset", f"file {p.name} is {size} bytes, larger than "
                                          f"{MAX_PRESET_BYTES // 1024} KiB.", "a preset is a few lines.")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ProCacheError("preset", f"file {str(p)!r} does not exist.", "check the path or pick a listed preset.") from None
    except OSError as exc:
        raise ProCacheError("preset", f"file {str(p)!r} cannot be read ({exc.strerror or exc}).",
                            "check the path and its permissions.") from None
    return parse_preset_text(raw, str(p))


def save_preset(preset: Preset, path: str | os.PathLike[str]) -> Path:
    """Write the preset atomically (a temporary file renamed over the target) and return the path."""
    return write_text_atomic(path, dump_preset(preset))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` so that readers see the old file or the whole new one, never half of it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def shipped_presets_dir() -> Path:
    """The repository's ``schedules/`` folder."""
    return Path(__file__).resolve().parent.parent / "schedules"


def list_presets(dirs: Iterable[str | os.PathLike[str]]) -> dict[str, Path]:
    """``name -> file`` for every ``*.yaml`` / ``*.yml`` whose stem is a valid preset name.

    The first folder is the primary one (shipped presets): its presets are listed by name. Presets in
    later folders are listed as ``user/<name>``, so they can never shadow a shipped preset; between
    later folders, the first one holding a name wins. Missing folders are skipped. Files are not parsed
    here (a broken file still lists and reports its error when loaded).
    """
    out: dict[str, Path] = {}
    for i, d in enumerate(dirs):
        folder = Path(d)
        if not folder.is_dir():
            continue
        # one directory read (the UI lists often); is_file() follows links like Path.is_file()
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if e.name.endswith((".yaml", ".yml"))), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            try:
                if not e.is_file():
                    continue
            except OSError:
                continue
            f = folder / e.name
            try:
                stem = validate_preset_name(f.stem)
            except ProCacheError:
                continue
            key = stem if i == 0 else USER_PREFIX + stem
            out.setdefault(key, f)
    return out


def replace(preset: Preset, **changes: Any) -> Preset:
    """``dataclasses.replace`` with validation (Preset is frozen)."""
    return dataclasses.replace(preset, **changes)


__all__ = ["PRESET_VERSION", "MAX_PRESET_BYTES", "USER_PREFIX", "Preset", "parse_preset_text", "load_preset",
           "dump_preset", "save_preset", "list_presets", "shipped_presets_dir", "validate_preset_name", "typed_actions", "MAX_STEPS"]
