"""The family registry (nodes/adapters/registry.py), in process on the real host.

Every family registers itself from its own file; detection asks them in an explicit order (priority, then
name: the Flux-block families, Qwen-Image and LTX-Video first, as always); a registered family is built by
its own factory, and the supported-families text, the "auto" presets and ProCache Apply's description
(English, and the zh locale file) derive from the rows, so a new family's file is all they need. A
detector that raises counts as no match (Apply on an unknown network must step back to the model-level
fallback, not fail).
"""
from __future__ import annotations

import pytest
import torch

from _inprocess import FakePatcher, load_pack

pack = load_pack()
from procache_pack.nodes import adapters as A  # noqa: E402
from procache_pack.nodes.adapters import registry  # noqa: E402


class _Net(torch.nn.Module):
    """A network no built-in family claims."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])


class _Adapter(A.FamilyAdapter):
    family = "procache_test_family"


@pytest.fixture
def registered():
    before = registry.families()  # the shipped family files first, as in a server
    yield
    registry._FAMILIES.clear()
    registry._FAMILIES.update(before)


def test_registered_family_is_detected_and_built(registered):
    net = _Net()
    assert A.detect_family(FakePatcher(net)) == A.GENERIC
    registry.register("procache_test_family", "Test family", lambda dm, cfg: isinstance(dm, _Net),
                      lambda dm, name: _Adapter(dm))
    assert A.detect_family(FakePatcher(net)) == "procache_test_family"
    adapter = A.adapter_for(FakePatcher(net))
    assert type(adapter) is _Adapter and adapter.dm is net
    assert "Test family" in A.supported_text()


def test_raising_detector_is_no_match(registered):
    def broken(dm, cfg):
        raise AttributeError("a host class lost an attribute")

    registry.register("procache_test_broken", "Broken", broken, lambda dm, name: _Adapter(dm))
    assert A.detect_family(FakePatcher(_Net())) == A.GENERIC
    assert type(A.adapter_for(FakePatcher(_Net()))).__name__ == "GenericAdapter"


def test_every_family_has_a_shipped_auto_preset():
    """"auto" on ProCache Apply resolves, for every family the pack detects, to a preset file it ships."""
    from procache_pack.nodes.auto_preset import preset_name_for
    from procache_pack.nodes.preset_files import available_presets

    names = set(registry.families()) | {A.GENERIC}
    assert {"flux", "flux2", "chroma", "qwen_image", "ltxv", "pixart", "sd3", "wan", "z_image", "hunyuan_video15",
            "cosmos_predict2"} <= names
    shipped = set(available_presets())
    missing = {n: preset_name_for(n) for n in names if preset_name_for(n) not in shipped}
    assert not missing, missing


# -- derived lists ----------------------------------------------------------------------------------------

FAMILY_FILES = {"flux": "flux", "flux2": "flux2", "chroma": "chroma", "qwen_image": "qwen_image", "ltxv": "ltxv",
                "pixart": "pixart", "sd3": "sd3", "wan": "wan", "z_image": "lumina", "lumina2": "lumina",
                "hunyuan_video": "hunyuan_video", "hunyuan_video15": "hunyuan_video",
                "hunyuan_image21": "hunyuan_video", "cosmos_predict2": "cosmos", "hidream": "hidream"}


def test_every_family_registers_from_its_own_file():
    """The families every supported host has are rows of the registry, each from its own family file (no
    central list left), and the supported list is exactly the registry, in detection order."""
    fams = registry.families()
    for name, module in FAMILY_FILES.items():
        assert name in fams, name
        assert fams[name].detect.__module__.rsplit(".", 1)[-1] == module, (name, fams[name].detect.__module__)
    assert not hasattr(A, "SUPPORTED_FAMILIES") and not hasattr(A, "_detect_more")
    assert A.supported_families() == {n: f.label for n, f in fams.items()}
    assert A.supported_text() == ", ".join(f.label for f in fams.values())
    order = [(f.priority, f.name) for f in fams.values()]
    assert order == sorted(order)
    # the families adapters/__init__.py used to detect first keep being asked first, in the same order
    assert list(fams)[:5] == ["flux", "flux2", "chroma", "qwen_image", "ltxv"]
    assert all(f.priority == registry.DEFAULT_PRIORITY for f in list(fams.values())[5:])


def test_auto_presets_are_the_registered_ones():
    from procache_pack.nodes.auto_preset import FALLBACK_KEY, FALLBACK_PRESET, family_presets, preset_name_for

    presets = family_presets()
    assert presets == {**{n: f.preset for n, f in registry.families().items() if f.preset}, FALLBACK_KEY: FALLBACK_PRESET}
    # what FAMILY_PRESETS listed by hand before the Flux-block families registered themselves
    assert {n: presets[n] for n in ("flux", "flux2", "chroma", "qwen_image", "ltxv")} == {
        "flux": "flux-28-balanced", "flux2": "flux-28-balanced", "chroma": "flux-28-balanced",
        "qwen_image": "flux-28-balanced", "ltxv": "wan-30-balanced"}
    assert preset_name_for("not_a_family") == FALLBACK_PRESET == "flux-28-balanced"


def test_toy_family_appears_everywhere_from_its_register_call(registered):
    """One register(...) call (what a new family file holds) is all the supported list, the "auto"
    preset and both Apply descriptions need."""
    from procache_pack.nodes.auto_preset import preset_name_for
    from procache_pack.nodes.family_text import apply_description, apply_description_zh

    registry.register("procache_toy", "Toy DiT 1.0", lambda dm, cfg: isinstance(dm, _Net),
                      lambda dm, name: _Adapter(dm), preset="wan-30-balanced", selective="toy MLPs")
    assert A.supported_families()["procache_toy"] == "Toy DiT 1.0" and "Toy DiT 1.0" in A.supported_text().split(", ")
    assert preset_name_for("procache_toy") == "wan-30-balanced"
    assert "; Toy DiT 1.0: toy MLPs; " in apply_description()  # by name: between PixArt and SD3
    assert "、Toy DiT 1.0、" in apply_description_zh()
    assert A.detect_family(FakePatcher(_Net())) == "procache_toy"


def test_priority_not_registration_order_decides_detection(registered):
    claim = lambda dm, cfg: isinstance(dm, _Net)  # noqa: E731
    registry.register("procache_b", "B", claim, lambda dm, name: _Adapter(dm))
    registry.register("procache_a", "A", claim, lambda dm, name: _Adapter(dm))
    assert A.detect_family(FakePatcher(_Net())) == "procache_a"  # same priority: by name
    registry.register("procache_c", "C", claim, lambda dm, name: _Adapter(dm), priority=5)
    assert A.detect_family(FakePatcher(_Net())) == "procache_c"


def test_default_priority_never_shadows_the_flux_families(registered):
    """A new family at the default priority whose detector also claims Flux networks is asked after
    flux / flux2 / chroma, as registered families always were."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "procache_test_nodes_families_reg", Path(__file__).resolve().parents[1] / "host_nodes" / "nodes_tiny_families.py")
    NF = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(NF)
    registry.register("procache_greedy", "Greedy", lambda dm, cfg: True, lambda dm, name: _Adapter(dm))
    assert A.detect_family(FakePatcher(NF.tiny_flux2_net(seed=0)[0])) == "flux2"
    assert A.detect_family(FakePatcher(NF.tiny_chroma_net(seed=0)[0])) == "chroma"
    assert A.detect_family(FakePatcher(NF.tiny_qwen_image_net(seed=0)[0])) == "qwen_image"
    assert A.detect_family(FakePatcher(_Net())) == "procache_greedy"


