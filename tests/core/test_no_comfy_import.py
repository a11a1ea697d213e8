"""procache_core must never import ComfyUI: it is the host-independent half of the pack."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "procache_core"
MODULES = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")

_PROBE = r"""
import importlib, importlib.abc, sys

class NoComfy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "comfy" or name.startswith(("comfy.", "comfy_")) or name in ("comfy_api", "comfy_extras"):
            raise ImportError(f"procache_core imported {name!r}")
        return None

sys.meta_path.insert(0, NoComfy())
for mod in sys.argv[1:]:
    importlib.import_module(mod)
bad = sorted(m for m in sys.modules if m == "comfy" or m.startswith(("comfy.", "comfy_")))
assert not bad, bad
print("ok", len(sys.argv) - 1)
"""


def test_core_modules_import_without_comfy():
    mods = ["procache_core"] + [f"procache_core.{m}" for m in MODULES]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *mods], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {len(mods)}"


def test_core_source_has_no_comfy_import():
    pattern = re.compile(r"^\s*(import\s+comfy|from\s+comfy)", re.MULTILINE)
    offenders = [p.name for p in CORE.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders
