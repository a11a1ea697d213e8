"""Presets: YAML round trips, fuzzed malformed input, listing, and every shipped preset."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from procache_core import presets
from procache_core.errors import ProCacheError, ScheduleError
from procache_core.presets import (Preset, dump_preset, list_presets, load_preset, parse_preset_text, save_preset,
                                   shipped_presets_dir, validate_preset_name)
from procache_core.schedule import Schedule
from procache_core.settings import ScoreWeights, SelectiveSettings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(shipped_presets_dir().glob("*.yaml"))
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", fullmatch=True)
unit = st.floats(0.0, 1.0, allow_nan=False)
selectives = st.builds(
    SelectiveSettings, enabled=st.booleans(), depth_fraction=unit, ratio=unit,
    start_block=st.none() | st.integers(-40, 40),
    weights=st.builds(ScoreWeights, **{k: st.floats(0.0, 100.0) for k in ScoreWeights.__dataclass_fields__}))
scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=40))
provenances = st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,11}", fullmatch=True), scalars, max_size=6)
schedules = st.text(alphabet="FCS", max_size=60).map(lambda s: Schedule.from_string("F" + s))
preset_strategy = st.builds(
    Preset, name=names, schedule=schedules,
    family=st.from_regex(r"[a-z0-9_.-]{1,32}", fullmatch=True),
    model=st.text(st.characters(min_codepoint=32, blacklist_categories=("Cs",)), max_size=60),
    selective=selectives, provenance=provenances)


def valid_mapping() -> dict:
    return {"version": 1, "name": "base", "family": "pixart", "model": "PixArt-alpha", "steps": 6,
            "actions": "FCSC FC", "selective": {"enabled": True, "ratio": 0.3, "depth_fraction": 0.25},
            "provenance": {"source": "test", "budget": 2, "date": "2026-01-01"}}


def assert_good_error(exc: ProCacheError) -> None:
    msg = str(exc)
    assert isinstance(exc, ProCacheError)
    assert exc.field and f"'{exc.field}'" in msg, msg
    assert exc.fix and "Fix:" in msg, msg


# -- round trips ----------------------------------------------------------------------------------
def test_round_trip_keeps_yaml_line_break_characters():
    """NEL / LINE and PARAGRAPH SEPARATOR are line breaks to YAML: a raw one would fold to a space."""
    base = parse_preset_text(yaml.safe_dump(valid_mapping()))
    for text in ("\x85", "a\x85b", "x\u2028y", "\u2029", "PixArt-α"):
        p = dataclasses.replace(base, model=text)
        assert parse_preset_text(dump_preset(p)) == p


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset_strategy)
def test_dump_parse_round_trip(p):
    text = dump_preset(p)
    assert parse_preset_text(text) == p
    assert parse_preset_text(dump_preset(parse_preset_text(text))) == p


def test_save_load_round_trip(tmp_path):
    p = Preset.from_schedule_text("FCSC FCS FC", name="mine", family="flux")
    path = save_preset(p, tmp_path / "sub" / "mine.yaml")
    assert load_preset(path) == p and p.steps == 9
    assert not list((tmp_path / "sub").glob(".tmp-*"))


def test_presets_are_hashable_and_immutable():
    a, b = Preset.from_schedule_text("FC", name="x"), Preset.from_schedule_text("FC", name="x")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(Exception):
        a.name = "y"  # type: ignore[misc]
    assert presets.replace(a, name="y").name == "y"
    with pytest.raises(ProCacheError):
        presets.replace(a, name="bad/name")


def test_actions_as_list_and_defaults():
    p = parse_preset_text("name: x\nactions: [F, C, S, 'FC']\n")
    assert p.schedule.to_string() == "FCSFC" and p.version == 1 and p.family == "any"
    assert p.selective == SelectiveSettings() and p.provenance == {}


def test_yaml_dates_become_text():
    p = parse_preset_text("name: x\nactions: F\nprovenance: {date: 2026-01-31}\n")
    assert p.provenance["date"] == "2026-01-31"


def test_preset_validates_on_construction():
    s = Schedule.from_string("F")
    with pytest.raises(ProCacheError):
        Preset(name="bad name", schedule=s)
    with pytest.raises(ScheduleError):
        Preset(name="x", schedule="FC")  # type: ignore[arg-type]
    with pytest.raises(ScheduleError):
        Preset(name="x", schedule=s, version=2)
    with pytest.raises(ProCacheError):
        Preset(name="x", schedule=s, selective=SelectiveSettings(ratio=3.0))
    assert Preset(name="x", schedule=s, family="PixArt").family == "pixart"


# -- names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "flux-28-fast", "my_preset.v2", "A" * 64, "a..b"])
def test_good_names(name):
    assert validate_preset_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a b", "a" * 65, "ü", "a\\b", None, 3])
def test_bad_names(name):
    with pytest.raises(ProCacheError) as ei:
        validate_preset_name(name)
    assert ei.value.field == "name"


# -- malformed input ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, field", [
    ("", "preset"),
    ("- a\n- b\n", "preset"),
    ("name: [x\n", "yaml"),
    ("name: x\nactions: F\n\tbad: 1\n", "yaml"),
    ("when: 2026-13-45\n", "yaml"),
    ("x: !!python/object/apply:os.system ['true']\n", "yaml"),
    ("actions: F\n", "name"),
    ("name: x\n", "actions"),
    ("name: x\nactions: CF\n", "actions"),
    ("name: x\nactions: FXC\n", "actions"),
    ("name: x\nactions: 12\n", "actions"),
    ("name: x\nactions: [F, 3]\n", "actions[1]"),
    ("name: x\nactions: FC\nsteps: 3\n", "steps"),
    ("name: x\nactions: FC\nsteps: two\n", "steps"),
    ("name: x\nactions: F\nversion: 9\n", "version"),
    ("name: x\nactions: F\nversion: '1'\n", "version"),
    ("name: x\nactions: F\ncolour: red\n", "colour"),
    ("name: x\nactions: F\n1: 2\n", "1"),
    ("name: ../../etc\nactions: F\n", "name"),
    ("name: x\nactions: F\nfamily: 'a b'\n", "family"),
    ("name: x\nactions: F\nmodel: [1]\n", "model"),
    ("name: x\nactions: F\nselective: 3\n", "selective"),
    ("name: x\nactions: F\nselective: {ratio: 2}\n", "selective.ratio"),
    ("name: x\nactions: F\nselective: {ratio: .nan}\n", "selective.ratio"),
    ("name: x\nactions: F\nselective: {ratio: high}\n", "selective.ratio"),
    ("name: x\nactions: F\nselective: {enabled: maybe}\n", "selective.enabled"),
    ("name: x\nactions: F\nselective: {start_block: 2.5}\n", "selective.start_block"),
    ("name: x\nactions: F\nselective: {speed: 1}\n", "selective.speed"),
    ("name: x\nactions: F\nselective: {weights: {spatial: -1}}\n", "selective.weights.spatial"),
    ("name: x\nactions: F\nselective: {weights: {1: 2, a: 3}}\n", "selective.weights.1"),
    ("name: x\nactions: F\nselective: {weights: [1]}\n", "selective.weights"),
    ("name: x\nactions: F\nprovenance: [a]\n", "provenance"),
    ("name: x\nactions: F\nprovenance: {notes: [a, b]}\n", "provenance.notes"),
    ("name: x\nactions: F\nprovenance: {'a b': 1}\n", "provenance.a b"),
    ("name: x\nname: y\nactions: F\n", "name"),
    ("[" * 600, "yaml"),
    ("a: \x00\n", "yaml"),
])
def test_malformed_names_field(text, field):
    with pytest.raises(ProCacheError) as ei:
        parse_preset_text(text, "test.yaml")
    assert ei.value.field == field, str(ei.value)
    assert_good_error(ei.value)
    assert "test.yaml" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_errors_carry_line_numbers():
    with pytest.raises(ScheduleError) as ei:
        parse_preset_text("version: 1\nname: x\nactions: FC\nsteps: 5\n", "f.yaml")
    assert "line 4" in str(ei.value)
    with pytest.raises(ScheduleError) as ei:
        parse_preset_text("version: 1\nname: x\nactions: 'FC\n", "f.yaml")
    assert "line" in str(ei.value) and ei.value.field == "yaml"


def test_size_limit(tmp_path):
    big = "name: x\nactions: F\nprovenance: {notes: '" + "a" * (300 * 1024) + "'}\n"
    with pytest.raises(ScheduleError) as ei:
        parse_preset_text(big)
    assert ei.value.field == "preset" and "256 KiB" in str(ei.value)
    f = tmp_path / "big.yaml"
    f.write_text(big)
    with pytest.raises(ScheduleError):
        load_preset(f)


def test_load_missing_and_binary(tmp_path):
    with pytest.raises(ProCacheError) as ei:
        load_preset(tmp_path / "nope.yaml")
    assert ei.value.field == "preset"
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProCacheError):
        load_preset(f)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzzed_text_only_raises_procache_errors(text):
    try:
        p = parse_preset_text(text, "fuzz")
    except ProCacheError as exc:
        assert_good_error(exc)
    else:
        assert isinstance(p, Preset)


yaml_values = st.recursive(
    scalars | st.dates(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3),
    max_leaves=6)


@FAST
@given(st.sampled_from(list(valid_mapping())), yaml_values)
def test_structured_mutation_names_the_mutated_field(key, value):
    data = valid_mapping()
    data[key] = value
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    try:
        p = parse_preset_text(text, "mutated")
    except ProCacheError as exc:
        assert_good_error(exc)
        allowed = {key, "steps"} if key == "actions" else {key}
        assert exc.field.split(".")[0].split("[")[0] in allowed, (key, value, str(exc))
    else:
        assert isinstance(p, Preset)


@FAST
@given(st.sampled_from(list(valid_mapping())), st.text(max_size=30))
def test_raw_text_mutation(key, junk):
    lines = yaml.safe_dump(valid_mapping(), sort_keys=False).splitlines()
    lines = [f"{key}: {junk}" if ln.startswith(f"{key}:") else ln for ln in lines]
    try:
        parse_preset_text("\n".join(lines), "mutated")
    except ProCacheError as exc:
        assert_good_error(exc)


VALID_TEXT = yaml.safe_dump(valid_mapping(), sort_keys=False)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_truncated_and_extra_keys(data):
    text = VALID_TEXT
    cut = data.draw(st.integers(0, len(text)))
    try:
        parse_preset_text(text[:cut], "cut")
    except ProCacheError as exc:
        assert_good_error(exc)
    extra = data.draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(lambda k: k not in presets.KNOWN_KEYS))
    with pytest.raises(ProCacheError) as ei:
        parse_preset_text(text + f"{extra}: 1\n", "extra")
    read = next(iter(yaml.safe_load(f"{extra}: 1")))   # YAML 1.1 reads e.g. `no` as False
    assert ei.value.field == (extra if isinstance(read, str) else repr(read))
    if not isinstance(read, str):
        assert "unquoted" in ei.value.problem


# -- listing --------------------------------------------------------------------------------------
def test_list_presets_user_names_never_shadow(tmp_path):
    shipped, user, user2 = tmp_path / "shipped", tmp_path / "user", tmp_path / "user2"
    for d in (shipped, user, user2):
        d.mkdir()
    p = Preset.from_schedule_text("FC", name="x")
    save_preset(p, shipped / "a.yaml")
    save_preset(p, user / "a.yaml")
    save_preset(p, user / "b.yml")
    save_preset(p, user2 / "b.yaml")
    (user / ".hidden.yaml").write_text("x")
    (user / "bad name.yaml").write_text("x")
    (user / "notes.txt").write_text("x")
    found = list_presets([shipped, user, user2, tmp_path / "missing"])
    assert found == {"a": shipped / "a.yaml", "user/a": user / "a.yaml", "user/b": user / "b.yml"}
    assert list_presets([user]) == {"a": user / "a.yaml", "b": user / "b.yml"}


# -- shipped presets ------------------------------------------------------------------------------
def test_shipped_dir_has_presets():
    names = {p.stem for p in SHIPPED}
    assert {"dit-xl2-ddim50-paper", "pixart-alpha-dpm20-paper", "flux-dev-50-paper"} <= names
    for fam in ("pixart-alpha-20", "pixart-sigma-20", "flux-28", "flux-50", "sd3-28", "wan-30", "wan-50"):
        for tier in ("fast", "balanced", "quality"):
            assert f"{fam}-{tier}" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_preset_validates(path):
    p = load_preset(path)
    assert p.name == path.stem
    prov = p.provenance
    assert {"source", "sampler", "budget", "objective", "date", "notes"} <= set(prov)
    assert prov["budget"] == p.schedule.counts()["full"]
    assert parse_preset_text(dump_preset(p)) == p


def test_paper_presets_match_the_paper():
    dit = load_preset(shipped_presets_dir() / "dit-xl2-ddim50-paper.yaml")
    assert dit.schedule.to_string() == "FCSC" * 6 + "FCS" * 4 + "FC" * 7
    assert dit.schedule.counts() == {"full": 17, "selective": 10, "cached": 23}
    px = load_preset(shipped_presets_dir() / "pixart-alpha-dpm20-paper.yaml")
    assert px.schedule.to_string() == "FFSCFSCFSCFSCFSCFSCF"
    assert px.schedule.counts() == {"full": 8, "selective": 6, "cached": 6}
    fl = load_preset(shipped_presets_dir() / "flux-dev-50-paper.yaml")
    assert fl.schedule.full_steps() == [0, 1, 2, 6, 12, 18, 24, 30, 35, 40, 45] and len(fl.schedule) == 50
    for p in (dit, px, fl):
        assert "macovaseas/ProCache" in p.provenance["source"]


@pytest.mark.parametrize("tier, share", [("fast", 0.25), ("balanced", 0.35), ("quality", 0.5)])
def test_generated_tiers(tier, share):
    for path in shipped_presets_dir().glob(f"*-{tier}.yaml"):
        p = load_preset(path)
        n = len(p.schedule)
        assert p.schedule.counts()["full"] == max(1, round(n * share))
        assert p.provenance["kind"] == "rule" and "rule_schedule" in p.provenance["source"]
        iv = p.schedule.intervals()
        assert all(a >= b for a, b in zip(iv, iv[1:]))


def test_no_shipped_preset_is_an_unscored_random_draw():
    for path in SHIPPED:
        p = load_preset(path)
        assert p.provenance.get("kind") in ("searched", "rule"), path.name
        assert "not yet proxy-scored" not in str(p.provenance), path.name
        assert p.noise is not None and len(p.noise) == len(p.schedule) and p.noise[0] < 0.05, path.name


def test_generator_is_deterministic_and_up_to_date():
    proc = subprocess.run([sys.executable, "scripts/generate_presets.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("bad", ["fast\n", "fast\nx", "\nfast"])
def test_names_with_a_newline_are_refused(bad):
    """``$`` matches before a trailing newline: names are checked whole (fullmatch)."""
    from procache_core.presets import validate_preset_name

    with pytest.raises(ProCacheError) as e:
        validate_preset_name(bad)
    assert e.value.field == "name"
    with pytest.raises(ScheduleError):
        presets.parse_preset_text(f"version: 1\nname: ok\nfamily: \"flux\\n\"\nactions: FCCF\n")
