"""The ProCache front-end in headless Chromium against the real server.

A workflow with UNETLoader -> ProCache Apply (<- Schedule Loader) -> KSampler is loaded through
app.loadGraphData; the Schedule Loader's strip must show one cell per step in the right colour, follow
the preset, the typed schedule and the sampler's steps, and "Save as preset" must store a preset
that the dropdown lists after a page reload. Screenshots go to tests/artifacts/.
"""
from __future__ import annotations

import io
import json

import pytest
import requests

from procache_core.schedule import Schedule

pytestmark = [pytest.mark.browser, pytest.mark.host]

COLORS = {"F": (0x2F, 0x7D, 0xE1), "S": (0xF0, 0xA0, 0x20), "C": (0x5B, 0x65, 0x75)}
LOADER_ID = 2
SAMPLER_ID = 4


def workflow(preset: str, steps: int, text: str = "") -> dict:
    """UI-format workflow: UNETLoader -> ProCache Apply (<- Schedule Loader) -> KSampler."""
    def out(name, typ, links):
        return {"name": name, "type": typ, "links": links, "slot_index": 0}

    return {
        "last_node_id": 4, "last_link_id": 3,
        "nodes": [
            {"id": 1, "type": "UNETLoader", "pos": [30, 40], "size": [320, 90], "flags": {}, "order": 0, "mode": 0,
             "inputs": [], "outputs": [out("MODEL", "MODEL", [1])], "properties": {},
             "widgets_values": ["procache-tiny-pixart-alpha.safetensors", "default"]},
            {"id": LOADER_ID, "type": "ProCacheScheduleLoader", "pos": [30, 190], "size": [460, 220], "flags": {},
             "order": 1, "mode": 0, "inputs": [],
             "outputs": [out("schedule", "PROCACHE_SCHEDULE", [2]),
                         {"name": "summary", "type": "STRING", "links": None, "slot_index": 1}],
             "properties": {}, "widgets_values": [preset, text]},
            {"id": 3, "type": "ProCacheApply", "pos": [540, 40], "size": [300, 130], "flags": {}, "order": 2,
             "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                        {"name": "schedule", "type": "PROCACHE_SCHEDULE", "link": 2},
                        {"name": "selective", "type": "PROCACHE_SELECTIVE", "link": None}],
             "outputs": [out("MODEL", "MODEL", [3])], "properties": {}, "widgets_values": [0.0, 1.0]},
            {"id": SAMPLER_ID, "type": "KSampler", "pos": [880, 40], "size": [300, 270], "flags": {}, "order": 3,
             "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 3},
                        {"name": "positive", "type": "CONDITIONING", "link": None},
                        {"name": "negative", "type": "CONDITIONING", "link": None},
                        {"name": "latent_image", "type": "LATENT", "link": None}],
             "outputs": [out("LATENT", "LATENT", None)], "properties": {},
             "widgets_values": [0, "fixed", steps, 2.0, "euler", "normal", 1.0]},
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, LOADER_ID, 0, 3, 1, "PROCACHE_SCHEDULE"],
                  [3, 3, 0, SAMPLER_ID, 0, "MODEL"]],
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [90, 110]}}, "version": 0.4,
    }


# the pack's extension is registered (it sets no globals of its own)
LOADED = ("() => window.app && window.app.graph && window.app.canvas "
          "&& (app.extensions ?? []).some(e => e.name === 'procache.ScheduleStrip')")


# front-end deprecation warnings get the stack they were raised from, so a test can tell ours from the host's
STACKED_WARN = """(() => { const warn = console.warn.bind(console);
  console.warn = (...a) => /deprecat/i.test(String(a[0])) ? warn(...a, 'STACK ' + new Error().stack) : warn(...a); })()"""


def open_app(page, base_url):
    page.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
    page.add_init_script(STACKED_WARN)
    page.goto(base_url + "/")
    page.wait_for_function(LOADED, timeout=120_000)
    page.keyboard.press("Escape")  # any first-run dialog


def load(page, wf):
    page.evaluate("async (wf) => { await app.loadGraphData(wf); app.canvas.ds.scale = 1; "
                  "app.canvas.ds.offset = [90, 110]; app.graph.setDirtyCanvas(true, true); }", wf)


def strip_sel(node_id=LOADER_ID):
    return f'.procache-strip[data-node-id="{node_id}"]'


def wait_strip(page, actions: str | None = None, state: str = "ready"):
    cond = ("(a) => { const el = document.querySelector('%s'); return el && el.dataset.state === '%s' "
            "&& (a === null || el.dataset.actions === a) }" % (strip_sel(), state))
    try:
        page.wait_for_function(cond, arg=actions, timeout=30_000)
    except Exception:
        got = page.evaluate("(s) => { const el = document.querySelector(s); return el && {...el.dataset} }",
                            strip_sel())
        raise AssertionError(f"strip not {state} with {actions!r}: {got}\n" + "\n".join(page.console_messages[-20:]))
    return page.evaluate("""(s) => {
        const el = document.querySelector(s);
        const cells = [...el.querySelectorAll('.procache-cell')];
        return {data: {...el.dataset}, summary: el.querySelector('.procache-summary').textContent,
                cells: cells.map(c => ({action: c.dataset.action, step: +c.dataset.step,
                                        bg: getComputedStyle(c).backgroundColor})),
                prop: app.graph.getNodeById(%d).procacheStrip};
    }""" % LOADER_ID, strip_sel())


