"""Insert ProCache Apply before every sampler's MODEL input of a ComfyUI workflow.

The rule (docs/accelerate.md; web/js/accelerate_rule.js implements the same one for the front end's
"ProCache: accelerate this workflow" command, and a test runs both on the real templates and compares):

* A *sampling input* is a MODEL-typed input of a KSampler, KSamplerAdvanced or SamplerCustom node, or of
  any node with a GUIDER output (CFGGuider, BasicGuider, DualCFGGuider, ...: SamplerCustomAdvanced
  samples the guider's model), in the root graph and in every subgraph definition.
* Muted or bypassed nodes (mode 2 / 4) and unconnected inputs are left alone.
* An input already fed by a ProCache Apply, directly or through MODEL -> MODEL nodes (LoRA, ModelSampling*,
  Reroute, ...) of the same graph, is left alone: running the rule twice inserts nothing new.
* Every other sampling input gets its own ProCache Apply (default settings: preset auto) between the
  node that fed it and the input; nothing else in the graph changes.
* Refused, with the graph unchanged: something that is not a workflow, a workflow with no sampler, and
  (when the caller knows the server's node types) node types the server does not have.

Works on UI-format workflows (``nodes`` / ``links``, subgraphs in ``definitions.subgraphs``) and on
API-format prompts (``{id: {class_type, inputs}}``). Pure Python: no comfy import.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

APPLY = "ProCacheApply"
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom")
# Guider classes of the host, for API-format prompts without the server's node list (the UI format
# carries the output types, so there any node with a GUIDER output counts).
GUIDERS = ("CFGGuider", "BasicGuider", "DualCFGGuider")
SKIP_MODES = (2, 4)  # muted (never), bypassed
SUBGRAPH_INPUT = -10
# Nodes that live in the front end only (never sent to the server): always known.
FRONTEND_ONLY = ("Reroute", "Note", "MarkdownNote", "PrimitiveNode")
APPLY_POS_OFFSET = (-30.0, -290.0)  # the new node sits above and a little left of the sampler
APPLY_SIZE = (320.0, 250.0)


class AccelerateError(ValueError):
    """The workflow cannot be accelerated; the message names the problem and what to do."""


@dataclass
class Insertion:
    """One ProCache Apply to insert: before input ``slot`` (``name``) of ``node`` in ``graph``."""

    graph: str  # "root" or the subgraph definition's id
    node: Any
    slot: int
    name: str
    link: Any = None
    apply_id: Any = None

    def key(self) -> tuple:
        return (self.graph, str(self.node), self.slot)


@dataclass
class Plan:
    insert: list[Insertion] = field(default_factory=list)
    skipped: list[tuple[str, Any, str, str]] = field(default_factory=list)  # graph, node, input, reason
    samplers: int = 0

    def as_dict(self) -> dict:
        """Plain data, in the same shape as the JS rule's plan() (compared by the tests)."""
        return {"samplers": self.samplers,
                "insert": [{"graph": i.graph, "node": str(i.node), "slot": i.slot, "name": i.name}
                           for i in self.insert],
                "skipped": [{"graph": g, "node": str(n), "name": s, "reason": r} for g, n, s, r in self.skipped]}


# ---------------------------------------------------------------------------------------------- UI format

def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def is_api_prompt(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "class_type" in v for v in data.values()))


def _subgraphs(wf: dict) -> list[dict]:
    """Every subgraph definition (root ``definitions`` and nested ones), each once."""
    out: list[dict] = []
    seen: set = set()
    stack = [wf]
    while stack:
        g = stack.pop()
        for sg in ((g.get("definitions") or {}).get("subgraphs") or []):
            if isinstance(sg, dict) and sg.get("id") not in seen:
                seen.add(sg.get("id"))
                out.append(sg)
                stack.append(sg)
    return out


def _graphs(wf: dict) -> list[tuple[str, dict]]:
    return [("root", wf)] + [(str(sg.get("id")), sg) for sg in _subgraphs(wf)]


def _link_fields(link: Any) -> dict | None:
    """A link as {id, origin_id, origin_slot, target_id, target_slot, type} (array or object form)."""
    if isinstance(link, list) and len(link) >= 6:
        return {"id": link[0], "origin_id": link[1], "origin_slot": link[2], "target_id": link[3],
                "target_slot": link[4], "type": link[5]}
    if isinstance(link, dict) and "id" in link:
        return link
    return None


