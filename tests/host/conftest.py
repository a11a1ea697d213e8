"""Fixtures that run the real ComfyUI server (installed by scripts/setup_host.sh) with this pack loaded."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_client import COMFY_DIR, VENV_PY, ComfyClient, ComfyServer  # noqa: E402


def ensure_tiny_models() -> None:
    """Builds the seeded tiny models once; later calls find them up to date in milliseconds."""
    subprocess.run([str(VENV_PY), str(ROOT / "scripts" / "make_tiny_models.py"), "--comfy", str(COMFY_DIR)],
                   check=True)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> ComfyClient:
    """A client of one real ComfyUI server shared by the session (`.server` gives its log)."""
    if not (COMFY_DIR / "main.py").exists():
        pytest.fail("ComfyUI host missing: run `make test` (it runs scripts/setup_host.sh first)")
    ensure_tiny_models()
    srv = ComfyServer(workdir=tmp_path_factory.mktemp("comfy")).start()
    try:
        yield srv.client()
    finally:
        srv.stop()
