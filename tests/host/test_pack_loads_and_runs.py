"""The pack loads into the real ComfyUI host, registers its nodes and runs a workflow end to end."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from workflows import pixart_prompt

ROOT = Path(__file__).resolve().parents[2]
PACK_NODES = {
    "ProCacheScheduleLoader": "ProCache Schedule Loader",
    "ProCacheApply": "ProCache Apply",
    "ProCacheSelectiveSettings": "Selective Compute Settings",
}


def test_object_info_lists_pack_nodes(comfy_server):
    info = comfy_server.object_info()
    for node_id, display in PACK_NODES.items():
        assert node_id in info, f"{node_id} not registered; server log:\n{comfy_server.server.log()[-3000:]}"
        assert info[node_id]["display_name"] == display
        assert info[node_id]["category"].startswith("ProCache")
        assert info[node_id]["python_module"].startswith("custom_nodes.ProCache")


def test_server_log_has_no_pack_import_error_or_warning(comfy_server):
    log = comfy_server.server.log()
    # start-up only: the server is shared by the session, and other tests provoke errors on purpose later
    startup = log.split("got prompt", 1)[0]
    lines = [ln for ln in startup.splitlines() if "ProCache" in ln and "ProCacheTestNodes" not in ln]
    bad = [ln for ln in lines if re.search(r"IMPORT FAILED|Traceback|Error|WARNING|warn", ln, re.I)]
    assert not bad, "pack problems at start-up:\n" + "\n".join(bad)
    assert re.search(r"seconds: .*custom_nodes/ProCache$", log, re.M), "pack missing from the import-times list"


def test_workflow_runs_through_prompt_and_history(comfy_server):
    prompt = pixart_prompt(steps=4, width=512, height=512, prefix="foundation",
                           procache={"actions": "FCCF"})
    entry = comfy_server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success"
    latents = comfy_server.output_files(entry, "latents")
    assert len(latents) == 1 and latents[0].exists()


def test_root_package_imports_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('procache_pack', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['procache_pack'] = m; spec.loader.exec_module(m)\n"
        "assert m.WEB_DIRECTORY == './web' and callable(m.comfy_entrypoint)\n"
        "assert not hasattr(m, 'NODE_CLASS_MAPPINGS')\n"
        "assert not any(k == 'comfy' or k.startswith('comfy.') for k in sys.modules), 'comfy imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_requirements_never_list_torch():
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in reqs if r}
    assert names == {"numpy", "safetensors", "pyyaml"}


def test_pyproject_has_registry_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "ProCache" and comfy["Icon"]
    assert comfy["requires-comfyui"].startswith(">=0.3.75")
    assert data["project"]["license"]["text"] == "GPL-3.0-or-later"
    assert not any("torch" in d for d in data["project"]["dependencies"])