def _links_by_id(graph: dict) -> dict:
    out = {}
    for link in graph.get("links") or []:
        f = _link_fields(link)
        if f is not None:
            out[f["id"]] = f
    return out


def _is_sampling_node(node: dict) -> bool:
    if node.get("type") in SAMPLERS:
        return True
    return any(isinstance(o, dict) and o.get("type") == "GUIDER" for o in node.get("outputs") or [])


def _model_inputs(node: dict) -> list[tuple[int, dict]]:
    return [(k, i) for k, i in enumerate(node.get("inputs") or []) if isinstance(i, dict) and i.get("type") == "MODEL"]


def _fed_by_apply(graph: dict, nodes: dict, links: dict, link_id: Any) -> bool:
    """Whether a ProCache Apply feeds this link, directly or through MODEL -> MODEL nodes of this graph."""
    seen: set = set()
    todo = [link_id]
    while todo:
        f = links.get(todo.pop())
        if f is None:
            continue
        src = nodes.get(f["origin_id"])
        if src is None or f["origin_id"] in seen:
            continue  # the subgraph's input, or a node already looked at
        seen.add(f["origin_id"])
        if src.get("type") == APPLY:
            return True
        outs = src.get("outputs") or []
        slot = f["origin_slot"]
        out_type = outs[slot].get("type") if isinstance(slot, int) and 0 <= slot < len(outs) else None
        if out_type not in ("MODEL", "*") and src.get("type") != "Reroute":
            continue
        for i in src.get("inputs") or []:
            if isinstance(i, dict) and i.get("link") is not None and (
                    i.get("type") in ("MODEL", "*") or src.get("type") == "Reroute"):
                todo.append(i["link"])
    return False


def _check_ui(wf: Any) -> None:
    if not is_ui_workflow(wf):
        raise AccelerateError("not a ComfyUI workflow: expected a JSON object with a 'nodes' list (UI format) "
                              "or an API-format prompt ({id: {class_type, inputs}})")
    for gid, g in _graphs(wf):
        where = "" if gid == "root" else f" in subgraph {gid}"
        if not isinstance(g.get("nodes"), list):
            raise AccelerateError(f"broken workflow: 'nodes'{where} is not a list")
        for n in g["nodes"]:
            if not isinstance(n, dict) or "id" not in n or not isinstance(n.get("type"), str):
                raise AccelerateError(f"broken workflow: a node{where} has no 'id' or 'type': {str(n)[:80]}")
            for key in ("inputs", "outputs"):
                if n.get(key) is not None and not isinstance(n[key], list):
                    raise AccelerateError(f"broken workflow: node {n['id']}{where} has a '{key}' that is not a list")
        if g.get("links") is not None and not isinstance(g["links"], list):
            raise AccelerateError(f"broken workflow: 'links'{where} is not a list")


def unknown_types(wf: dict, known: Callable[[str], bool]) -> list[str]:
    """Node types of the workflow that neither the server (``known``) nor the front end have."""
    sub_ids = {str(sg.get("id")) for sg in _subgraphs(wf)}
    found = set()
    for _gid, g in _graphs(wf):
        for n in g.get("nodes") or []:
            t = n.get("type")
            if t in sub_ids or t in FRONTEND_ONLY or known(t):
                continue
            found.add(t)
    return sorted(found)


def plan_ui(wf: Any, known: Callable[[str], bool] | None = None) -> Plan:
    """What the rule inserts into a UI-format workflow; raises AccelerateError for refused input."""
    _check_ui(wf)
    if known is not None:
        missing = unknown_types(wf, known)
        if missing:
            raise AccelerateError(f"unknown node type(s) {', '.join(missing)}: this ComfyUI does not have them "
                                  "(install the custom nodes or update ComfyUI), so the samplers cannot be "
                                  "told apart; nothing was changed")
        if not known(APPLY):
            raise AccelerateError("this ComfyUI has no ProCacheApply node: install ProCache first")
    plan = Plan()
    for gid, g in _graphs(wf):
        nodes = {n["id"]: n for n in g["nodes"]}
        links = _links_by_id(g)
        for n in g["nodes"]:
            if not _is_sampling_node(n):
                continue
            plan.samplers += 1
            for k, inp in _model_inputs(n):
                name = str(inp.get("name"))
                if n.get("mode") in SKIP_MODES:
                    plan.skipped.append((gid, n["id"], name, "muted or bypassed"))
                elif inp.get("link") is None or inp["link"] not in links:
                    plan.skipped.append((gid, n["id"], name, "not connected"))
                elif _fed_by_apply(g, nodes, links, inp["link"]):
                    plan.skipped.append((gid, n["id"], name, "already fed by ProCache Apply"))
                else:
                    plan.insert.append(Insertion(gid, n["id"], k, name, inp["link"]))
    if plan.samplers == 0:
        raise AccelerateError("no sampler in this workflow: ProCache Apply goes before the MODEL input of "
                              "KSampler, KSamplerAdvanced, SamplerCustom or a guider (CFGGuider, BasicGuider, "
                              "...) of SamplerCustomAdvanced; nothing was changed")
    return plan


