"""Families that register themselves (nodes/adapters/registry.py), in process on the real host.

A registered family is detected after every family of adapters/__init__.py (never shadows one), is built
by its own factory, shows in the supported-families text, and a detector that raises counts as no match
(Apply on an unknown network must step back to the model-level fallback, not fail).
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
    from procache_pack.nodes.schedule_loader import available_presets

    names = set(A.SUPPORTED_FAMILIES) | set(registry.families()) | {A.GENERIC}
    assert {"pixart", "sd3", "wan", "z_image", "hunyuan_video15", "cosmos_predict2"} <= names
    shipped = set(available_presets())
    missing = {n: preset_name_for(n) for n in names if preset_name_for(n) not in shipped}
    assert not missing, missing
