// The rule of "ProCache: accelerate this workflow", on UI-format workflow JSON (root graph and
// every subgraph definition). The same rule as procache_core/accelerate.py (plan_ui / accelerate_ui),
// which scripts/accelerate_workflow.py runs headless; docs/accelerate.md states it, and
// tests/web/test_accelerate_command.py runs both on the real templates and compares the results.
//
// No imports and no side effects: the front end loads every file of web/js as an extension module, and
// this one only exports functions (procache_accelerate.js uses them on the live graph).

export const APPLY = "ProCacheApply";
export const SAMPLERS = ["KSampler", "KSamplerAdvanced", "SamplerCustom"];
export const SKIP_MODES = [2, 4]; // muted (never), bypassed
export const FRONTEND_ONLY = ["Reroute", "Note", "MarkdownNote", "PrimitiveNode"];
export const APPLY_POS_OFFSET = [-30, -290];
export const APPLY_SIZE = [320, 250];

export class AccelerateError extends Error {}

function isObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

// Every subgraph definition (root `definitions` and nested ones), each once.
export function subgraphsOf(wf) {
  const out = [];
  const seen = new Set();
  const stack = [wf];
  while (stack.length) {
    const g = stack.pop();
    const defs = (isObject(g.definitions) ? g.definitions.subgraphs : null) ?? [];
    for (const sg of Array.isArray(defs) ? defs : []) {
      if (isObject(sg) && !seen.has(sg.id)) {
        seen.add(sg.id);
        out.push(sg);
        stack.push(sg);
      }
    }
  }
  return out;
}

export function graphsOf(wf) {
  return [["root", wf], ...subgraphsOf(wf).map((sg) => [String(sg.id), sg])];
}

function linkFields(link) {
  if (Array.isArray(link) && link.length >= 6) {
    return { id: link[0], origin_id: link[1], origin_slot: link[2], target_id: link[3], target_slot: link[4],
      type: link[5] };
  }
  if (isObject(link) && "id" in link) return link;
  return null;
}

function linksById(graph) {
  const out = new Map();
  for (const link of graph.links ?? []) {
    const f = linkFields(link);
    if (f) out.set(f.id, f);
  }
  return out;
}

function isSamplingNode(node) {
  if (SAMPLERS.includes(node.type)) return true;
  return (node.outputs ?? []).some((o) => isObject(o) && o.type === "GUIDER");
}

function modelInputs(node) {
  const out = [];
  (node.inputs ?? []).forEach((inp, k) => {
    if (isObject(inp) && inp.type === "MODEL") out.push([k, inp]);
  });
  return out;
}

// Whether a ProCache Apply feeds this link, directly or through MODEL -> MODEL nodes of this graph.
function fedByApply(nodes, links, linkId) {
  const seen = new Set();
  const todo = [linkId];
  while (todo.length) {
    const f = links.get(todo.pop());
    if (!f) continue;
    const src = nodes.get(f.origin_id);
    if (!src || seen.has(f.origin_id)) continue;
    seen.add(f.origin_id);
    if (src.type === APPLY) return true;
    const outs = src.outputs ?? [];
    const slot = f.origin_slot;
    const outType = Number.isInteger(slot) && slot >= 0 && slot < outs.length ? outs[slot]?.type : undefined;
    if (outType !== "MODEL" && outType !== "*" && src.type !== "Reroute") continue;
    for (const i of src.inputs ?? []) {
      if (isObject(i) && i.link != null && (i.type === "MODEL" || i.type === "*" || src.type === "Reroute")) {
        todo.push(i.link);
      }
    }
  }
  return false;
}

function check(wf) {
  if (!isObject(wf) || !Array.isArray(wf.nodes)) {
    throw new AccelerateError("not a ComfyUI workflow: expected a JSON object with a 'nodes' list (UI format) " +
      "or an API-format prompt ({id: {class_type, inputs}})");
  }
  for (const [gid, g] of graphsOf(wf)) {
    const where = gid === "root" ? "" : ` in subgraph ${gid}`;
    if (!Array.isArray(g.nodes)) throw new AccelerateError(`broken workflow: 'nodes'${where} is not a list`);
    for (const n of g.nodes) {
      if (!isObject(n) || !("id" in n) || typeof n.type !== "string") {
        throw new AccelerateError(`broken workflow: a node${where} has no 'id' or 'type': ` +
          JSON.stringify(n)?.slice(0, 80));
      }
      for (const key of ["inputs", "outputs"]) {
        if (n[key] != null && !Array.isArray(n[key])) {
          throw new AccelerateError(`broken workflow: node ${n.id}${where} has a '${key}' that is not a list`);
        }
      }
    }
    if (g.links != null && !Array.isArray(g.links)) {
      throw new AccelerateError(`broken workflow: 'links'${where} is not a list`);
    }
  }
}

// Node types of the workflow that neither the server (`known`) nor the front end have, sorted.
export function unknownTypes(wf, known) {
  const subIds = new Set(subgraphsOf(wf).map((sg) => String(sg.id)));
  const found = new Set();
  for (const [, g] of graphsOf(wf)) {
    for (const n of g.nodes ?? []) {
      const t = n.type;
      if (subIds.has(t) || FRONTEND_ONLY.includes(t) || known(t)) continue;
      found.add(t);
    }
  }
  return [...found].sort();
}

