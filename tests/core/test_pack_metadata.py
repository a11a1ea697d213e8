"""The pack as the Comfy Registry sees it, without the host: licence, metadata, ignore list, generated examples.

`comfy node validate` needs the host's CLI venv: tests/host/test_comfy_node_validate.py."""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_registry_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert comfy["DisplayName"] == "ProCache"
    assert project["license"] == {"text": "GPL-3.0-or-later"}
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]
    assert "Version 3" in (ROOT / "LICENSE").read_text()[:300]
    assert project["urls"]["Bug Tracker"].endswith("/issues")
    assert (ROOT / ".github" / "workflows" / "publish.yml").is_file()


def test_comfyignore_keeps_the_zip_to_what_a_user_needs():
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".comfyignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for heavy in ("tests", "benchmarks", "scripts", ".host", ".venv", "docs", "api_workflows"):
        assert heavy in ignored, heavy
    for needed in ("nodes", "procache_core", "schedules", "web", "example_workflows", "__init__.py", "LICENSE"):
        assert needed not in ignored, needed


def test_example_workflows_are_generated_and_current():
    """example_workflows/ is what scripts/make_example_workflows.py writes (no hand edits drift)."""
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_example_workflows.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (ROOT / "example_workflows").iterdir())
    assert names == ["flux_dev_procache.json", "pixart_alpha_procache.json", "sd35_large_procache.json",
                     "wan21_t2v_procache.json"]
