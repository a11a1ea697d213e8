"""Every file in example_workflows/ as a user meets it: opened in the real front end, then run.

Per example and front end (the host's bundled one and comfyui-frontend-package 1.58.1), with the
missing-node warning and workflow validation turned ON:
  * the file opens through the front end's own file handler, nothing reported missing, no validation
    complaint in the console;
  * every node type is a core ComfyUI node, a ProCache node, or a front-end-only node (Note);
  * every link joins existing slots of matching type, both ends agreeing;
  * the front end's own graphToPrompt output, with the user's weights swapped for the tiny test
    models (loader -> tiny model, text encoder -> seeded embedding, VAE decode -> dropped where no tiny
    VAE fits), runs through the real server and ProCache Stats reports the run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.browser, pytest.mark.host]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}
CHECKS = {"Comfy.Workflow.ShowMissingNodesWarning": True, "Comfy.Validation.Workflows": True}

# family (from the example's model file name) -> what stands in for the user's weights
TINY = {
    "pixart": {"model": {"class_type": "UNETLoader",
                         "inputs": {"unet_name": "procache-tiny-pixart-alpha.safetensors", "weight_dtype": "default"}},
               "text": (4096, 0), "latent": (512, 512), "vae": "taesd"},
    "flux": {"model": {"class_type": "ProCacheTestTinyFlux",
                       "inputs": {"seed": 0, "depth": 2, "depth_single_blocks": 2, "context_in_dim": 64}},
             "text": (64, 768), "latent": (64, 64), "vae": None},
    "sd3": {"model": {"class_type": "ProCacheTestExampleSD3", "inputs": {"seed": 0}},
            "text": (64, 2048), "latent": (64, 64), "vae": None},
    "wan": {"model": {"class_type": "ProCacheTestExampleWan", "inputs": {"seed": 0}},
            "text": (4096, 0), "latent": (64, 64), "vae": None},
}
STEPS = 2  # enough for a FULL step then a reused one
LOADERS = {"UNETLoader", "CheckpointLoaderSimple"}
TEXT_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"}
DECODE_CHAIN = {"VAEDecode", "VAELoader", "SaveImage", "SaveAnimatedWEBP", "SaveWEBM", "CreateVideo", "SaveVideo"}


@pytest.fixture(scope="module")
def checks_on(web_server):
    """Missing-node warning and workflow validation ON for this module (restored afterwards)."""
    base = web_server.base_url
    before = requests.get(base + "/settings", timeout=30).json()
    for k, v in CHECKS.items():
        requests.post(f"{base}/settings/{k}", json=v, timeout=30).raise_for_status()
    try:
        yield
    finally:
        for k in CHECKS:
            requests.post(f"{base}/settings/{k}", json=before.get(k, False), timeout=30)


@pytest.fixture(scope="module")
def object_info(web_server) -> dict:
    return requests.get(web_server.base_url + "/object_info", timeout=60).json()


def open_app(page, base_url):
    page.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
    page.goto(base_url + "/")
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas "
                           "&& window.LiteGraph?.registered_node_types?.ProCacheApply", timeout=120_000)
    page.keyboard.press("Escape")


def open_file(page, name: str, text: str) -> None:
    """Opens the workflow through the front end's file handler, as a drop or File > Open does."""
    page.evaluate("""async ([name, text]) => {
        const file = new File([text], name, {type: 'application/json'});
        await app.handleFile(file);
        await new Promise(r => setTimeout(r, 500));
    }""", [name, text])


LOADED = """() => {
    const g = app.graph;
    const nodes = g.nodes.map(n => ({id: Number(n.id), type: n.type, comfyClass: n.comfyClass ?? null,
        registered: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors,
        inputs: (n.inputs ?? []).map(i => ({name: i.name, type: i.type, link: i.link ?? null})),
        outputs: (n.outputs ?? []).map(o => ({name: o.name, type: o.type, links: o.links ?? []})),
        widgets: n.serialize().widgets_values ?? [], widgetNames: (n.widgets ?? []).map(w => w.name)}));
    const links = [];
    const L = g.links;
    const each = L instanceof Map ? [...L.values()] : Object.values(L ?? {});
    for (const l of each) if (l) links.push({id: Number(l.id), origin_id: Number(l.origin_id),
        origin_slot: l.origin_slot, target_id: Number(l.target_id), target_slot: l.target_slot, type: l.type});
    const dialogs = [...document.querySelectorAll('[role=dialog], .p-dialog')]
        .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 400));
    return {nodes, links, dialogs};
}"""


