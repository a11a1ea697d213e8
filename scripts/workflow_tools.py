"""Small edits of API-format prompts shared by the demo, the calibration CLI and the benchmarks."""
from __future__ import annotations

import copy

PACK_NODE_TYPES = {"ProCacheApply", "ProCacheScheduleLoader", "ProCacheSelectiveSettings", "ProCacheStats"}
SAMPLER_TYPES = {"KSampler", "KSamplerAdvanced"}


class WorkflowError(ValueError):
    """The workflow lacks something the tool needs; the message says what to add."""


def nodes_of(prompt: dict, *class_types: str) -> list[str]:
    return sorted((nid for nid, n in prompt.items() if n.get("class_type") in class_types), key=str)


def without_procache(prompt: dict) -> dict:
    """The same graph with every ProCache Apply bypassed (its consumers take its input MODEL)."""
    p = copy.deepcopy(prompt)
    applies = {nid: n for nid, n in p.items() if n["class_type"] == "ProCacheApply"}
    if not applies:
        raise WorkflowError("the workflow has no ProCacheApply node: add ProCache Apply between the model and the sampler")
    for node in p.values():
        for name, val in node["inputs"].items():
            while isinstance(val, list) and len(val) == 2 and str(val[0]) in applies:
                val = applies[str(val[0])]["inputs"]["model"]
            node["inputs"][name] = val
    return {nid: n for nid, n in p.items() if n["class_type"] not in PACK_NODE_TYPES}


def sampler_node(prompt: dict) -> str:
    found = nodes_of(prompt, *SAMPLER_TYPES)
    if len(found) != 1:
        raise WorkflowError(f"expected exactly one KSampler/KSamplerAdvanced node, found {len(found)}")
    return found[0]


def sampler_steps(prompt: dict) -> int:
    """Number of denoising steps the sampler will run (KSamplerAdvanced's start/end respected)."""
    node = prompt[sampler_node(prompt)]["inputs"]
    steps = int(node["steps"])
    if "start_at_step" in node:
        steps = min(steps, int(node.get("end_at_step", steps))) - int(node["start_at_step"])
    return steps


def set_seed(prompt: dict, seed: int) -> dict:
    node = prompt[sampler_node(prompt)]["inputs"]
    node["noise_seed" if "noise_seed" in node else "seed"] = seed
    return prompt


def set_schedule_text(prompt: dict, actions: str) -> dict:
    loaders = nodes_of(prompt, "ProCacheScheduleLoader")
    if not loaders:
        raise WorkflowError("the workflow has no ProCacheScheduleLoader node: add ProCache Schedule Loader")
    for nid in loaders:
        prompt[nid]["inputs"]["schedule_text"] = actions
    return prompt


def ensure_save_latent(prompt: dict, prefix: str) -> dict:
    """Makes the sampler's LATENT land on disk through the host's SaveLatent, keeping other outputs."""
    sid = sampler_node(prompt)
    saves = [nid for nid in nodes_of(prompt, "SaveLatent") if prompt[nid]["inputs"].get("samples") == [sid, 0]]
    if not saves:
        prompt["procache_save_latent"] = {"class_type": "SaveLatent",
                                          "inputs": {"samples": [sid, 0], "filename_prefix": prefix}}
    else:
        for nid in saves:
            prompt[nid]["inputs"]["filename_prefix"] = prefix
    return prompt


def only_latent_outputs(prompt: dict) -> dict:
    """Drops image decoding/saving so repeated calibration runs spend time on sampling alone."""
    drop = {nid for nid, n in prompt.items() if n["class_type"] in ("SaveImage", "PreviewImage")}
    changed = True
    while changed:  # drop nodes that only fed dropped nodes (e.g. VAEDecode)
        changed = False
        used = {str(v[0]) for nid, n in prompt.items() if nid not in drop
                for v in n["inputs"].values() if isinstance(v, list) and len(v) == 2}
        for nid, n in prompt.items():
            if nid not in drop and nid not in used and n["class_type"] in ("VAEDecode", "VAELoader"):
                drop.add(nid)
                changed = True
    return {nid: n for nid, n in prompt.items() if nid not in drop}
