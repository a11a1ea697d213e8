// ProCache front-end: a schedule strip on the "ProCache Schedule Loader" node and "Save as preset".
//
// Only public frontend APIs: app.registerExtension, beforeRegisterNodeDef, node callbacks
// (onNodeCreated, onConfigure, onDrawForeground), widget callbacks, node.addDOMWidget, node.addWidget,
// node.getOutputNodes / node.getInputNode, graph.nodes, the app's dialog and toast services
// (app.extensionManager), api.fetchApi. No globals, no shared stylesheet: the strip styles its own
// elements. Server side: nodes/routes.py (/procache/...).
//
// For tests and other extensions the strip's state is exposed
//   * on the DOM: <div class="procache-strip" data-node-id data-state="ready|loading|error"
//     data-cells="N" data-actions="FCS..." data-steps data-source-steps data-compute-fraction
//     data-speedup data-error> holding N <div class="procache-cell" data-step="i" data-action="F|C|S">
//     whose background is COLORS[action];
//   * on the node: node.procacheStrip = {state, actions, cells, steps, sourceSteps, computeFraction,
//     speedup, counts, error, colors}.
// The extension is registered as EXTENSION_NAME; other code reaches the helpers by importing this module.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const EXTENSION_NAME = "procache.ScheduleStrip";
const LOADER = "ProCacheScheduleLoader";
const PACK_NODES = new Set([LOADER, "ProCacheApply", "ProCacheSelectiveSettings", "ProCacheStats"]);

// Full = computed (blue), Selective = part recomputed (amber), Cached = reused (slate grey).
export const COLORS = { F: "#2f7de1", S: "#f0a020", C: "#5b6575" };
const LABELS = { F: "full", S: "selective", C: "cached" };
const STRIP_HEIGHT = 92;

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function nodesOf(graph) {
  return graph?.nodes ?? [];
}

// The node feeding input `name` of `node` (null when not connected).
function inputNode(node, name) {
  const slot = node.inputs?.findIndex((i) => i.name === name) ?? -1;
  if (slot < 0) return null;
  return node.getInputNode?.(slot) ?? null;
}

// The sampling steps this schedule will run with: a `steps` widget on the loader itself, else the
// first node downstream of it (Apply -> ... -> KSampler/BasicScheduler) that has one, else the
// single distinct `steps` value in the whole graph; null when unknown.
export function findSteps(node) {
  const own = widget(node, "steps");
  if (own && Number.isFinite(Number(own.value))) return Number(own.value);
  const graph = node.graph ?? app.graph;
  if (!graph) return null;
  for (const n of downstream(node, 8)) {
    const w = widget(n, "steps");
    if (w && Number.isFinite(Number(w.value))) return Number(w.value);
  }
  const values = new Set();
  for (const n of nodesOf(graph)) {
    const w = widget(n, "steps");
    if (w && Number.isFinite(Number(w.value))) values.add(Number(w.value));
  }
  return values.size === 1 ? [...values][0] : null;
}

// Nodes downstream of `node` (breadth first, up to `depth` links away).
function* downstream(node, depth = 8) {
  const graph = node.graph ?? app.graph;
  if (!graph) return;
  const seen = new Set([node.id]);
  let frontier = [node];
  for (let d = 0; d < depth && frontier.length; d++) {
    const next = [];
    for (const n of frontier) {
      for (let slot = 0; slot < (n.outputs?.length ?? 0); slot++) {
        for (const target of n.getOutputNodes?.(slot) ?? []) {
          if (!target || seen.has(target.id)) continue;
          seen.add(target.id);
          yield target;
          next.push(target);
        }
      }
    }
    frontier = next;
  }
}

function classOf(n) {
  return n.comfyClass ?? n.type;
}

// What the ProCache Apply fed by this loader changes: its start/end_percent and the settings of a
// Selective Compute Settings node connected to it (null when none is connected).
export function findApplySettings(node) {
  for (const n of downstream(node, 4)) {
    if (classOf(n) !== "ProCacheApply") continue;
    const out = {};
    for (const k of ["start_percent", "end_percent", "short_run_floor"]) {
      const w = widget(n, k);
      if (w && Number.isFinite(Number(w.value))) out[k] = Number(w.value);
    }
    const src = inputNode(n, "selective");
    if (src && classOf(src) === "ProCacheSelectiveSettings") {
      const sel = {};
      for (const k of ["enabled", "depth_fraction", "ratio"]) {
        const w = widget(src, k);
        if (w) sel[k] = w.value;
      }
      out.selective = sel;
    }
    return out;
  }
  return {};
}