def _max_ids(wf: dict) -> tuple[int, int]:
    """The largest node and link ids anywhere (root and subgraphs share one id space)."""
    node_ids = [wf.get("last_node_id") or 0, (wf.get("state") or {}).get("lastNodeId") or 0]
    link_ids = [wf.get("last_link_id") or 0, (wf.get("state") or {}).get("lastLinkId") or 0]
    for _gid, g in _graphs(wf):
        node_ids += [n["id"] for n in g["nodes"] if isinstance(n["id"], int)]
        node_ids.append((g.get("state") or {}).get("lastNodeId") or 0)
        link_ids += [f for f in _links_by_id(g) if isinstance(f, int)]
        link_ids.append((g.get("state") or {}).get("lastLinkId") or 0)
    return max(int(x) for x in node_ids), max(int(x) for x in link_ids)


def apply_node(node_id: int, pos: list, in_link: Any, out_link: Any) -> dict:
    """A UI-format ProCache Apply node; its widgets take the node's defaults when the front end loads it."""
    return {"id": node_id, "type": APPLY, "pos": [float(pos[0]), float(pos[1])], "size": list(APPLY_SIZE),
            "flags": {}, "order": 0, "mode": 0,
            "inputs": [{"name": "model", "type": "MODEL", "link": in_link},
                       {"name": "schedule", "type": "PROCACHE_SCHEDULE", "link": None},
                       {"name": "selective", "type": "PROCACHE_SELECTIVE", "link": None}],
            "outputs": [{"name": "MODEL", "type": "MODEL", "links": [out_link], "slot_index": 0}],
            "properties": {"Node name for S&R": APPLY}}


def apply_pos(sampler: dict) -> list:
    pos = sampler.get("pos") or [0, 0]
    if isinstance(pos, dict):  # very old files: {"0": x, "1": y}
        pos = [pos.get("0", 0), pos.get("1", 0)]
    return [float(pos[0]) + APPLY_POS_OFFSET[0], float(pos[1]) + APPLY_POS_OFFSET[1]]


def accelerate_ui(wf: Any, known: Callable[[str], bool] | None = None) -> tuple[dict, Plan]:
    """A copy of the workflow with the plan's ProCache Apply nodes inserted, and the plan."""
    plan = plan_ui(wf, known)
    out = copy.deepcopy(wf)
    if not plan.insert:
        return out, plan
    graphs = dict(_graphs(out))
    last_node, last_link = _max_ids(out)
    for ins in plan.insert:
        g = graphs[ins.graph]
        sampler = next(n for n in g["nodes"] if n["id"] == ins.node)
        last_node += 1
        last_link += 1
        # the old link now ends at ProCache Apply (its origin, and any reroutes on it, stay as they were)
        for raw in g["links"]:
            f = _link_fields(raw)
            if f is not None and f["id"] == ins.link:
                if isinstance(raw, list):
                    raw[3], raw[4] = last_node, 0
                else:
                    raw["target_id"], raw["target_slot"] = last_node, 0
                break
        object_form = any(isinstance(x, dict) for x in g["links"])
        new = ({"id": last_link, "origin_id": last_node, "origin_slot": 0, "target_id": ins.node,
                "target_slot": ins.slot, "type": "MODEL"} if object_form
               else [last_link, last_node, 0, ins.node, ins.slot, "MODEL"])
        g["links"].append(new)
        g["nodes"].append(apply_node(last_node, apply_pos(sampler), ins.link, last_link))
        sampler["inputs"][ins.slot]["link"] = last_link
        ins.apply_id = last_node
    if "last_node_id" in out or "state" not in out:
        out["last_node_id"], out["last_link_id"] = last_node, last_link
    for _gid, g in graphs.items():
        st = g.get("state")
        if isinstance(st, dict):
            st["lastNodeId"] = max(int(st.get("lastNodeId") or 0), last_node)
            st["lastLinkId"] = max(int(st.get("lastLinkId") or 0), last_link)
    return out, plan