def missing_nodes(state: dict) -> list[str]:
    return [f"{n['id']}:{n['type']}" for n in state["nodes"] if not n["registered"]]


def check_links(state: dict) -> None:
    nodes = {n["id"]: n for n in state["nodes"]}
    for lk in state["links"]:
        src, dst = nodes.get(lk["origin_id"]), nodes.get(lk["target_id"])
        assert src and dst, f"link {lk} joins a missing node"
        out, inp = src["outputs"][lk["origin_slot"]], dst["inputs"][lk["target_slot"]]
        assert lk["id"] in out["links"], f"link {lk['id']} not on its origin slot {out}"
        assert inp["link"] == lk["id"], f"link {lk['id']} not on its target slot {inp}"
        assert out["type"] == inp["type"] == lk["type"], f"type mismatch on link {lk}: {out} -> {inp}"
    ids = {lk["id"] for lk in state["links"]}
    for n in state["nodes"]:
        for i in n["inputs"]:
            assert i["link"] is None or i["link"] in ids, f"node {n['id']} input {i['name']}: dangling link"
        for o in n["outputs"]:
            assert all(x in ids for x in o["links"]), f"node {n['id']} output {o['name']}: dangling link"


def family_of(prompt: dict) -> str:
    names = " ".join(str(n["inputs"].get("unet_name", n["inputs"].get("ckpt_name", ""))).lower()
                     for n in prompt.values() if n["class_type"] in LOADERS)
    for fam, key in (("pixart", "pixart"), ("flux", "flux"), ("sd3", "sd3"), ("wan", "wan")):
        if key in names:
            return fam
    raise AssertionError(f"no known model in {names!r}")


