"""Fuzzing every ProCache node input through the real server's POST /prompt (hypothesis).

Property, for every prompt: /prompt answers 200, or 400 whose node errors name the input at fault;
a queued prompt ends in success or in an execution error that is a ProCache error naming the field
(``ProCache: '<field>' ... Fix: ...``), never a bare Python exception, and never quoting an absolute
server path; the server answers the next request.

Most examples stop at ProCache Apply (ProCache Stats is the output node, fed an empty latent), so each
costs milliseconds; a few sample two steps of the tiny PixArt so the run-time path sees odd settings too.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from comfy_client import COMFY_DIR
from workflows import PIXART_ALPHA, pixart_prompt

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("PROCACHE_FUZZ_EXAMPLES", 25))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                phases=[Phase.explicit, Phase.generate, Phase.target])

any_json = st.recursive(st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=20),
                        lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=5), k, max_size=3),
                        max_leaves=6)
number = st.one_of(st.floats(-2.0, 2.0), st.floats(), st.integers(-10, 10), st.sampled_from([0.0, 1.0, 1e-12, 1e300]))
weight = st.one_of(st.floats(0.0, 100.0), st.floats(), st.sampled_from([0.0, 100.0, 1e9]))
schedule_text = st.one_of(
    st.just(""), st.just(""), st.text(alphabet="FCSfcsX ,|_-", max_size=40), st.text(max_size=40),
    st.sampled_from(["", "F", "FCSF", "CF", "version: 1\nname: x\nactions: FCSF\n", "version: 1\nname: x\n",
                     "actions: [F, 1]\nname: y\n", "F" * 5000, "a: &a [*a]", "[[[[[[[[[[", "\x00"]))
listed = st.sampled_from(["pixart-alpha-dpm20-paper", "user/fz-node"])
preset = st.one_of(listed, listed, listed, st.sampled_from(["user/missing", "", "../x"]), st.text(max_size=30))


def _server_paths(client) -> list[str]:
    work = Path(client.server.workdir)
    return [str(p) for p in {work, work.resolve(), ROOT, ROOT.resolve(), COMFY_DIR, COMFY_DIR.resolve()}]


def _apply_only_prompt(loader: dict, selective: dict | None, apply: dict) -> dict:
    p: dict[str, dict] = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": PIXART_ALPHA, "weight_dtype": "default"}},
        "schedule": {"class_type": "ProCacheScheduleLoader", "inputs": loader},
        "apply": {"class_type": "ProCacheApply", "inputs": {"model": ["unet", 0], "schedule": ["schedule", 0], **apply}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "stats": {"class_type": "ProCacheStats", "inputs": {"samples": ["latent", 0], "model": ["apply", 0]}},
    }
    if selective is not None:
        p["selective"] = {"class_type": "ProCacheSelectiveSettings", "inputs": selective}
        p["apply"]["inputs"]["selective"] = ["selective", 0]
    return p


def check_outcome(client, prompt: dict, what: object, timeout: float = 600) -> str:
    """Queue ``prompt`` and assert the property; returns "refused", "success" or "error"."""
    secrets = _server_paths(client)
    # json.dumps writes NaN/Infinity as a browser's JSON.parse would refuse, but Python clients send them
    r = client.post("/prompt", data=json.dumps({"prompt": prompt, "client_id": client.client_id}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), (what, r.status_code, r.text[:500])
    assert "Traceback" not in r.text, (what, r.text[:500])
    if r.status_code == 400:
        body = r.json()
        errs = [e for ne in (body.get("node_errors") or {}).values() for e in ne.get("errors", [])]
        assert errs or body.get("error"), (what, body)
        for e in errs:  # the host's validation names the input at fault
            assert (e.get("extra_info") or {}).get("input_name"), (what, e)
        assert client.get("/system_stats").ok
        return "refused"
    entry = client.wait(r.json()["prompt_id"], timeout=timeout, raise_on_error=False)
    status = entry["status"]["status_str"]
    if status == "error":
        errs = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
        assert errs, (what, entry["status"])
        e = errs[0]
        msg = e.get("exception_message", "")
        assert msg.startswith("ProCache: '") and "Fix:" in msg, (what, e.get("exception_type"), msg[:500])
        for s in secrets:
            assert s not in msg, f"{what}: error quotes a server path: {msg[:300]}"
    else:
        assert status == "success", (what, entry["status"])
    assert client.get("/system_stats").ok
    return status


@pytest.fixture(scope="module")
def user_fz(comfy_server):
    folder = Path(comfy_server.server.workdir) / "user" / "procache_presets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "fz-node.yaml"


@FUZZ
@given(preset=preset, text=schedule_text, file=st.one_of(st.none(), st.binary(max_size=60),
                                                         schedule_text.map(lambda t: t.encode("utf-8", "replace"))),
       enabled=st.booleans(), depth=number, ratio=number, weights=st.one_of(st.tuples(*[st.floats(0.0, 100.0)] * 4), st.tuples(*[st.floats(0.0, 100.0)] * 4),
                         st.tuples(weight, weight, weight, weight)),
       use_sel=st.booleans(), start=st.floats(0.0, 1.0), end=st.floats(0.0, 1.0),
       corrupt=st.one_of(st.none(), st.tuples(st.sampled_from(["schedule.preset", "schedule.schedule_text",
                                                               "selective.enabled", "selective.ratio",
                                                               "selective.w_spatial", "apply.start_percent",
                                                               "apply.end_percent"]), any_json)))
def test_fuzz_node_inputs(comfy_server, user_fz, preset, text, file, enabled, depth, ratio, weights, use_sel,
                          start, end, corrupt):
    """Values of the right type (the node checks them when it runs); now and then one of any JSON type."""
    if file is None:
        user_fz.unlink(missing_ok=True)
    else:
        user_fz.write_bytes(file)
    sel = None
    if use_sel:
        sel = {"enabled": enabled, "depth_fraction": depth, "ratio": ratio,
               **dict(zip(("w_staleness", "w_input_change", "w_output_norm", "w_spatial"), weights))}
    prompt = _apply_only_prompt({"preset": preset, "schedule_text": text}, sel,
                                {"start_percent": start, "end_percent": end})
    if corrupt is not None:
        node, inp = corrupt[0].split(".")
        if node in prompt:
            prompt[node]["inputs"][inp] = corrupt[1]
    event(check_outcome(comfy_server, prompt, (preset, text, file, sel, start, end, corrupt)))


@settings(FUZZ, max_examples=max(2, EXAMPLES // 12))
@given(text=st.sampled_from(["FS", "FC", "F C", "ff", "FS" * 20, "FSSS"]),
       depth=st.sampled_from([0.0, 1.0, 0.5, 1e-9]), ratio=st.sampled_from([0.0, 1.0, 1e-9, 0.5]),
       start=st.sampled_from([0.0, 0.5, 0.999]), seed=st.integers(0, 3))
def test_fuzz_node_inputs_while_sampling(comfy_server, text, depth, ratio, start, seed):
    """Extreme but valid settings through a real 2-step sampling run: success, finite latent."""
    sel = {"enabled": True, "depth_fraction": depth, "ratio": ratio, "w_staleness": 1.0, "w_input_change": 1.0,
           "w_output_norm": 0.25, "w_spatial": 0.5}
    p = pixart_prompt(steps=2, seed=seed, prefix=f"fz{time.monotonic_ns()}",
                      procache={"actions": text, "selective": sel, "apply": {"start_percent": start}})
    assert check_outcome(comfy_server, p, (text, depth, ratio, start)) == "success"


def test_node_error_for_a_binary_user_preset_names_it_not_its_path(comfy_server, user_fz):
    user_fz.write_bytes(b"\xff\xfe\x00bin")
    try:
        p = _apply_only_prompt({"preset": "user/fz-node", "schedule_text": ""}, None, {})
        r = comfy_server.post("/prompt", json={"prompt": p, "client_id": comfy_server.client_id})
        if r.status_code == 400:  # the host listed options when it started: the preset is not offered
            pytest.skip("the host validates combos against its start-up listing")
        entry = comfy_server.wait(r.json()["prompt_id"], raise_on_error=False)
        msg = [d for k, d in entry["status"]["messages"] if k == "execution_error"][0]["exception_message"]
        assert "user/fz-node" in msg and "UTF-8" in msg, msg
        assert not any(s in msg for s in _server_paths(comfy_server)), msg
    finally:
        user_fz.unlink(missing_ok=True)


def test_finite_numbers_only(comfy_server):
    """NaN and infinities through JSON (Python's json writes them) are refused, never sampled with."""
    for bad in (math.nan, math.inf, -math.inf):
        p = _apply_only_prompt({"preset": "pixart-alpha-dpm20-paper", "schedule_text": "FCSF"},
                               {"enabled": True, "depth_fraction": bad, "ratio": 0.3, "w_staleness": 1.0,
                                "w_input_change": 1.0, "w_output_norm": 0.25, "w_spatial": 0.5}, {})
        assert check_outcome(comfy_server, p, bad) in ("refused", "error")