def rgb(t):
    return f"rgb({t[0]}, {t[1]}, {t[2]})"


def assert_cells(strip, actions: str):
    assert strip["data"]["cells"] == str(len(actions))
    assert [c["action"] for c in strip["cells"]] == list(actions)
    assert [c["step"] for c in strip["cells"]] == list(range(len(actions)))
    for c in strip["cells"]:
        assert c["bg"] == rgb(COLORS[c["action"]]), c
    assert strip["prop"]["actions"] == actions and strip["prop"]["cells"] == len(actions)


def assert_pixels(page, actions: str, shot_path):
    """The strip as rendered: sample the centre pixel of every cell in a screenshot."""
    from PIL import Image

    el = page.locator(strip_sel() + " .procache-cells")
    png = el.screenshot(path=str(shot_path))
    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    n = len(actions)
    for i, a in enumerate(actions):
        x = int((i + 0.5) * w / n)
        px = img.getpixel((min(x, w - 1), h // 2))
        assert all(abs(p - q) <= 12 for p, q in zip(px, COLORS[a])), (i, a, px)


@pytest.fixture(scope="module")
def presets(base_url):
    r = requests.get(base_url + "/procache/presets", timeout=30)
    r.raise_for_status()
    ps = [p for p in r.json()["presets"] if p["source"] == "shipped" and "error" not in p]
    assert ps
    # prefer a preset that has all three kinds of steps, so every colour is on screen
    ps.sort(key=lambda p: (-(min(p["counts"].values()) > 0), p["steps"]))
    return ps


def test_strip_preset_steps_and_typed_schedule(page, base_url, presets, artifacts, planned):
    p = presets[0]
    open_app(page, base_url)
    load(page, workflow(p["name"], p["steps"]))

    # 1. the preset as is (the sampler has the preset's step count)
    s = wait_strip(page, p["actions"])
    assert_cells(s, p["actions"])
    assert s["data"]["computeFraction"] and float(s["data"]["computeFraction"]) == pytest.approx(p["compute_fraction"])
    assert f"~{round(p['compute_fraction'] * 100)}% of full compute" in s["summary"], s["summary"]
    assert_pixels(page, p["actions"], artifacts / "web_strip_cells.png")
    legend = page.evaluate("(s) => [...document.querySelectorAll(s + ' .procache-legend span')]"
                           ".map(e => [e.dataset.action, e.textContent])", strip_sel())
    assert legend == [["F", "full"], ["S", "selective"], ["C", "cached"]]
    page.screenshot(path=str(artifacts / "web_strip_preset.png"))

    # 2. the sampler's steps change -> the strip shows what the run plans (procache_core.plan)
    page.evaluate("""(n) => { const k = app.graph.getNodeById(%d); const w = k.widgets.find(w => w.name === 'steps');
                     w.value = n; w.callback?.(n); app.graph.setDirtyCanvas(true, true); }""" % SAMPLER_ID, 30)
    want = planned(p["actions"], 30, p["noise"], p["family"], (p.get("selective") or {}).get("enabled", True))
    s = wait_strip(page, want)
    assert_cells(s, want)
    assert s["data"]["sourceSteps"] == str(p["steps"]) and "remapped from" in s["summary"]
    page.screenshot(path=str(artifacts / "web_strip_remapped.png"))

    # 2b. a new Selective Compute Settings node on ProCache Apply is off by default: S turns into C;
    # switched on, the preset's S steps run as written
    enabled = page.evaluate("""() => { const s = LiteGraph.createNode('ProCacheSelectiveSettings'); s.id = 5;
                     s.pos = [540, 330]; app.graph.add(s); const apply = app.graph.getNodeById(3);
                     s.connect(0, apply, apply.inputs.findIndex(i => i.name === 'selective'));
                     app.graph.setDirtyCanvas(true, true);
                     return s.widgets.find(w => w.name === 'enabled').value; }""")
    assert enabled is False
    off = Schedule.from_string(want).with_selective(False).to_string()
    assert off != want
    s = wait_strip(page, off)
    assert_cells(s, off)
    assert s["prop"]["counts"]["selective"] == 0
    page.screenshot(path=str(artifacts / "web_strip_selective_off.png"))
    page.evaluate("""() => { const w = app.graph.getNodeById(5).widgets.find(w => w.name === 'enabled');
                     w.value = true; w.callback?.(true); app.graph.setDirtyCanvas(true, true); }""")
    s = wait_strip(page, want)
    assert_cells(s, want)
    page.evaluate("() => { app.graph.remove(app.graph.getNodeById(5)); app.graph.setDirtyCanvas(true, true); }")
    wait_strip(page, want)

    # 3. a typed schedule wins over the preset (and is remapped to the sampler's steps too)
    def type_text(text):
        page.evaluate("""(t) => { const n = app.graph.getNodeById(%d); const w = n.widgets.find(w => w.name === 'schedule_text');
                         w.value = t; w.callback?.(t); }""" % LOADER_ID, text)

    page.evaluate("(n) => { const w = app.graph.getNodeById(%d).widgets.find(w => w.name === 'steps'); "
                  "w.value = n; w.callback?.(n); app.graph.setDirtyCanvas(true, true) }" % SAMPLER_ID, 8)
    type_text("FCSC FCSC")
    s = wait_strip(page, "FCSCFCSC")
    assert_cells(s, "FCSCFCSC")
    assert "typed schedule" in s["summary"]

    # 4. a broken schedule shows the error, with no cells
    type_text("CCF")
    s = wait_strip(page, None, state="error")
    assert s["data"]["cells"] == "0" and s["cells"] == []
    assert "schedule_text" in s["data"]["error"] and "F" in s["data"]["error"]
    page.screenshot(path=str(artifacts / "web_strip_error.png"))

    # nothing the pack did was reported deprecated by the front end (1.58 warns on output.links/input.link;
    # the front end's own code still raises some of these, so only warnings raised from our file count)
    dep = [m for m in page.console_messages if "deprecat" in m.lower() and "procache" in m.lower()]
    assert dep == [], dep


def test_extension_source_uses_only_public_front_end_api():
    """No native prompt/confirm/alert, no private graph fields, no globals, no shared stylesheet."""
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "web" / "js" / "procache.js").read_text()
    for bad in ("window.prompt", "window.confirm", "window.alert", "_nodes", "window.ProCache", "window.",
                "document.head", ".links", "getElementById"):
        assert bad not in src, bad
    assert 'EXTENSION_NAME = "procache.' in src


def test_save_as_preset_then_reload(page, base_url, presets, user_presets, artifacts, planned):
    name = "webtest-saved"
    p = presets[0]
    open_app(page, base_url)
    load(page, workflow(p["name"], 12, text="FCCSFCSF"))
    want = planned("FCCSFCSF", 12)
    wait_strip(page, want)

    # click the canvas button "Save as preset" and answer the app's name dialog (never a native prompt)
    native = []
    page.on("dialog", lambda d: (native.append(d.type), d.dismiss()))
    box = page.get_by_role("dialog").filter(has_text="Save as ProCache preset").locator("input").first
    # The widget's position is known only once the canvas has drawn it; a click computed before that lands
    # beside the button (seen once on 0.29.0's front end under load), so the click is placed after a redraw
    # and tried again, at most three times, until the dialog shows.
    for attempt in range(3):
        xy = page.evaluate("""() => {
            app.canvas.draw(true, true);
            const n = app.graph.getNodeById(%d); const w = n.widgets.find(w => w.name === 'Save as preset');
            const ds = app.canvas.ds; const r = app.canvas.canvas.getBoundingClientRect();
            const h = w.computedHeight || LiteGraph.NODE_WIDGET_HEIGHT || 20;
            const gx = n.pos[0] + n.size[0] / 2, gy = n.pos[1] + (w.y ?? w.last_y) + h / 2;
            return [r.left + (gx + ds.offset[0]) * ds.scale, r.top + (gy + ds.offset[1]) * ds.scale];
        }""" % LOADER_ID)
        page.mouse.click(*xy)
        try:
            box.wait_for(state="visible", timeout=15_000)
            break
        except Exception:
            if attempt == 2:
                page.screenshot(path=str(artifacts / "web_save_no_dialog.png"))
                raise
    page.screenshot(path=str(artifacts / "web_save_dialog.png"))
    box.fill(name)
    box.press("Enter")
    try:
        page.wait_for_function("(v) => app.graph.getNodeById(%d).widgets.find(w => w.name === 'preset').value === v"
                               % LOADER_ID, arg=f"user/{name}", timeout=30_000)
    except Exception:
        page.screenshot(path=str(artifacts / "web_save_failed.png"))
        raise AssertionError("preset not selected after save:\n" + "\n".join(page.console_messages[-20:]))
    assert native == []
    saved = user_presets / f"{name}.yaml"
    assert saved.is_file()
    # the typed text was cleared: the node now uses the saved preset, which is what the strip showed
    s = wait_strip(page, want)
    assert "schedule_text" and s["data"]["actions"] == want
    got = requests.get(f"{base_url}/procache/presets/user/{name}", timeout=30).json()
    assert got["actions"] == want

    # after a reload the dropdown (built from /object_info) lists the new preset
    page.reload()
    page.wait_for_function(LOADED, timeout=120_000)
    load(page, workflow(f"user/{name}", 12))
    options = page.evaluate("() => app.graph.getNodeById(%d).widgets.find(w => w.name === 'preset').options.values"
                            % LOADER_ID)
    assert f"user/{name}" in options and p["name"] in options
    s = wait_strip(page, want)
    assert_cells(s, want)
    page.screenshot(path=str(artifacts / "web_saved_preset_after_reload.png"))
    (artifacts / "web_console.log").write_text("\n".join(page.console_messages))
    json.dumps(options)