def with_tiny_models(prompt: dict) -> tuple[dict, str]:
    """The front end's prompt with the user's weights swapped for tiny seeded test models."""
    fam = family_of(prompt)
    tiny = TINY[fam]
    p = json.loads(json.dumps(prompt))
    dim, pooled = tiny["text"]
    for nid, n in list(p.items()):
        ct = n["class_type"]
        if ct in LOADERS:
            p[nid] = json.loads(json.dumps(tiny["model"]))
        elif ct in TEXT_LOADERS:
            del p[nid]
        elif ct == "CLIPTextEncode":
            p[nid] = {"class_type": "ProCacheTestConditioning",
                      "inputs": {"seed": int(nid), "tokens": 8, "dim": dim, "pooled_dim": pooled, "scale": 1.0}}
        elif ct in ("KSampler", "KSamplerAdvanced"):
            n["inputs"]["steps"] = STEPS
        elif "width" in n["inputs"] and "height" in n["inputs"]:
            n["inputs"]["width"], n["inputs"]["height"] = tiny["latent"]
            if "length" in n["inputs"]:
                n["inputs"]["length"] = 5
        elif ct == "VAELoader" and tiny["vae"]:
            n["inputs"]["vae_name"] = tiny["vae"]
        elif ct.startswith("Save") and "filename_prefix" in n["inputs"]:
            n["inputs"]["filename_prefix"] = "example_" + fam
    if not tiny["vae"]:
        for nid in [k for k, n in p.items() if n["class_type"] in DECODE_CHAIN]:
            del p[nid]
    return p, fam


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_opens_in_front_end_and_runs(page, web_server, checks_on, object_info, artifacts, path):
    wf = json.loads(path.read_text())
    open_app(page, web_server.base_url)
    open_file(page, path.name, path.read_text())
    state = page.evaluate(LOADED)
    page.screenshot(path=str(artifacts / f"example_{path.stem}.png"))

    # it loads: every node of the file is on the canvas, none missing, no warning dialog, no validation error
    assert sorted(n["id"] for n in state["nodes"]) == sorted(n["id"] for n in wf["nodes"])
    assert missing_nodes(state) == [], state
    assert not [d for d in state["dialogs"] if "missing" in d.lower()], state["dialogs"]
    bad = [m for m in page.console_messages if "validat" in m.lower() and ("error" in m.lower() or "fail" in m.lower())]
    assert not bad, bad
    # node types: core or ProCache (never a test node), or front-end only
    for n in state["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        assert n["type"] in object_info, f"{n['type']} is not a node of this server"
        module = object_info[n["type"]]["python_module"]
        assert module in ("nodes",) or module.startswith("comfy_extras.") or module == "custom_nodes.ProCache", \
            f"{n['type']} comes from {module}: examples may use core and ProCache nodes only"
    types = {n["type"] for n in state["nodes"]}
    assert {"ProCacheApply", "ProCacheStats", "Note"} <= types, types
    # the widget values the front end shows are the file's (nothing shifted, nothing dropped)
    for n in wf["nodes"]:
        got = next(s for s in state["nodes"] if s["id"] == n["id"])
        if n["type"] not in FRONTEND_ONLY:
            want = n["widgets_values"]
            assert got["widgets"] == want, (n["type"], got["widgets"], got["widgetNames"], want)
    check_links(state)
    assert len(state["links"]) == len(wf["links"])

    # the front end's prompt, with tiny models, runs through the real server
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert {n["class_type"] for n in prompt.values()} == types - FRONTEND_ONLY
    tiny, fam = with_tiny_models(prompt)
    client = web_server.client()
    t0 = time.monotonic()
    entry = client.run(tiny, timeout=600)
    assert entry["status"]["status_str"] == "success"
    stats = [o["text"][0] for o in entry["outputs"].values() if o.get("text", [""])[0].startswith("ProCache [")]
    assert len(stats) == 1 and stats[0].startswith(f"ProCache [{fam}] run: {STEPS} steps"), stats
    log = web_server.log()
    if any(n["class_type"] == "ProCacheApply" and "schedule" not in n["inputs"] for n in tiny.values()):
        assert f"preset 'auto' -> " in log and f"for a {fam} model" in log, log[-3000:]
    print(f"{path.name}: ran with tiny {fam} model in {time.monotonic() - t0:.1f}s: {stats[0]}")


def test_check_sees_a_missing_node(page, web_server, checks_on):
    """The missing-node check above can fail: a workflow naming an unknown node type is reported."""
    wf = json.loads(EXAMPLES[0].read_text())
    wf["nodes"][0]["type"] = "SomeOtherPackNode"
    open_app(page, web_server.base_url)
    open_file(page, "broken.json", json.dumps(wf))
    state = page.evaluate(LOADED)
    assert missing_nodes(state) == [f"{wf['nodes'][0]['id']}:SomeOtherPackNode"]


def test_workflow_saved_before_the_newest_inputs_loads_every_value_by_name(page, web_server):
    """Widget values are saved by position: a workflow saved before Selective Compute Settings had
    w_value_norm / image_first, and ProCache Apply had reuse, must load each old value into the widget it
    was saved from, the new widgets at their defaults (the old behaviour)."""
    wf = json.loads(EXAMPLES[0].read_text())
    apply = next(n for n in wf["nodes"] if n["type"] == "ProCacheApply")
    apply["widgets_values"] = [0.1, 0.9, "auto", 7, "auto", "full", "auto"]          # 7 values: before reuse
    sel = {k: v for k, v in apply.items() if k in ("pos", "size", "flags", "mode")}
    sel.update(id=max(n["id"] for n in wf["nodes"]) + 1, type="ProCacheSelectiveSettings", order=99,
               inputs=[], outputs=[{"name": "selective", "type": "PROCACHE_SELECTIVE", "links": []}],
               properties={"Node name for S&R": "ProCacheSelectiveSettings"},
               widgets_values=[True, 0.5, 0.2, 1.0, 0.0, 0.0, 0.0, "constant", "light (order 1)",
                               "stratified", 2.0, 0.2])                               # 12 values: before them
    wf["nodes"].append(sel)
    wf["last_node_id"] = sel["id"]
    open_app(page, web_server.base_url)
    open_file(page, "old.json", json.dumps(wf))
    state = page.evaluate(LOADED)
    got = {n["type"]: dict(zip(n["widgetNames"], n["widgets"])) for n in state["nodes"]
           if n["type"] in ("ProCacheApply", "ProCacheSelectiveSettings")}
    a, s = got["ProCacheApply"], got["ProCacheSelectiveSettings"]
    assert (a["start_percent"], a["end_percent"], a["short_run_floor"], a["cache_mode"], a["reuse"]) == \
        (0.1, 0.9, 7, "full", "blocks"), a
    assert (s["depth_fraction"], s["ratio"], s["ratio_schedule"], s["forecast"], s["tie_break"], s["drift_guard"],
            s["drift_budget"]) == (0.5, 0.2, "constant", "light (order 1)", "stratified", 2.0, 0.2), s
    assert (s["w_value_norm"], s["image_first"]) == (0.0, False), s
