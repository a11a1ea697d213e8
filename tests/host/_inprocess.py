"""In-process access to the host and the pack for adapter unit tests (no server).

Imports ComfyUI's `comfy` package on the CPU (scripts/host_inprocess.py) and the pack under the
package name `procache_pack`, the way the host imports it (relative imports, mangled name).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_pack():
    sys.path.insert(0, str(ROOT / "scripts"))
    from host_inprocess import use_host

    use_host()
    return import_pack()


def import_pack():
    """The pack as ``procache_pack``, without a host (what needs none can be tested host-free)."""
    if "procache_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("procache_pack", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["procache_pack"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["procache_pack"]


class FakePatcher:
    """Just what adapters call on a ModelPatcher: object patches and model_options."""

    def __init__(self, diffusion_model):
        import types

        self.model = types.SimpleNamespace(diffusion_model=diffusion_model)
        self.object_patches: dict = {}
        self.model_options: dict = {"transformer_options": {}}

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        import comfy.model_patcher

        self.model_options = comfy.model_patcher.set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index=transformer_index)

    def patched(self):
        """Context manager: object patches set on the diffusion model (paths without 'diffusion_model.')."""
        import contextlib

        import comfy.utils

        @contextlib.contextmanager
        def cm():
            old = {}
            for k, v in self.object_patches.items():
                old[k] = comfy.utils.set_attr(self.model, k, v)
            try:
                yield
            finally:
                for k, v in old.items():
                    comfy.utils.set_attr(self.model, k, v)
                    # drop the instance attribute set_attr left behind (restores the class method)
                    parts = k.split(".")
                    obj = self.model
                    for p in parts[:-1]:
                        obj = getattr(obj, p)
                    obj.__dict__.pop(parts[-1], None)
        return cm()
