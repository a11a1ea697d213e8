"""Translations, help pages and templates as the front end fetches them, and a node titled in Chinese.

The host serves the pack's locales/<lang>/nodeDefs.json through /i18n and its web/docs through
/extensions/ProCache/docs/<Node>/<locale>.md (the layout the front end looks up first).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.browser, pytest.mark.host]

ROOT = Path(__file__).resolve().parents[2]
OURS = ["ProCacheApply", "ProCacheScheduleLoader", "ProCacheSelectiveSettings", "ProCacheStats", "ProCacheDemoDigitsModel",
        "ProCacheDemoDigitPrompt", "ProCacheDemoEmptyLatent", "ProCacheDemoDigitsDecode", "ProCacheDemoDigitsEncode",
        "ProCacheScheduleSearch"]


def test_zh_node_definitions_cover_every_input(base_url):
    zh = requests.get(base_url + "/i18n", timeout=30).json()["zh"]["nodeDefs"]
    info = requests.get(base_url + "/object_info", timeout=60).json()
    for name in OURS:
        d = zh[name]
        assert d["display_name"] and d["display_name"] != info[name]["display_name"], name
        inputs = {**info[name]["input"].get("required", {}), **info[name]["input"].get("optional", {})}
        assert set(d["inputs"]) == set(inputs), (name, set(inputs) ^ set(d["inputs"]))
        assert len(d["outputs"]) == len(info[name]["output"]), name


@pytest.mark.parametrize("locale", ["en", "zh"])
def test_help_pages_where_the_front_end_looks(base_url, locale):
    for name in OURS:
        r = requests.get(f"{base_url}/extensions/ProCache/docs/{name}/{locale}.md", timeout=30)
        assert r.status_code == 200 and r.text.startswith("# "), (name, locale, r.status_code)


def test_templates_list_only_the_ui_examples(base_url):
    got = requests.get(base_url + "/api/workflow_templates", timeout=30).json()
    want = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
    assert sorted(got["ProCache"]) == want
    assert not [n for n in got["ProCache"] if n.endswith(".api")]


def test_node_title_translated_in_zh(page, web_server, artifacts):
    base = web_server.base_url
    before = requests.get(base + "/settings", timeout=30).json().get("Comfy.Locale", "en")
    requests.post(base + "/settings/Comfy.Locale", json="zh", timeout=30).raise_for_status()
    try:
        page.goto(base + "/")
        page.wait_for_function("() => window.app && app.graph && app.canvas "
                               "&& (app.extensions ?? []).some(e => e.name === 'procache.ScheduleStrip')",
                               timeout=120_000)
        page.keyboard.press("Escape")
        got = page.evaluate("""() => { const n = LiteGraph.createNode('ProCacheApply'); n.pos = [100, 100];
            app.graph.add(n); app.graph.setDirtyCanvas(true, true);
            return {title: n.title, preset: (n.inputs.find(i => i.name === 'preset') ?? {}).label ?? null}; }""")
        page.screenshot(path=str(artifacts / "web_zh_apply.png"))
        if web_server.frontend == "bundled" and got["title"] == "ProCache Apply":
            # Our layout is the one the host serves (locales/zh/nodeDefs.json -> /i18n, checked above) and
            # 1.58.1 applies it. 1.32.9 merges /i18n into vue-i18n before the settings load, then its
            # loadLocale("zh") (assets/index-*.js) lazily loads its own zh messages with
            # i18n.global.setLocaleMessage("zh", ...), which replaces the merged custom-node messages;
            # 1.58.1's loadLocale merges them again after setLocaleMessage. 1.32.9 exposes no i18n handle
            # to extensions (window.comfyAPI has none), so a pack cannot re-merge them there.
            pytest.xfail("front end 1.32.9 drops custom-node translations when it lazy-loads the zh locale "
                         "(setLocaleMessage replaces what /i18n merged; fixed in later front ends)")
        assert got["title"] == "ProCache 应用", got
    finally:
        requests.post(base + "/settings/Comfy.Locale", json=before, timeout=30)
