"""The /procache/ HTTP routes of the web UI, against the real server (nodes/routes.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from procache_core.schedule import Schedule

pytestmark = pytest.mark.host

BAD_NAMES = ["../x", "a/b", "..", ".", "", "x" * 65, "a\\b", "with space", "user/../x", "/etc/passwd",
             "..%2Fx", "nul\x00byte", ".hidden", "tab\tname", "ünï", "a:b", "C:\\x"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def api(base_url):
    class Api:
        def get(self, path, **kw):
            return requests.get(base_url + path, timeout=30, **kw)

        def post(self, path, **kw):
            return requests.post(base_url + path, timeout=30, **kw)

    return Api()


@pytest.fixture(scope="module")
def listing(api):
    r = api.get("/procache/presets")
    assert r.status_code == 200, r.text
    presets = r.json()["presets"]
    assert presets, "no presets listed"
    return presets


def _shipped(listing):
    shipped = [p for p in listing if p["source"] == "shipped" and "error" not in p]
    assert shipped, f"no shipped presets in {listing}"
    return shipped


def test_list_has_summaries(listing):
    for p in _shipped(listing):
        assert set(p) >= {"name", "steps", "family", "counts", "compute_fraction", "speedup", "source", "actions"}
        assert p["steps"] == len(p["actions"]) == sum(p["counts"].values())
        assert p["actions"][0] == "F"
        assert 0 < p["compute_fraction"] <= 1
        assert p["speedup"] == pytest.approx(1 / p["compute_fraction"], rel=1e-2)
        assert not p["name"].startswith("user/")


def test_api_prefix_serves_the_same(api, listing):
    r = api.get("/api/procache/presets")
    assert r.status_code == 200 and r.json()["presets"] == listing


def test_get_one_preset(api, listing):
    p = _shipped(listing)[0]
    r = api.get(f"/procache/presets/{p['name']}")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["actions"] == p["actions"]
    assert data["source"] == "shipped"
    assert data["summary"]["counts"] == p["counts"]
    assert "F" in data["yaml"] or p["actions"] in data["yaml"] or len(data["yaml"]) > 10


@pytest.mark.parametrize("name", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "nope", "user/../../x", "user/"])
def test_get_unknown_or_traversal_is_404(api, name):
    r = api.get(f"/procache/presets/{name}")
    assert r.status_code == 404, r.text
    assert "root:" not in r.text


def test_preview_is_the_run_plan(api, planned):
    src = "FCSCFCSCFCFCF"
    for n in (4, 13, 20, 50):
        r = api.get("/procache/preview", params={"actions": src, "steps": n})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["actions"] == planned(src, n)
        assert data["steps"] == n and data["source_steps"] == len(src)
        assert data["remapped"] == (n != len(src))
        assert sum(data["counts"].values()) == n
    r = api.get("/procache/preview", params={"actions": "fcc sc"})
    assert r.status_code == 200 and r.json()["actions"] == "FCCSC"


def test_preview_of_a_preset_and_of_typed_text(api, listing, planned):
    p = _shipped(listing)[0]
    r = api.post("/procache/preview", json={"preset": p["name"], "steps": 37})
    assert r.status_code == 200, r.text
    sel = (p.get("selective") or {}).get("enabled", True)
    assert r.json()["actions"] == planned(p["actions"], 37, p["noise"], p["family"], sel)
    assert r.json()["family"] == p["family"]
    r = api.post("/procache/preview", json={"text": "F C S C F", "steps": 5})
    assert r.status_code == 200 and r.json()["actions"] == "FCSCF"


@pytest.mark.parametrize("params, field", [
    ({"actions": "CCF"}, "actions"), ({"actions": "FXC"}, "actions"), ({"actions": "FC", "steps": "0"}, "steps"),
    ({"actions": "FC", "steps": "abc"}, "steps"), ({"actions": "FC", "steps": "100000"}, "steps"), ({}, "actions"),
    ({"preset": "../x"}, "preset"),
])
def test_preview_refusals_name_the_field(api, params, field):
    r = api.get("/procache/preview", params=params)
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert body["field"] == field and body["error"].startswith("ProCache:")
    assert body.get("fix"), body


def test_preview_typed_text_error_names_schedule_text(api):
    r = api.post("/procache/preview", json={"text": "CFF"})
    assert r.status_code == 400
    assert r.json()["field"] == "schedule_text" and "Fix:" in r.json()["error"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_save_refuses_bad_names(api, web_server, user_presets, name):
    root = Path(web_server.workdir)
    before = _tree(root)
    r = api.post("/procache/presets", json={"name": name, "actions": "FCCF"})
    assert r.status_code == 400, (name, r.text)
    body = r.json()
    assert body["field"] == "name" and "name" in body["error"]
    assert _tree(root) == before, f"{name!r} created files"
    assert not (root / "x.yaml").exists() and not (root.parent / "x.yaml").exists()


def test_save_refuses_broken_yaml_with_the_procache_message(api, user_presets):
    before = set(os.listdir(user_presets)) if user_presets.exists() else set()
    for text in ["schedule: [unclosed", "just a string", "version: 1\nschedule: CCF\n", "{}", "- a\n- b\n"]:
        r = api.post("/procache/presets", json={"name": "broken", "yaml": text})
        assert r.status_code == 400, (text, r.text)
        body = r.json()
        assert body["error"].startswith("ProCache: '"), body
        assert body.get("field"), body
        assert "Fix:" in body["error"] and body.get("fix"), body
    after = set(os.listdir(user_presets)) if user_presets.exists() else set()
    assert after == before


def test_save_accepts_a_body_of_many_chunks(api, user_presets):
    text = "# " + "padding " * 6000 + "\nversion: 1\nname: whatever\nactions: FCSC FCSC FC\n"
    assert 40_000 < len(text) < 60_000
    r = api.post("/procache/presets", json={"name": "chunky", "yaml": text})
    assert r.status_code == 201, r.text
    assert r.json()["summary"]["actions"] == "FCSCFCSCFC"


def test_save_refuses_big_bodies_and_non_json(api, user_presets):
    big = "# " + "x" * (70 * 1024) + "\nschedule: FCCF\n"
    r = api.post("/procache/presets", json={"name": "big", "yaml": big})
    assert r.status_code == 413 and "KiB" in r.json()["error"]
    r = api.post("/procache/presets", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = api.post("/procache/presets", json=["name", "x"])
    assert r.status_code == 400
    r = api.post("/procache/presets", json={"name": "noaction"})
    assert r.status_code == 400
    assert not (user_presets / "big.yaml").exists() and not (user_presets / "noaction.yaml").exists()


def test_save_refuses_shipped_names(api, listing, user_presets):
    name = _shipped(listing)[0]["name"]
    for n in (name, name.upper()):
        r = api.post("/procache/presets", json={"name": n, "actions": "FCCF", "overwrite": True})
        assert r.status_code == 409, r.text
        assert "shipped" in r.json()["error"]
    assert not (user_presets / f"{name}.yaml").exists()


def test_save_list_get_overwrite_round_trip(api, user_presets, listing):
    r = api.post("/procache/presets", json={"name": "route-test_1.a", "actions": "FCSCFCSCF", "family": "pixart",
                                            "selective": {"ratio": 0.2}})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "user/route-test_1.a"
    path = user_presets / "route-test_1.a.yaml"
    assert path.is_file()
    assert [p.name for p in user_presets.iterdir() if not p.name.startswith(".tmp")] .count(path.name) == 1
    items = {p["name"]: p for p in api.get("/procache/presets").json()["presets"]}
    mine = items["user/route-test_1.a"]
    assert mine["source"] == "user" and mine["actions"] == "FCSCFCSCF" and mine["family"] == "pixart"
    assert mine["selective"]["ratio"] == pytest.approx(0.2)
    got = api.get("/procache/presets/user/route-test_1.a").json()
    assert got["actions"] == "FCSCFCSCF" and got["source"] == "user" and got["yaml"] == path.read_text()

    r = api.post("/procache/presets", json={"name": "route-test_1.a", "actions": "FCCF"})
    assert r.status_code == 409 and "exists" in r.json()["error"]
    assert api.get("/procache/presets/user/route-test_1.a").json()["actions"] == "FCSCFCSCF"
    r = api.post("/procache/presets", json={"name": "user/route-test_1.a", "actions": "FCCF", "overwrite": True})
    assert r.status_code == 200 and r.json()["overwritten"] is True
    assert api.get("/procache/presets/user/route-test_1.a").json()["actions"] == "FCCF"


def test_save_yaml_of_a_shipped_preset_under_a_new_name(api, listing, user_presets):
    p = _shipped(listing)[0]
    text = api.get(f"/procache/presets/{p['name']}").json()["yaml"]
    r = api.post("/procache/presets", json={"name": "copy-of-shipped", "yaml": text})
    assert r.status_code == 201, r.text
    got = api.get("/procache/presets/user/copy-of-shipped").json()
    assert got["actions"] == p["actions"] and got["summary"]["family"] == p["family"]
    assert (user_presets / "copy-of-shipped.yaml").is_file()


def test_save_never_follows_a_link_out_of_the_folder(api, web_server, user_presets):
    user_presets.mkdir(parents=True, exist_ok=True)
    outside = Path(web_server.workdir) / "outside.yaml"
    outside.write_text("precious\n")
    link = user_presets / "evil.yaml"
    link.symlink_to(outside)
    try:
        r = api.post("/procache/presets", json={"name": "evil", "actions": "FCCF", "overwrite": True})
        assert r.status_code == 400, r.text
        assert outside.read_text() == "precious\n"
        # ... and is not read through either
        assert api.get("/procache/presets/user/evil").status_code == 404
        assert "user/evil" not in {p["name"] for p in api.get("/procache/presets").json()["presets"]}
    finally:
        link.unlink()
        outside.unlink()


def test_preview_follows_apply_settings(api):
    src = "FCCCFCCFCF"
    r = api.post("/procache/preview", json={"actions": src, "selective": {"enabled": True, "ratio": 0.3}})
    assert r.json()["actions"] == Schedule.from_string(src).with_selective(True).to_string()
    r = api.post("/procache/preview", json={"actions": "FCSCFCSF", "selective": {"enabled": False}})
    assert r.json()["actions"] == "FCCCFCCF" and r.json()["counts"]["selective"] == 0
    r = api.post("/procache/preview", json={"actions": "FCCCFCCF", "start_percent": 0.0, "end_percent": 0.5})
    assert r.json()["actions"] == "FCCCFFFF"
    r = api.post("/procache/preview", json={"actions": "FC", "start_percent": 0.9, "end_percent": 0.1})
    assert r.status_code == 400 and r.json()["field"] == "start_percent"
    r = api.post("/procache/preview", json={"actions": "FC", "selective": {"ratio": 7}})
    assert r.status_code == 400 and "ratio" in r.json()["field"]


def test_help_pages_are_served_where_the_frontend_looks(api):
    """The frontend fetches /extensions/<pack>/docs/<NodeId>/<locale>.md for custom nodes (pack from
    python_module); the English page documents every input."""
    info = api.get("/object_info").json()
    ours = {k: v for k, v in info.items() if str(v.get("python_module", "")).startswith("custom_nodes.ProCache")
            and not str(v.get("python_module")).startswith("custom_nodes.ProCacheTestNodes")}
    assert "ProCacheScheduleLoader" in ours
    for node_id, spec in ours.items():
        pack = spec["python_module"].split(".")[1].split("@")[0]
        r = api.get(f"/extensions/{pack}/docs/{node_id}/en.md")
        assert r.status_code == 200, node_id
        text = r.text
        assert text.startswith(f"# {spec['display_name']}"), node_id
        for section in ("required", "optional"):
            for inp in spec["input"].get(section, {}):
                assert f"**{inp}**" in text, f"{node_id}.md does not document input {inp}"


def test_extension_script_is_listed(api):
    exts = api.get("/extensions").json()
    assert any(e.endswith("/js/procache.js") for e in exts), exts
