"""Stand-in for torchaudio in the test venvs of the host matrix only (scripts/setup_hosts.sh copies it).

ComfyUI 0.8 and later import torchaudio while they start (the LTX audio VAE, through comfy/sd.py), and the
package registry has no torchaudio build for torch 2.14. The image and video families ProCache tests never
call it, so the import succeeds and every use raises a clear error naming what is missing.
"""
from __future__ import annotations

import sys
import types

_WHY = ("torchaudio is not installed in this ProCache test venv (no build for its torch); "
        "audio nodes cannot run here")


class _Missing:
    """Any name taken from the stand-in: calling it, or anything on it, raises."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name}: {_WHY}")

    def __getattr__(self, attr: str) -> "_Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __mro_entries__(self, bases):  # `class X(torchaudio.transforms.Foo)` still defines a class
        return (object,)


def _missing_submodule(module_name: str) -> None:
    module = sys.modules[module_name]
    module.__getattr__ = lambda attr: _Missing(f"{module_name}.{attr}")  # type: ignore[attr-defined]


__version__ = "0.0.0+procache-standin"
_missing_submodule(__name__)
