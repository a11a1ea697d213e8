"""nodes/gc_freeze.py: the start-up heap leaves the collector's walks; later garbage is still collected."""
from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def gcf():
    spec = importlib.util.spec_from_file_location("procache_gc_freeze", ROOT / "nodes" / "gc_freeze.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    gc.unfreeze()


@pytest.mark.parametrize("value,expected", [(None, True), ("1", True), ("0", False), ("off", False),
                                            ("False", False), ("yes", True)])
def test_switch(gcf, monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(gcf.ENV, raising=False)
    else:
        monkeypatch.setenv(gcf.ENV, value)
    assert gcf.enabled() is expected


def test_off_leaves_the_collector_alone(gcf, monkeypatch):
    monkeypatch.setenv(gcf.ENV, "0")
    gc.unfreeze()
    assert gcf.freeze_startup_heap()["frozen"] is False
    assert gc.get_freeze_count() == 0


class _Node:
    def __init__(self) -> None:
        self.other = None


def test_freezes_what_exists_and_still_collects_later_cycles(gcf, monkeypatch):
    monkeypatch.delenv(gcf.ENV, raising=False)
    gc.unfreeze()
    before = _Node()
    out = gcf.freeze_startup_heap()
    assert out["frozen"] and out["objects"] == gc.get_freeze_count() > 1000
    assert not any(o is before for o in gc.get_objects())  # frozen objects are no longer walked
    # a reference cycle made after the freeze is garbage the collector still finds
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None
