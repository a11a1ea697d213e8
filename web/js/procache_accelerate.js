// "ProCache: accelerate this workflow": inserts a ProCache Apply before every sampler's MODEL input of
// the open workflow, subgraphs included, by the rule of accelerate_rule.js (docs/accelerate.md; the
// headless twin is scripts/accelerate_workflow.py).
//
// Reached from the top menu (Extensions > ProCache), the canvas right-click menu and the command
// palette / keybinding settings (command id COMMAND_ID). One undo step: Ctrl+Z restores the graph.
// Refused input (no sampler, node types this ComfyUI lacks) shows a toast and changes nothing.
//
// Only public front-end APIs: app.registerExtension (commands, menuCommands, getCanvasMenuItems),
// LiteGraph.createNode, graph.add / getNodeById / getLink, node.connect, subgraph input slots'
// connect, the workflow's changeTracker (beforeChange / afterChange / undo) and the toast service.
import { app } from "../../../scripts/app.js";
import { AccelerateError, APPLY, applyPos, graphsOf, plan } from "./accelerate_rule.js";

export const EXTENSION_NAME = "procache.Accelerate";
export const COMMAND_ID = "ProCache.AccelerateWorkflow";
const LABEL = "ProCache: accelerate this workflow";
const SUBGRAPH_INPUT_ID = -10;

function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add?.({ severity, summary, detail, life: 6000 });
}

function rootGraph() {
  return app.rootGraph ?? app.graph;
}

function knownType(type) {
  return Boolean(LiteGraph?.registered_node_types?.[type]);
}

function tracker() {
  return app.extensionManager?.workflow?.activeWorkflow?.changeTracker ?? null;
}

function capture(t) {
  if (!t) return;
  if (typeof t.captureCanvasState === "function") t.captureCanvasState();
  else t.checkState?.();
}

function graphOf(root, id) {
  if (id === "root") return root;
  return root.subgraphs?.get?.(id) ?? null;
}

function inputLink(graph, node, slot) {
  const viaNode = node.getInputLink?.(slot);
  if (viaNode) return viaNode;
  const input = node.inputs?.[slot];
  return input ? graph.getLink?.(input.link) ?? null : null;
}

// One insertion on the live graph: origin -> Apply -> sampler (any reroutes on the old link are kept).
function insertApply(root, ins, samplerJson) {
  const graph = graphOf(root, ins.graph);
  if (!graph) throw new Error(`subgraph ${ins.graph} not found`);
  const sampler = graph.getNodeById(ins.nodeId);
  if (!sampler) throw new Error(`node ${ins.nodeId} not found`);
  const link = inputLink(graph, sampler, ins.slot);
  if (!link) throw new Error(`node ${ins.nodeId} input ${ins.name} has no link`);
  const apply = LiteGraph.createNode(APPLY);
  if (!apply) throw new Error("this ComfyUI has no ProCacheApply node");
  apply.pos = applyPos(samplerJson);
  graph.add(apply);
  const after = link.parentId ?? undefined;
  if (Number(link.origin_id) === SUBGRAPH_INPUT_ID) {
    const slot = (graph.inputs ?? graph.inputNode?.slots)?.[link.origin_slot];
    if (!slot?.connect) throw new Error(`subgraph input ${link.origin_slot} not found`);
    slot.connect(apply.inputs[0], apply, after);
  } else {
    const origin = graph.getNodeById(link.origin_id);
    if (!origin) throw new Error(`node ${link.origin_id} not found`);
    origin.connect(link.origin_slot, apply, 0, after);
  }
  apply.connect(0, sampler, ins.slot);
  return apply;
}

function samplerJsonOf(before, ins) {
  const g = graphsOf(before).find(([id]) => id === ins.graph)?.[1];
  return g?.nodes?.find((n) => n.id === ins.nodeId) ?? {};
}

// Runs the command; resolves to {inserted, skipped, error} (also what the tests read).
export async function accelerateWorkflow() {
  const root = rootGraph();
  if (!root) return { inserted: 0, error: "no graph" };
  const before = root.serialize();
  let p;
  try {
    p = plan(before, knownType);
  } catch (err) {
    const message = err instanceof AccelerateError ? err.message : `unexpected error: ${err}`;
    toast("error", "ProCache: workflow not changed", message);
    return { inserted: 0, error: message };
  }
  if (!p.insert.length) {
    const why = p.skipped.length ? p.skipped.map((s) => `node ${s.node} ${s.name}: ${s.reason}`).join("; ") : "";
    toast("info", "ProCache", `Nothing to insert (${p.samplers} sampler(s)${why ? ": " + why : ""}).`);
    return { inserted: 0, skipped: p.skipped.length, error: null };
  }
  const t = tracker();
  capture(t); // the undo step starts from the graph as it is now
  t?.beforeChange?.();
  let failure = null;
  try {
    for (const ins of p.insert) insertApply(root, ins, samplerJsonOf(before, ins));
  } catch (err) {
    failure = err;
  } finally {
    t?.afterChange?.();
  }
  if (!failure) {
    // the rule applied to the result must find nothing left to do
    try {
      if (plan(root.serialize(), knownType).insert.length) failure = new Error("some inputs were not reached");
    } catch (err) {
      failure = err;
    }
  }
  if (failure) {
    // put the graph back as it was (the front end's own undo path loads a serialized graph the same way)
    await app.loadGraphData(before, false, false, app.extensionManager?.workflow?.activeWorkflow ?? null);
    toast("error", "ProCache: workflow not changed", String(failure?.message ?? failure));
    return { inserted: 0, error: String(failure?.message ?? failure) };
  }
  app.canvas?.setDirty?.(true, true);
  root.setDirtyCanvas?.(true, true);
  const where = new Set(p.insert.map((i) => i.graph));
  const sub = [...where].filter((g) => g !== "root").length;
  toast("success", "ProCache", `Inserted ${p.insert.length} ProCache Apply` +
    (sub ? ` (${sub} subgraph${sub > 1 ? "s" : ""})` : "") +
    (p.skipped.length ? `; ${p.skipped.length} input(s) left alone` : "") + ". Ctrl+Z undoes it.");
  return { inserted: p.insert.length, skipped: p.skipped.length, error: null };
}

const ALREADY = (app.extensions ?? []).some((e) => e?.name === EXTENSION_NAME);
if (!ALREADY) app.registerExtension({
  name: EXTENSION_NAME,
  commands: [{
    id: COMMAND_ID,
    label: LABEL,
    icon: "pi pi-bolt",
    function: () => accelerateWorkflow(),
  }],
  menuCommands: [{ path: ["Extensions", "ProCache"], commands: [COMMAND_ID] }],
  getCanvasMenuItems() {
    return [null, { content: "ProCache: accelerate this workflow", callback: () => { accelerateWorkflow(); } }];
  },
});
