"""The pack as the Comfy Registry sees it: `comfy node validate` (comfy-cli in the host's `.host/cli-venv`) clean.

The metadata, licence and ignore-list checks need no host: tests/core/test_pack_metadata.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY_CLI = ROOT / ".host" / "cli-venv" / "bin" / "comfy"


def test_comfy_node_validate_passes_without_warnings():
    if not COMFY_CLI.exists():
        pytest.fail(f"{COMFY_CLI} missing: run `bash scripts/setup_host.sh` (installs comfy-cli there)")
    r = subprocess.run([str(COMFY_CLI), "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "passed" in out.lower(), out
    assert "warning" not in out.lower() and "error" not in out.lower(), out