function fmtPercent(x) {
  if (!Number.isFinite(x)) return "?%";
  return `${Math.round(x * 100)}%`;
}

function fmtSpeed(x) {
  if (!Number.isFinite(x)) return "?x";
  return `${x >= 10 ? x.toFixed(0) : x.toFixed(1)}x`;
}

async function postJSON(path, body) {
  const resp = await api.fetchApi(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = { error: `HTTP ${resp.status}` };
  }
  return { ok: resp.ok, status: resp.status, data };
}

export async function fetchPresetNames() {
  const resp = await api.fetchApi("/procache/presets");
  if (!resp.ok) throw new Error(`GET /procache/presets: HTTP ${resp.status}`);
  const data = await resp.json();
  return (data.presets ?? []).map((p) => p.name);
}

function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add?.({ severity, summary, detail, life: 5000 });
}

// The app's own dialogs (PrimeVue, themed, keyboard friendly); null when the front end has none.
function dialogs() {
  return app.extensionManager?.dialog ?? null;
}

// Inline styles on the strip's own elements: nothing is added to the page's shared stylesheets.
const STYLE = {
  strip: "box-sizing:border-box;width:100%;padding:4px 6px;font:11px/1.3 sans-serif;" +
    "color:var(--input-text,#ddd);display:flex;flex-direction:column;gap:4px;overflow:hidden",
  line: "white-space:nowrap;overflow:hidden;text-overflow:ellipsis",
  error: "color:#ff6b6b;white-space:normal;font-size:10px;max-height:52px;overflow:hidden",
  cells: "display:flex;gap:1px;height:18px;width:100%",
  cell: "flex:1 1 0;min-width:1px;border-radius:2px",
  legend: "display:flex;gap:10px;opacity:0.85",
  swatch: "display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:3px;vertical-align:-1px",
};

function styled(tag, className, css) {
  const el = document.createElement(tag);
  el.className = className;
  el.style.cssText = css;
  return el;
}

class ScheduleStrip {
  constructor(node) {
    this.node = node;
    this.seq = 0;
    this.timer = null;
    this.lastKey = null;
    this.lastCheck = 0;
    this.result = null;

    const el = styled("div", "procache-strip", STYLE.strip);
    el.dataset.state = "loading";
    el.dataset.cells = "0";
    this.summary = styled("div", "procache-summary", STYLE.line);
    this.summary.textContent = "ProCache: loading schedule…";
    this.cells = styled("div", "procache-cells", STYLE.cells);
    const legend = styled("div", "procache-legend", STYLE.legend);
    for (const a of ["F", "S", "C"]) {
      const s = document.createElement("span");
      s.dataset.action = a;
      const sw = styled("i", "procache-swatch", STYLE.swatch);
      sw.style.background = COLORS[a];
      s.append(sw, LABELS[a]);
      legend.appendChild(s);
    }
    el.append(this.summary, this.cells, legend);
    this.el = el;
  }

  // What the strip depends on; a change schedules a refresh.
  key() {
    const preset = widget(this.node, "preset")?.value ?? "";
    const text = widget(this.node, "schedule_text")?.value ?? "";
    return JSON.stringify([preset, String(text).trim(), findSteps(this.node), findApplySettings(this.node)]);
  }

  check(force = false) {
    const now = performance.now();
    if (!force && now - this.lastCheck < 400) {
      // throttled: look again once the window has passed, so the last change is never missed
      if (!this.trailing) {
        this.trailing = setTimeout(() => {
          this.trailing = null;
          this.check(false);
        }, 400 - (now - this.lastCheck) + 10);
      }
      return;
    }
    this.lastCheck = now;
    const key = this.key();
    if (force || key !== this.lastKey) {
      this.lastKey = key;
      this.schedule();
    }
  }

  // Changes that do not redraw this node (Nodes 2.0 mode, other tabs) are caught by a slow poll.
  start() {
    this.stop();
    this.poll = setInterval(() => {
      if (this.node.graph) this.check(false);
    }, 1500);
  }

  stop() {
    clearInterval(this.poll);
    clearTimeout(this.trailing);
    clearTimeout(this.timer);
    this.poll = this.trailing = this.timer = null;
  }

