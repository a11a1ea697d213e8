"""scripts/accelerate_workflow.py: ProCache Apply before every sampler's MODEL input, UI and API format.

On every local template of the pinned comfyui-workflow-templates-json (tests/official_templates.py): the
script inserts one ProCache Apply per connected sampling input (subgraphs included), changes nothing
else (taking the inserted nodes out again gives back the template's links), and a second run inserts
nothing. Through the real server: an API prompt accelerated by the script (checked against that
server's /object_info) runs, ProCache reports its run in the log, and the result differs from the plain
run (cached steps). Bad input (a broken file, no sampler, a node type the server lacks) exits 1 with a
message naming the problem and leaves the file as it was. The browser test
(tests/web/test_accelerate_command.py) converts the templates to API prompts in the front end and
validates them on the server.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import official_templates as ot  # noqa: E402
from procache_core.accelerate import (APPLY, AccelerateError, _graphs, _link_fields, accelerate_api,  # noqa: E402
                                      accelerate_ui, plan_ui)
from workflows import pixart_prompt  # noqa: E402

SCRIPT = ROOT / "scripts" / "accelerate_workflow.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def links_of(g: dict) -> dict:
    return {f["id"]: (f["origin_id"], f["origin_slot"], f["target_id"], f["target_slot"])
            for f in map(_link_fields, g.get("links") or []) if f}


def undo_insertions(wf: dict) -> dict:
    """The workflow with every ProCache Apply taken out and its input link sent on to its target again."""
    wf = json.loads(json.dumps(wf))
    for _gid, g in _graphs(wf):
        applies = {n["id"]: n for n in g["nodes"] if n["type"] == APPLY}
        if not applies:
            continue
        links = links_of(g)
        for aid, a in applies.items():
            in_link = a["inputs"][0]["link"]
            out_link = a["outputs"][0]["links"][0]
            _o, _os, target, tslot = links[out_link]
            for raw in g["links"]:
                f = _link_fields(raw)
                if f["id"] == in_link:
                    if isinstance(raw, list):
                        raw[3], raw[4] = target, tslot
                    else:
                        raw["target_id"], raw["target_slot"] = target, tslot
            g["links"] = [raw for raw in g["links"] if _link_fields(raw)["id"] != out_link]
            sampler = next(n for n in g["nodes"] if n["id"] == target)
            sampler["inputs"][tslot]["link"] = in_link
        g["nodes"] = [n for n in g["nodes"] if n["type"] != APPLY]
    return wf


def structure(wf: dict) -> dict:
    return {gid: (sorted((str(n["id"]), n["type"]) for n in g["nodes"]), sorted(map(str, links_of(g).items())),
                  sorted(str((n["id"], [i.get("link") for i in n.get("inputs") or []])) for n in g["nodes"]))
            for gid, g in _graphs(wf)}


def test_every_local_template(tmp_path):
    """All local templates: counts, subgraphs, nothing else touched, idempotent; a few through the CLI."""
    names = ot.local_templates()
    tried, supported, inserted, in_subgraphs, families = 0, 0, 0, 0, {}
    for name in names:
        wf = ot.load(name)
        tried += 1
        try:
            out, plan = accelerate_ui(wf)
        except AccelerateError as e:
            assert "no sampler" in str(e), (name, e)
            continue
        supported += 1
        families[ot.family(wf)] = families.get(ot.family(wf), 0) + 1
        connected = sum(1 for s in plan.skipped if s[3] != "already fed by ProCache Apply")
        assert len(plan.insert) + connected + sum(1 for s in plan.skipped if s[3].startswith("already")) \
            == len(plan.insert) + len(plan.skipped)
        assert plan.insert, (name, plan.skipped)
        inserted += len(plan.insert)
        in_subgraphs += sum(1 for i in plan.insert if i.graph != "root")
        # every inserted node sits between the old origin and the sampler input
        graphs = dict(_graphs(out))
        for ins in plan.insert:
            g = graphs[ins.graph]
            links = links_of(g)
            sampler = next(n for n in g["nodes"] if n["id"] == ins.node)
            o, _os, t, ts = links[sampler["inputs"][ins.slot]["link"]]
            assert (t, ts) == (ins.node, ins.slot)
            apply = next(n for n in g["nodes"] if n["id"] == o)
            assert apply["type"] == APPLY and links[apply["inputs"][0]["link"]][2:] == (apply["id"], 0)
        assert structure(undo_insertions(out)) == structure(wf), name
        again, plan2 = accelerate_ui(out)
        assert not plan2.insert and again == out, name
        assert wf == ot.load(name)  # the input object was not modified
    assert supported >= 200 and in_subgraphs >= 100, (supported, in_subgraphs)
    (tmp_path / "counts.json").write_text(json.dumps({"tried": tried, "supported": supported,
                                                      "inserted": inserted, "families": families}))
    # the CLI on three real ones, one of them with nested subgraphs if the package has any
    for name in ["image_z_image_turbo", "image_flux2", names[0]]:
        src = ot.templates_dir() / f"{name}.json"
        dst = tmp_path / f"{name}.out.json"
        r = run_script(src, "-o", dst)
        if name == names[0] and r.returncode == 1:
            continue
        assert r.returncode == 0, r.stderr
        assert "inserted" in r.stderr
        assert json.loads(dst.read_text()) == accelerate_ui(ot.load(name))[0]


def test_cli_in_place_stdout_and_idempotent(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text((ot.templates_dir() / "image_z_image_turbo.json").read_text())
    r = run_script(wf)
    assert r.returncode == 0 and json.loads(r.stdout) == accelerate_ui(ot.load("image_z_image_turbo"))[0]
    r = run_script(wf, "--in-place")
    assert r.returncode == 0 and "inserted 1 ProCache Apply (subgraph" in r.stderr, r.stderr
    first = wf.read_text()
    r = run_script(wf, "--in-place")
    assert r.returncode == 0 and "inserted 0" in r.stderr and "already fed by ProCache Apply" in r.stderr
    assert json.loads(wf.read_text()) == json.loads(first)


def _bad(tmp_path, text: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    p = tmp_path / "bad.json"
    p.write_text(text)
    out = tmp_path / "out.json"
    r = run_script(p, "-o", out, *extra)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert p.read_text() == text and not out.exists()
    return r, p


def test_bad_input_exit_1_and_file_untouched(tmp_path):
    r, _ = _bad(tmp_path, '{"nodes": [ {"id": 1, ')
    assert "not valid JSON" in r.stderr and "bad.json" in r.stderr
    no_sampler = next(n for n in ot.local_templates() if n.startswith("utility_")
                      and not plan_ok(ot.load(n)))
    r, _ = _bad(tmp_path, json.dumps(ot.load(no_sampler)))
    assert "no sampler" in r.stderr
    r, _ = _bad(tmp_path, json.dumps({"nodes": [{"id": 1}]}))
    assert "has no 'id' or 'type'" in r.stderr
    r, _ = _bad(tmp_path, json.dumps([1, 2, 3]))
    assert "not a ComfyUI workflow" in r.stderr
    # in place: the file stays as it was
    p = tmp_path / "inplace.json"
    p.write_text("{broken")
    r = run_script(p, "--in-place")
    assert r.returncode == 1 and p.read_text() == "{broken"


def plan_ok(wf: dict) -> bool:
    try:
        plan_ui(wf)
        return True
    except AccelerateError:
        return False


@pytest.mark.host
def test_api_prompt_through_real_server(comfy_server, tmp_path):
    """An API prompt accelerated by the script runs on the real server with ProCache in effect."""
    base = comfy_server.base_url
    plain = pixart_prompt(steps=8, width=320, height=320, prefix="acc_plain")
    src = tmp_path / "plain.api.json"
    src.write_text(json.dumps(plain))
    dst = tmp_path / "fast.api.json"
    r = run_script(src, "-o", dst, "--server", base)
    assert r.returncode == 0, r.stderr
    fast = json.loads(dst.read_text())
    assert fast == accelerate_api(plain, comfy_server.object_info())[0]
    applies = [k for k, v in fast.items() if v["class_type"] == APPLY]
    assert len(applies) == 1 and fast["sampler"]["inputs"]["model"] == [applies[0], 0]
    assert fast[applies[0]]["inputs"]["model"] == ["unet", 0]
    fast["save"]["inputs"]["filename_prefix"] = "acc_fast"
    log_before = len(comfy_server.server.log())
    comfy_server.run(plain)
    from workflows import saved_latent
    a = saved_latent(comfy_server, comfy_server.run(fast))
    assert "ProCache [pixart] run:" in comfy_server.server.log()[log_before:]
    b_entry = comfy_server.run({**plain, "save": {**plain["save"], "inputs": {**plain["save"]["inputs"],
                                                                                "filename_prefix": "acc_plain2"}}})
    b = saved_latent(comfy_server, b_entry)
    assert a.shape == b.shape and not (a == b).all()  # cached steps changed the result
    # a node type that server lacks: named, exit 1, nothing written
    bad = dict(plain)
    bad["save"] = {"class_type": "ProCacheNoSuchNode", "inputs": {"samples": ["sampler", 0]}}
    src.write_text(json.dumps(bad))
    out = tmp_path / "none.json"
    r = run_script(src, "-o", out, "--server", base)
    assert r.returncode == 1 and "ProCacheNoSuchNode" in r.stderr and not out.exists()
    # the same from a saved object_info, on a UI-format template
    info = tmp_path / "object_info.json"
    info.write_text(json.dumps(comfy_server.object_info()))
    wf = ot.load("image_z_image_turbo")
    text = json.dumps(wf).replace('"type": "SaveImage"', '"type": "ProCacheNoSuchSaveNode"')
    r, _ = _bad(tmp_path, text, "--object-info", info)
    assert "ProCacheNoSuchSaveNode" in r.stderr and "unknown node type" in r.stderr
