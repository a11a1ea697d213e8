"""The official ComfyUI workflow templates (PyPI `comfyui-workflow-templates-json`, pinned) for the accelerate tests.

Installed by scripts/setup_templates.sh into .host/templates-json-<version>/ (never into the repository,
never into a host's venv); the fixtures run that script when the folder is missing.

"Local" templates are the index's entries that are not API (cloud) nodes: not named api_* and not marked
openSource: false. A template is *supported* when it samples a model: the accelerate rule finds a sampler
(KSampler / KSamplerAdvanced / SamplerCustom / a guider) in it. ProCache runs on every sampled model
(per-block for the families of docs/families.md, the model-level fallback for the rest), so that is every
local template with a sampler; `family` names which ProCache path its diffusion model takes, for the
results table only.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.123"
DEST = ROOT / ".host" / f"templates-json-{VERSION}"
TEMPLATES = DEST / "comfyui_workflow_templates_json" / "templates"

# Inputs whose COMBO lists the host's model files: value_not_in_list there means "model file missing".
MODEL_FILE_INPUT = re.compile(r"^(ckpt|unet|clip\d*|vae|lora|lora_name|model|control_net|clip_vision|"
                              r"upscale_model|style_model|gligen|audio_vae|text_encoder|vae_name\d*|"
                              r"latent_upscale_model|model_patch|unet_name\d*|clip_name\d*)(_name\d*)?$")
# A model file by its name: a value_not_in_list on any input whose value is such a file, or whose list is
# empty (a folder of model files the host has none of, e.g. audio_encoder_name, bg_removal_name), is a
# missing model file too.
MODEL_FILE_EXT = re.compile(r"\.(safetensors|sft|ckpt|pt|pth|bin|gguf|onnx)$", re.I)
MEDIA_EXT = re.compile(r"\.(png|jpe?g|webp|gif|bmp|tiff?|mp4|webm|mov|mkv|avi|gifv|wav|mp3|flac|ogg|m4a|"
                       r"opus|aac|glb|gltf|obj|fbx|stl|ply|npz|safetensors|latent|json)$", re.I)
TINY_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                         "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


def templates_dir() -> Path:
    if not (TEMPLATES / "index.json").is_file():
        subprocess.run(["bash", str(ROOT / "scripts" / "setup_templates.sh")], check=True,
                       env={**os.environ, "PROCACHE_TEMPLATES_VERSION": VERSION})
    return TEMPLATES


@lru_cache(maxsize=1)
def local_templates() -> list[str]:
    idx = json.loads((templates_dir() / "index.json").read_text(encoding="utf-8"))
    names = {t["name"] for cat in idx for t in cat.get("templates", [])
             if not t["name"].startswith("api_") and t.get("openSource", True) is not False}
    return sorted(n for n in names if (TEMPLATES / f"{n}.json").is_file())


def load(name: str) -> dict:
    return json.loads((templates_dir() / f"{name}.json").read_text(encoding="utf-8"))


def uses_subgraphs(wf: dict) -> bool:
    return bool((wf.get("definitions") or {}).get("subgraphs"))


FAMILIES = [  # (ProCache family, file-name pattern of its diffusion model), first match wins
    ("flux2", r"flux[-_.]?2|klein"), ("flux", r"flux|kontext"), ("chroma", r"chroma"),
    ("qwen_image", r"qwen[-_]?image"), ("wan", r"wan2|wan_2|wan[-_]"), ("z_image", r"z[-_]?image"),
    ("hidream", r"hidream"), ("hunyuan_video15", r"hunyuanvideo[-_]?1\.5|hunyuan_video_1\.5|hunyuanvideo1\.5"),
    ("hunyuan_image21", r"hunyuanimage[-_]?2\.1|hunyuan_image_2\.1"), ("hunyuan_video", r"hunyuan[-_]?video"),
    ("ltxv", r"ltx"), ("sd3", r"sd3|stable[-_]diffusion[-_]3"), ("lumina2", r"lumina|neta"),
    ("cosmos_predict2", r"cosmos[-_]predict2"), ("pixart", r"pixart"),
]
LOADERS = ("UNETLoader", "CheckpointLoaderSimple", "ImageOnlyCheckpointLoader", "UnetLoaderGGUF")


def model_files(wf: dict) -> list[str]:
    from procache_core.accelerate import _graphs

    out = []
    for _gid, g in _graphs(wf):
        for n in g.get("nodes") or []:
            if n.get("type") in LOADERS:
                vals = n.get("widgets_values") or []
                if vals and isinstance(vals[0], str):
                    out.append(vals[0])
    return out


def family(wf: dict) -> str:
    """Which ProCache path the template's diffusion model takes (by its model file name): a family of
    docs/families.md, or 'generic' (model-level fallback)."""
    names = " ".join(model_files(wf)).lower()
    for fam, pat in FAMILIES:
        if re.search(pat, names):
            return fam
    return "generic"


def placeholder_inputs(prompt: dict, input_dir: Path) -> int:
    """Creates the media files the prompt's Load* nodes name (a 1x1 PNG or an empty file) in the server's
    input folder, so that validation reaches the model files; returns how many were created."""
    made = 0
    for node in prompt.values():
        if not str(node.get("class_type", "")).startswith("Load"):
            continue
        for v in (node.get("inputs") or {}).values():
            if isinstance(v, str) and MEDIA_EXT.search(v.replace(" [input]", "")):
                rel = v.replace(" [input]", "").strip()
                p = (input_dir / rel).resolve()
                if input_dir.resolve() not in p.parents or p.exists():
                    continue
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(TINY_PNG if rel.lower().endswith(".png") else b"")
                made += 1
    return made


def validation_problems(resp_json: dict) -> list[str]:
    """What in a refused /prompt answer is not a missing model file (value_not_in_list on a model-file input,
    on a model file name, or against an empty file list)."""
    bad = []
    err = resp_json.get("error") or {}
    node_errors = resp_json.get("node_errors") or {}
    if err and not node_errors:
        return [f"{err.get('type')}: {err.get('message')} {err.get('details', '')}"]
    for nid, ne in node_errors.items():
        for e in ne.get("errors") or []:
            extra = e.get("extra_info") or {}
            name = extra.get("input_name", "")
            if e.get("type") == "value_not_in_list" and (
                    MODEL_FILE_INPUT.match(str(name)) or MODEL_FILE_EXT.search(str(extra.get("received_value", "")))
                    or str(e.get("details", "")).endswith("not in []")):
                continue
            bad.append(f"node {nid} ({ne.get('class_type')}): {e.get('type')} {name}: {e.get('details', '')}")
    return bad