  schedule(delay = 120) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), delay);
  }

  request() {
    const preset = widget(this.node, "preset")?.value ?? "";
    const text = String(widget(this.node, "schedule_text")?.value ?? "").trim();
    const steps = findSteps(this.node);
    const body = { ...(text ? { text } : { preset }), ...findApplySettings(this.node) };
    if (steps) body.steps = steps;
    return body;
  }

  async refresh() {
    const seq = ++this.seq;
    this.el.dataset.nodeId = String(this.node.id);
    this.el.dataset.state = "loading";
    this.cells.style.opacity = "0.5";
    const body = this.request();
    let res;
    try {
      res = await postJSON("/procache/preview", body);
    } catch (err) {
      res = { ok: false, data: { error: `ProCache: server not reachable (${err})` } };
    }
    if (seq !== this.seq) return; // a newer request is under way
    if (res.ok) this.render(res.data, body);
    else this.renderError(res.data?.error ?? `HTTP ${res.status}`);
  }

  render(data, body) {
    const actions = String(data.actions ?? "");
    const frag = document.createDocumentFragment();
    for (let i = 0; i < actions.length; i++) {
      const a = actions[i];
      const cell = styled("div", "procache-cell", STYLE.cell);
      cell.dataset.step = String(i);
      cell.dataset.action = a;
      cell.style.background = COLORS[a] ?? "#000";
      cell.title = `step ${i + 1}: ${LABELS[a] ?? a}`;
      frag.appendChild(cell);
    }
    this.cells.replaceChildren(frag);
    this.cells.style.opacity = "1";
    this.summary.style.cssText = STYLE.line;
    const c = data.counts ?? {};
    const remap = data.remapped ? ` (remapped from ${data.source_steps})` : "";
    const KINDS = { searched: "searched pattern", rule: "rule on the noise axis", unrecorded: "no provenance" };
    const kind = KINDS[data.kind] ? ` (${KINDS[data.kind]})` : "";
    const origin = body.text ? "typed schedule" : `${body.preset}${kind}`;
    this.summary.replaceChildren();
    const b = document.createElement("b");
    b.style.fontWeight = "600";
    b.textContent = `~${fmtPercent(data.compute_fraction)} of full compute, ~${fmtSpeed(data.speedup)}`;
    const detail = styled("div", "procache-detail", STYLE.line + ";opacity:0.8");
    detail.textContent = `${actions.length} steps${remap}: ${c.full ?? 0} full / ${c.selective ?? 0} selective / ` +
      `${c.cached ?? 0} cached · ${origin}`;
    this.summary.append(b, detail);
    this.summary.title = this.summary.textContent;
    const ds = this.el.dataset;
    ds.nodeId = String(this.node.id);
    ds.state = "ready";
    ds.cells = String(actions.length);
    ds.actions = actions;
    ds.steps = String(data.steps ?? actions.length);
    ds.sourceSteps = String(data.source_steps ?? actions.length);
    ds.computeFraction = String(data.compute_fraction);
    ds.speedup = String(data.speedup);
    delete ds.error;
    this.result = { ...data, body };
    this.node.procacheStrip = {
      state: "ready",
      actions,
      cells: actions.length,
      steps: data.steps,
      sourceSteps: data.source_steps,
      computeFraction: data.compute_fraction,
      speedup: data.speedup,
      counts: c,
      error: null,
      colors: { ...COLORS },
    };
    this.node.setDirtyCanvas?.(true, false);
  }

  renderError(message) {
    this.cells.replaceChildren();
    this.summary.style.cssText = STYLE.error;
    this.summary.textContent = String(message).replace(/^ProCache:\s*/, "");
    this.summary.title = message;
    const ds = this.el.dataset;
    ds.nodeId = String(this.node.id);
    ds.state = "error";
    ds.cells = "0";
    ds.actions = "";
    ds.error = message;
    this.result = null;
    this.node.procacheStrip = { state: "error", actions: "", cells: 0, error: message, colors: { ...COLORS } };
    this.node.setDirtyCanvas?.(true, false);
  }
}