// What the rule inserts: {samplers, insert: [{graph, node, slot, name, link}], skipped: [...]}.
// Throws AccelerateError for refused input (the caller changes nothing then).
export function plan(wf, known = null) {
  check(wf);
  if (known) {
    const missing = unknownTypes(wf, known);
    if (missing.length) {
      throw new AccelerateError(`unknown node type(s) ${missing.join(", ")}: this ComfyUI does not have them ` +
        "(install the custom nodes or update ComfyUI), so the samplers cannot be told apart; nothing was changed");
    }
    if (!known(APPLY)) throw new AccelerateError("this ComfyUI has no ProCacheApply node: install ProCache first");
  }
  const out = { samplers: 0, insert: [], skipped: [] };
  for (const [gid, g] of graphsOf(wf)) {
    const nodes = new Map(g.nodes.map((n) => [n.id, n]));
    const links = linksById(g);
    for (const n of g.nodes) {
      if (!isSamplingNode(n)) continue;
      out.samplers += 1;
      for (const [k, inp] of modelInputs(n)) {
        const name = String(inp.name);
        const skip = (reason) => out.skipped.push({ graph: gid, node: String(n.id), name, reason });
        if (SKIP_MODES.includes(n.mode)) skip("muted or bypassed");
        else if (inp.link == null || !links.has(inp.link)) skip("not connected");
        else if (fedByApply(nodes, links, inp.link)) skip("already fed by ProCache Apply");
        else out.insert.push({ graph: gid, node: String(n.id), slot: k, name, link: inp.link, nodeId: n.id });
      }
    }
  }
  if (out.samplers === 0) {
    throw new AccelerateError("no sampler in this workflow: ProCache Apply goes before the MODEL input of " +
      "KSampler, KSamplerAdvanced, SamplerCustom or a guider (CFGGuider, BasicGuider, ...) of " +
      "SamplerCustomAdvanced; nothing was changed");
  }
  return out;
}

export function applyPos(sampler) {
  let pos = sampler.pos ?? [0, 0];
  if (!Array.isArray(pos)) pos = [pos["0"] ?? 0, pos["1"] ?? 0];
  return [Number(pos[0]) + APPLY_POS_OFFSET[0], Number(pos[1]) + APPLY_POS_OFFSET[1]];
}

function applyNode(id, pos, inLink, outLink) {
  return {
    id, type: APPLY, pos, size: [...APPLY_SIZE], flags: {}, order: 0, mode: 0,
    inputs: [{ name: "model", type: "MODEL", link: inLink },
      { name: "schedule", type: "PROCACHE_SCHEDULE", link: null },
      { name: "selective", type: "PROCACHE_SELECTIVE", link: null }],
    outputs: [{ name: "MODEL", type: "MODEL", links: [outLink], slot_index: 0 }],
    properties: { "Node name for S&R": APPLY },
  };
}

function maxIds(wf) {
  const nodeIds = [wf.last_node_id ?? 0, wf.state?.lastNodeId ?? 0];
  const linkIds = [wf.last_link_id ?? 0, wf.state?.lastLinkId ?? 0];
  for (const [, g] of graphsOf(wf)) {
    for (const n of g.nodes) if (Number.isInteger(n.id)) nodeIds.push(n.id);
    nodeIds.push(g.state?.lastNodeId ?? 0);
    for (const id of linksById(g).keys()) if (Number.isInteger(id)) linkIds.push(id);
    linkIds.push(g.state?.lastLinkId ?? 0);
  }
  return [Math.max(...nodeIds.map(Number)), Math.max(...linkIds.map(Number))];
}

// A copy of the workflow with the ProCache Apply nodes inserted, and the plan (same output as the
// Python accelerate_ui). The front end edits the live graph instead (procache_accelerate.js).
export function accelerateJson(wf, known = null) {
  const p = plan(wf, known);
  const out = structuredClone(wf);
  if (!p.insert.length) return { workflow: out, plan: p };
  const graphs = new Map(graphsOf(out));
  let [lastNode, lastLink] = maxIds(out);
  for (const ins of p.insert) {
    const g = graphs.get(ins.graph);
    const sampler = g.nodes.find((n) => n.id === ins.nodeId);
    lastNode += 1;
    lastLink += 1;
    for (const raw of g.links) {
      const f = linkFields(raw);
      if (f && f.id === ins.link) {
        if (Array.isArray(raw)) {
          raw[3] = lastNode;
          raw[4] = 0;
        } else {
          raw.target_id = lastNode;
          raw.target_slot = 0;
        }
        break;
      }
    }
    const objectForm = g.links.some((x) => isObject(x));
    g.links.push(objectForm
      ? { id: lastLink, origin_id: lastNode, origin_slot: 0, target_id: ins.nodeId, target_slot: ins.slot,
        type: "MODEL" }
      : [lastLink, lastNode, 0, ins.nodeId, ins.slot, "MODEL"]);
    g.nodes.push(applyNode(lastNode, applyPos(sampler), ins.link, lastLink));
    sampler.inputs[ins.slot].link = lastLink;
    ins.applyId = lastNode;
  }
  if ("last_node_id" in out || !("state" in out)) {
    out.last_node_id = lastNode;
    out.last_link_id = lastLink;
  }
  for (const [, g] of graphs) {
    if (isObject(g.state)) {
      g.state.lastNodeId = Math.max(Number(g.state.lastNodeId ?? 0), lastNode);
      g.state.lastLinkId = Math.max(Number(g.state.lastLinkId ?? 0), lastLink);
    }
  }
  return { workflow: out, plan: p };
}

// The plan in the shape of the Python Plan.as_dict() (what the comparison test compares).
export function planDict(p) {
  return {
    samplers: p.samplers,
    insert: p.insert.map(({ graph, node, slot, name }) => ({ graph, node, slot, name })),
    skipped: p.skipped,
  };
}
