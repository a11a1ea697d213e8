"""The front end's "ProCache: accelerate this workflow" on the official templates, in headless Chromium.

For the local templates of comfyui-workflow-templates-json (pinned in tests/official_templates.py) that
sample a model and whose node types this host has: the template is loaded, the command inserts ProCache
Apply before every sampling MODEL input (subgraphs too), a second run inserts nothing, app.graphToPrompt()
converts the result, and the server's POST /prompt refuses it for missing model files only
(value_not_in_list on a model-file input). The script's two paths (UI JSON -> load -> graphToPrompt, and
the API prompt of the plain template -> accelerate_api) go through the same validation, and undo restores
the graph. Bad input gets a toast and leaves the graph unchanged.

Which templates: the full pass (every runnable template) runs on the newest front end (fe1.58.1) on the
newest host this checkout has set up (ComfyUI 0.29.0 of the host matrix when scripts/setup_hosts.sh set
it up, else 0.3.75); every other front end / host pair runs a fixed subset of SUBSET subgraph templates.
(The full pass took 61 s on 0.3.75 and 200 s on 0.29.0 with fe1.58.1 on 2 shared cores: all of it on
every pair would add minutes to a CI run that must stay under an hour.) PROCACHE_TEMPLATES_ALL=1 runs
the full pass everywhere. The JS rule and the Python rule are compared on every local template, once per
host (on fe1.58.1: the rule module imports nothing of the front end, so the front end does not change it).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import official_templates as ot  # noqa: E402
from procache_core.accelerate import accelerate_api, accelerate_ui, AccelerateError  # noqa: E402
from test_ui import open_app  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.host]

COMMAND = "ProCache.AccelerateWorkflow"
RULE_URL = "/extensions/ProCache/js/accelerate_rule.js"
SUBSET = 8  # subgraph templates on the bundled front ends

READY = ("() => window.app && app.graph && app.extensionManager?.command "
         "&& (app.extensions ?? []).some(e => e.name === 'procache.Accelerate')")

# The structure of a serialized graph: nodes (id, type) and links (origin, slot -> target, slot) per graph.
SHAPE_JS = """(ser) => {
  const links = (g) => (g.links ?? []).map(l => Array.isArray(l) ? [l[0], l[1], l[2], l[3], l[4]]
      : [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot]).map(String).sort();
  const one = (g) => ({nodes: (g.nodes ?? []).map(n => `${n.id}:${n.type}`).sort(), links: links(g)});
  const out = {root: one(ser)};
  for (const sg of ser.definitions?.subgraphs ?? []) out[sg.id] = one(sg);
  return out; }"""

RUN_JS = """async (arg) => {
  const cmd = (id) => app.extensionManager.command.execute(id);
  const root = () => app.rootGraph ?? app.graph;
  const shape = %s;
  const countApply = (ser) => [ser, ...(ser.definitions?.subgraphs ?? [])]
      .reduce((a, g) => a + (g.nodes ?? []).filter(n => n.type === 'ProCacheApply').length, 0);
  const tl = performance.now();
  await app.loadGraphData(arg.wf);
  const loadMs = performance.now() - tl;
  const before = root().serialize();
  const plain = await app.graphToPrompt();
  const toasts = [];
  const tsvc = app.extensionManager.toast; const add0 = tsvc.add.bind(tsvc);
  tsvc.add = (m) => { toasts.push(`${m.severity}: ${m.detail}`); return add0(m); };
  const t0 = performance.now();
  try { await cmd('%s'); } finally { tsvc.add = add0; }
  const ms = performance.now() - t0;
  const after = root().serialize();
  await cmd('%s');  // idempotent: nothing new
  const again = root().serialize();
  const tp = performance.now();
  const prompt = await app.graphToPrompt();
  const promptMs = performance.now() - tp;
  return {toasts, loadMs, promptMs, before: shape(before), after: shape(after), again: shape(again), beforeJson: before,
          applyBefore: countApply(before), applyAfter: countApply(after), applyAgain: countApply(again),
          plain: plain.output, prompt: prompt.output, ms};
}""" % (SHAPE_JS, COMMAND, COMMAND)

UNDO_JS = """async () => {
  const t = app.extensionManager.workflow.activeWorkflow.changeTracker;
  await t.undo();
  return (%s)((app.rootGraph ?? app.graph).serialize());
}""" % SHAPE_JS


@pytest.fixture(scope="module")
def object_info(base_url) -> dict:
    r = requests.get(base_url + "/object_info", timeout=120)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def runnable(object_info) -> dict:
    """Local templates with a sampler whose node types this host has -> their workflow JSON."""
    out = {}
    for name in ot.local_templates():
        wf = ot.load(name)
        try:
            accelerate_ui(wf, object_info.__contains__)
        except AccelerateError:
            continue
        out[name] = wf
    assert out, "no runnable template on this host"
    return out


def subset(runnable: dict) -> list[str]:
    """A fixed spread of SUBSET subgraph templates."""
    sub = [n for n in sorted(runnable) if ot.uses_subgraphs(runnable[n])]
    step = max(1, len(sub) // SUBSET)
    return sub[::step][:SUBSET]


NEWEST_FRONTEND = "fe1.58.1"


def _version_key(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def newest_host_version() -> str:
    """The newest ComfyUI this checkout has set up: .host/ComfyUI and the matrix hosts (hosts.txt)."""
    trees = [ROOT / ".host" / "ComfyUI"]
    lst = ROOT / ".host" / "matrix" / "hosts.txt"
    if lst.is_file():
        trees += [Path(line.split()[1]) for line in lst.read_text().splitlines() if len(line.split()) == 3]
    versions = []
    for t in trees:
        f = t / "comfyui_version.py"
        m = re.search(r'__version__ = "(.*)"', f.read_text()) if f.is_file() else None
        if m:
            versions.append(m.group(1))
    return max(versions, key=_version_key) if versions else ""


def full_pass(frontend: str, host: str) -> bool:
    return os.environ.get("PROCACHE_TEMPLATES_ALL") == "1" or (
        frontend == NEWEST_FRONTEND and _version_key(host) >= _version_key(newest_host_version()))


def chosen(runnable: dict, frontend: str, host: str) -> list[str]:
    return sorted(runnable) if full_pass(frontend, host) else subset(runnable)


def post_prompt(base_url: str, prompt: dict) -> tuple[int, dict]:
    r = requests.post(base_url + "/prompt", json={"prompt": prompt, "client_id": "procache-accelerate-test"},
                      timeout=120)
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"type": "http", "message": r.text[:300]}}
    return r.status_code, body


def refused_for(base_url: str, prompt: dict) -> list[str]:
    """Why the server refuses the prompt, missing model files aside (empty: accepted)."""
    status, body = post_prompt(base_url, prompt)
    if status == 200:  # every model file present: it was queued; take it off again
        requests.post(base_url + "/queue", json={"clear": True}, timeout=30)
        requests.post(base_url + "/interrupt", timeout=30)
        return []
    return ot.validation_problems(body) or ([] if body.get("node_errors") else [f"refused: {body}"])


def assert_accepted(base_url: str, prompt: dict, what: str) -> None:
    bad = refused_for(base_url, prompt)
    assert not bad, f"{what}: the server refused it for more than missing model files:\n" + "\n".join(bad[:8])


def apply_count(prompt: dict) -> int:
    return sum(1 for v in prompt.values() if v.get("class_type") == "ProCacheApply")


def test_templates_accelerate_and_validate(page, base_url, web_server, runnable, object_info, artifacts):
    host = host_version(base_url)
    names = chosen(runnable, web_server.frontend, host)
    if os.environ.get("PROCACHE_TEMPLATES_ONLY"):  # one template while developing
        names = [n for n in names if n == os.environ["PROCACHE_TEMPLATES_ONLY"]]
    if os.environ.get("PROCACHE_TEMPLATES_LIMIT"):  # a quicker look while developing
        names = names[:int(os.environ["PROCACHE_TEMPLATES_LIMIT"])]
    open_app_ready(page, base_url)
    input_dir = Path(web_server.workdir) / "input"
    results, incompatible, t_start = [], [], time.monotonic()
    few = set(subset(runnable))
    for name in names:
        wf = runnable[name]
        t_one = time.monotonic()
        expected, plan = accelerate_ui(wf, object_info.__contains__)
        n_ins = len(plan.insert)
        r = page.evaluate(RUN_JS, {"wf": wf})
        assert r["applyAfter"] - r["applyBefore"] == n_ins, (name, r["applyBefore"], r["applyAfter"], n_ins, r["toasts"])
        assert r["again"] == r["after"] and r["applyAgain"] == r["applyAfter"], f"{name}: second run changed the graph"
        # nothing but the inserted nodes and their links changed: the Python result has the same shape
        # up to the new ids (each sampler input now comes from a new ProCache Apply fed by the old origin)
        for gid, before in r["before"].items():
            after = r["after"][gid]
            assert set(before["nodes"]) <= set(after["nodes"]), (name, gid)
            added = set(after["nodes"]) - set(before["nodes"])
            assert all(s.endswith(":ProCacheApply") for s in added), (name, gid, added)
        # the converted prompt: one more ProCacheApply per sampling input that reaches the server
        ot.placeholder_inputs(r["plain"], input_dir)
        assert apply_count(r["prompt"]) >= apply_count(r["plain"]) + (1 if n_ins else 0), name
        plain_bad = refused_for(base_url, r["plain"])
        if plain_bad:  # the template itself does not validate on this host (made for a newer ComfyUI)
            incompatible.append({"name": name, "why": plain_bad[:3]})
            continue
        assert_accepted(base_url, r["prompt"], f"{name} (after the command)")
        # the script's API path: the plain template's prompt, accelerated in Python
        api, api_plan = accelerate_api(r["plain"], object_info)
        assert apply_count(api) - apply_count(r["plain"]) == len(api_plan.insert)
        assert_accepted(base_url, api, f"{name} (API prompt through accelerate_workflow)")
        # the script's UI path: the Python result loaded and converted by this front end (a second load of
        # the template: on the subset only, unless PROCACHE_TEMPLATES_ALL=1)
        if name in few or os.environ.get("PROCACHE_TEMPLATES_ALL") == "1":
            check_script_ui(page, base_url, name, expected, r["prompt"])
        results.append({"name": name, "inserted": n_ins, "subgraphs": ot.uses_subgraphs(wf),
                        "family": ot.family(wf), "ms": round(r["ms"], 1),
                        "load_ms": round(r["loadMs"]), "prompt_ms": round(r["promptMs"]),
                        "wall_s": round(time.monotonic() - t_one, 2)})
    local = ot.local_templates()
    with_sampler = [n for n in local if has_sampler(ot.load(n))]
    (artifacts / "accelerate_templates.json").write_text(json.dumps(
        {"frontend": web_server.frontend, "host": host, "templates_version": ot.VERSION,
         "local_templates": len(local), "with_sampler": len(with_sampler),
         "with_sampler_subgraphs": sum(ot.uses_subgraphs(ot.load(n)) for n in with_sampler),
         "full_pass": names == sorted(runnable), "tried": len(names),
         "runnable_on_host": len(runnable), "plain_template_refused_by_host": len(incompatible),
         "accepted": len(results), "seconds": round(time.monotonic() - t_start, 1), "results": results,
         "incompatible": incompatible}, indent=1))
    assert len(results) + len(incompatible) == len(names)
    # most templates this host has the nodes for validate as they come; a ProCache failure shows above
    assert len(results) >= len(names) // 2, (len(results), len(names), incompatible[:5])
    assert sum(r["subgraphs"] for r in results) >= min(3, len(results))


def has_sampler(wf: dict) -> bool:
    try:
        accelerate_ui(wf)
        return True
    except AccelerateError:
        return False


def host_version(base_url: str) -> str:
    r = requests.get(base_url + "/system_stats", timeout=30)
    return str(((r.json() if r.ok else {}).get("system") or {}).get("comfyui_version", "unknown"))


def check_script_ui(page, base_url: str, name: str, expected: dict, command_prompt: dict) -> None:
    py_prompt = page.evaluate("async (wf) => { await app.loadGraphData(wf); "
                              "return (await app.graphToPrompt()).output; }", expected)
    assert apply_count(py_prompt) == apply_count(command_prompt), name
    assert_accepted(base_url, py_prompt, f"{name} (UI JSON through accelerate_workflow)")


def open_app_ready(page, base_url):
    open_app(page, base_url)
    page.wait_for_function(READY, timeout=120_000)


def test_undo_restores_graph(page, base_url, runnable):
    """Ctrl+Z (the front end's keybinding) and the change tracker's undo take the insertion back."""
    open_app_ready(page, base_url)
    names = [n for n in sorted(runnable) if ot.uses_subgraphs(runnable[n])][:2]
    for k, name in enumerate(names):
        r = page.evaluate(RUN_JS, {"wf": runnable[name]})
        assert r["after"] != r["before"]
        if k == 0:
            # a real key press on the canvas
            page.evaluate("() => app.canvas.canvas.focus()")
            page.keyboard.press("Control+z")
            page.wait_for_function("(n) => { const g = app.rootGraph ?? app.graph; const s = g.serialize(); "
                                   "return [s, ...(s.definitions?.subgraphs ?? [])].every(x => "
                                   "(x.nodes ?? []).filter(n => n.type === 'ProCacheApply').length === 0) }",
                                   arg=None, timeout=20_000)
            shape = page.evaluate("() => (%s)((app.rootGraph ?? app.graph).serialize())" % SHAPE_JS)
        else:
            # the second run left nothing to undo of its own: one undo step takes back the whole insertion
            shape = page.evaluate(UNDO_JS)
        assert shape == r["before"], name


def test_js_and_python_rule_agree_on_every_template(page, base_url, web_server):
    """The front end's rule module and procache_core.accelerate on the same inputs: same plan, same JSON."""
    if web_server.frontend != NEWEST_FRONTEND:
        pytest.skip(f"run once per host, on {NEWEST_FRONTEND}: accelerate_rule.js imports nothing of the front end")
    open_app_ready(page, base_url)
    names = ot.local_templates()
    page.evaluate("async (u) => { window.__pcRule = await import(u); }", RULE_URL)
    mismatched = []
    for i in range(0, len(names), 20):
        batch = {n: ot.load(n) for n in names[i:i + 20]}
        js = page.evaluate("""(b) => { const R = window.__pcRule; const out = {};
            for (const [n, wf] of Object.entries(b)) {
              try { const r = R.accelerateJson(wf); out[n] = {plan: R.planDict(r.plan), workflow: r.workflow}; }
              catch (e) { out[n] = {error: e.message}; } }
            return out; }""", batch)
        for n, wf in batch.items():
            try:
                w, p = accelerate_ui(wf)
                py = {"plan": p.as_dict(), "workflow": w}
            except AccelerateError as e:
                py = {"error": str(e)}
            if json.loads(json.dumps(py)) != js[n]:
                mismatched.append(n)
    assert not mismatched, mismatched
    assert len(names) > 200


BAD_JS = """async (arg) => {
  await app.loadGraphData(arg.wf);
  const root = app.rootGraph ?? app.graph;
  const before = JSON.stringify(root.serialize());
  const toasts = [];
  const add = app.extensionManager.toast.add.bind(app.extensionManager.toast);
  app.extensionManager.toast.add = (m) => { toasts.push(m); return add(m); };
  try { await app.extensionManager.command.execute('%s'); }
  finally { app.extensionManager.toast.add = add; }
  return {same: JSON.stringify(root.serialize()) === before, toasts: toasts.map(t => [t.severity, t.detail])};
}""" % COMMAND


def test_bad_input_toast_and_unchanged(page, base_url, object_info):
    open_app_ready(page, base_url)
    r = page.evaluate(BAD_JS, {"wf": no_sampler_workflow(object_info)})
    assert r["same"] and any(s == "error" and "no sampler" in d for s, d in r["toasts"]), r
    # a node type this ComfyUI lacks (a custom node not installed): named in the toast, nothing changed
    wf = ot.load("image_z_image_turbo")
    wf = json.loads(json.dumps(wf).replace('"type": "SaveImage"', '"type": "ProCacheNoSuchSaveNode"'))
    r = page.evaluate(BAD_JS, {"wf": wf})
    assert r["same"] and any(s == "error" and "ProCacheNoSuchSaveNode" in d for s, d in r["toasts"]), r


def no_sampler_workflow(object_info: dict) -> dict:
    """A graph without a sampler whose node types this host has (else the unknown-type refusal, which the
    rule checks first, would be the toast): an official utility template where one fits, else
    LoadImage -> SaveImage (ComfyUI 0.3.75 lacks some node types of every utility template)."""
    for name in ot.local_templates():
        if not name.startswith("utility_"):
            continue
        wf = ot.load(name)
        text = json.dumps(wf)
        if any(t in text for t in ("KSampler", "SamplerCustom")):
            continue
        try:
            accelerate_ui(wf, object_info.__contains__)
        except AccelerateError as e:
            if "no sampler" in str(e):
                return wf
    return {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
            "nodes": [{"id": 1, "type": "LoadImage", "pos": [0, 0], "size": [300, 300], "mode": 0, "order": 0,
                       "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                                                 {"name": "MASK", "type": "MASK", "links": []}],
                       "properties": {}, "widgets_values": ["example.png", "image"]},
                      {"id": 2, "type": "SaveImage", "pos": [400, 0], "size": [300, 300], "mode": 0, "order": 1,
                       "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
                       "properties": {}, "widgets_values": ["ComfyUI"]}],
            "groups": [], "config": {}, "extra": {}}