# --------------------------------------------------------------------------------------------- API format

def _api_is_sampling(cls: str, object_info: dict | None) -> list[str]:
    """The MODEL input names of a sampling class (empty for other classes)."""
    if cls in SAMPLERS:
        return ["model"]
    if object_info is not None and cls in object_info:
        info = object_info[cls]
        if "GUIDER" in (info.get("output") or []):
            names = []
            for section in ("required", "optional"):
                for name, spec in ((info.get("input") or {}).get(section) or {}).items():
                    if isinstance(spec, list) and spec and spec[0] == "MODEL":
                        names.append(name)
            return names
        return []
    return ["model"] if cls in GUIDERS else []


def _api_fed_by_apply(prompt: dict, ref: Any) -> bool:
    seen: set = set()
    while isinstance(ref, list) and len(ref) == 2 and str(ref[0]) in prompt and str(ref[0]) not in seen:
        seen.add(str(ref[0]))
        src = prompt[str(ref[0])]
        if src.get("class_type") == APPLY:
            return True
        ref = (src.get("inputs") or {}).get("model")  # MODEL -> MODEL patches name their input 'model'
    return False


def plan_api(prompt: Any, object_info: dict | None = None) -> Plan:
    if not is_api_prompt(prompt):
        raise AccelerateError("not an API-format prompt: expected {id: {class_type, inputs}}")
    if object_info is not None:
        missing = sorted({v["class_type"] for v in prompt.values() if v["class_type"] not in object_info})
        if missing:
            raise AccelerateError(f"unknown node type(s) {', '.join(missing)}: this ComfyUI does not have them "
                                  "(install the custom nodes or update ComfyUI); nothing was changed")
        if APPLY not in object_info:
            raise AccelerateError("this ComfyUI has no ProCacheApply node: install ProCache first")
    plan = Plan()
    for nid, node in prompt.items():
        names = _api_is_sampling(node["class_type"], object_info)
        if not names:
            continue
        plan.samplers += 1
        inputs = node.get("inputs") or {}
        for name in names:
            ref = inputs.get(name)
            if not (isinstance(ref, list) and len(ref) == 2):
                plan.skipped.append(("root", nid, name, "not connected"))
            elif _api_fed_by_apply(prompt, ref):
                plan.skipped.append(("root", nid, name, "already fed by ProCache Apply"))
            else:
                plan.insert.append(Insertion("root", nid, 0, name, ref))
    if plan.samplers == 0:
        raise AccelerateError("no sampler in this prompt: ProCache Apply goes before the model input of KSampler, "
                              "KSamplerAdvanced, SamplerCustom or a guider (CFGGuider, BasicGuider, ...); "
                              "nothing was changed")
    return plan


def _new_api_id(prompt: dict, taken: set) -> str:
    best = 0
    for k in list(prompt) + list(taken):
        for part in str(k).split(":"):
            if part.isdigit():
                best = max(best, int(part))
    return str(best + 1)


def accelerate_api(prompt: Any, object_info: dict | None = None) -> tuple[dict, Plan]:
    plan = plan_api(prompt, object_info)
    out = copy.deepcopy(prompt)
    taken: set = set()
    for ins in plan.insert:
        nid = _new_api_id(out, taken)
        taken.add(nid)
        out[nid] = {"class_type": APPLY, "inputs": {"model": list(ins.link)},
                    "_meta": {"title": "ProCache Apply"}}
        out[str(ins.node)]["inputs"][ins.name] = [nid, 0]
        ins.apply_id = nid
    return out, plan


def accelerate(data: Any, known_types: Iterable[str] | None = None,
               object_info: dict | None = None) -> tuple[dict, Plan, str]:
    """Either format: (new data, plan, "ui" | "api")."""
    if object_info is not None and known_types is None:
        known_types = object_info.keys()
    known = None if known_types is None else set(known_types).__contains__
    if is_ui_workflow(data):
        out, plan = accelerate_ui(data, known)
        return out, plan, "ui"
    if is_api_prompt(data):
        out, plan = accelerate_api(data, object_info)
        return out, plan, "api"
    raise AccelerateError("not a ComfyUI workflow: expected a JSON object with a 'nodes' list (UI format) or an "
                          "API-format prompt ({id: {class_type, inputs}})")