def test_register_refuses_what_the_description_cannot_show():
    with pytest.raises(ValueError, match="selective"):
        registry.register("procache_bad", "Bad", lambda dm, cfg: False, lambda dm, name: None, selective="a; b")
    with pytest.raises(ValueError, match="label"):
        registry.register("procache_bad", "", lambda dm, cfg: False, lambda dm, name: None)
    assert "procache_bad" not in registry.families()


def test_apply_description_lists_the_registered_families():
    from procache_pack.nodes.apply import ProCacheApply
    from procache_pack.nodes.family_text import apply_description

    text = ProCacheApply.define_schema().description
    assert text == apply_description()
    for fam in registry.families().values():
        assert fam.label in text and fam.selective and fam.selective in text, fam.name


def test_zh_locale_apply_description_is_current():
    """locales/zh/nodeDefs.json (served as is) holds what the registry derives; every shipped family
    is listed, those this host cannot load included (the same file serves every host)."""
    import json
    from pathlib import Path

    from procache_pack.nodes.family_text import apply_description_zh

    path = Path(__file__).resolve().parents[2] / "locales" / "zh" / "nodeDefs.json"
    got = json.loads(path.read_text(encoding="utf-8"))["ProCacheApply"]["description"]
    assert got == apply_description_zh(), "stale: run .venv/bin/python scripts/make_locales.py"
    for fam in registry.families().values():
        assert fam.label in got, fam.name
    for _, name, label in registry.unloaded():
        assert label in got, name