// Saves what the strip shows (remapped to the workflow's steps) as a user preset.
async function saveAsPreset(node) {
  const strip = node.procacheStripWidget;
  if (!strip?.result) {
    toast("error", "ProCache", "No valid schedule to save; fix the schedule first.");
    return null;
  }
  const base = String(widget(node, "preset")?.value ?? "preset").replace(/^user\//, "");
  const suggestion = `${base.replace(/[^A-Za-z0-9_.-]/g, "-")}-${strip.result.steps}`.slice(0, 64);
  const dlg = dialogs();
  if (!dlg?.prompt) {
    toast("error", "ProCache", "This front end has no dialog service; update ComfyUI's front end to save presets.");
    return null;
  }
  const name = await dlg.prompt({ title: "Save as ProCache preset",
    message: "Preset name (letters, digits, _ - .):", defaultValue: suggestion });
  if (!name) return null;
  const r = strip.result;
  const body = { name: name.trim(), actions: r.actions, family: r.family || undefined,
    selective: r.selective || undefined, model: r.model || undefined };
  let res = await postJSON("/procache/presets", body);
  if (res.status === 409 && /already exists/.test(res.data?.error ?? "")) {
    const ok = await dlg.confirm?.({ title: "Overwrite ProCache preset?",
      message: `A user preset named "${body.name}" exists. Overwrite it?`, type: "overwrite" });
    if (!ok) return null;
    res = await postJSON("/procache/presets", { ...body, overwrite: true });
  }
  if (!res.ok) {
    toast("error", "ProCache: preset not saved", res.data?.error ?? `HTTP ${res.status}`);
    return null;
  }
  const saved = res.data.name;
  await refreshPresetCombos(saved, node);
  const text = widget(node, "schedule_text");
  if (text) {
    text.value = "";
    text.callback?.(text.value);
  }
  toast("success", "ProCache", `Saved preset ${saved}`);
  return saved;
}

// Re-reads the preset list and updates the dropdown of every Schedule Loader in the graph.
export async function refreshPresetCombos(select = null, selectOn = null) {
  const names = await fetchPresetNames();
  for (const n of nodesOf(app.graph)) {
    if (n.comfyClass !== LOADER && n.type !== LOADER) continue;
    const combo = widget(n, "preset");
    if (!combo) continue;
    if (combo.options) combo.options.values = names;
    if (select && n === selectOn) {
      combo.value = select;
      combo.callback?.(select);
    }
    n.procacheStripWidget?.check(true);
  }
  app.graph?.setDirtyCanvas?.(true, true);
  return names;
}

function setupLoader(node) {
  const strip = new ScheduleStrip(node);
  strip.el.dataset.nodeId = String(node.id);
  node.procacheStripWidget = strip;
  const w = node.addDOMWidget("procache_strip", "procache-strip", strip.el, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => STRIP_HEIGHT,
    getMaxHeight: () => STRIP_HEIGHT,
    getValue: () => strip.lastKey ?? "",
    setValue: () => {},
  });
  w.serialize = false;
  if (w.options) w.options.serialize = false;

  const button = node.addWidget("button", "Save as preset", null, () => {
    saveAsPreset(node).catch((err) => toast("error", "ProCache", String(err)));
  });
  button.serialize = false;
  if (button.options) button.options.serialize = false;

  for (const name of ["preset", "schedule_text"]) {
    const wd = widget(node, name);
    if (!wd) continue;
    const orig = wd.callback;
    wd.callback = function (...args) {
      const r = orig?.apply(this, args);
      strip.check(true);
      return r;
    };
  }
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    strip.stop();
    return onRemoved?.apply(this, args);
  };
  strip.start();
  const [wMin, hMin] = node.computeSize?.() ?? [node.size[0], node.size[1]];
  node.setSize?.([Math.max(node.size[0], wMin, 360), Math.max(node.size[1], hMin)]);
  strip.check(true);
}

// The host may serve web/ twice (WEB_DIRECTORY and pyproject's [tool.comfy] web): register once.
const ALREADY = (app.extensions ?? []).some((e) => e?.name === EXTENSION_NAME);
if (!ALREADY) app.registerExtension({
  name: EXTENSION_NAME,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PACK_NODES.has(nodeData?.name)) return;
    if (nodeData.name !== LOADER) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const r = onNodeCreated?.apply(this, args);
      setupLoader(this);
      return r;
    };

    // Loading a workflow sets widget values without their callbacks: refresh afterwards.
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const r = onConfigure?.apply(this, args);
      if (this.procacheStripWidget) this.procacheStripWidget.el.dataset.nodeId = String(this.id);
      this.procacheStripWidget?.check(true);
      return r;
    };

    // Catch changes made elsewhere (a sampler's steps, links) at most every 400 ms while drawing.
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (...args) {
      const r = onDrawForeground?.apply(this, args);
      this.procacheStripWidget?.check(false);
      return r;
    };
  },
});

export { saveAsPreset };
