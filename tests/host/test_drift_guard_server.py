"""Selective Compute Settings' drift guard through the REAL server on the trained digits Flux: Stats says it is
on and how many reused steps it turned full (within its budget), the guarded run repeats bit for bit, more
blocks were computed than without it, and a bad value is refused by name while the server keeps running."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import host_digits as hd  # noqa: E402

pytestmark = pytest.mark.host

UNIFORM = "FCCCCFCCCCFCCCCFCCCC"


def run(client, prefix: str, guard: float, budget: float = 0.1):
    from comfy_client import load_latent

    sel = {"enabled": False, "depth_fraction": 1.0, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 0.0,
           "w_output_norm": 0.0, "w_spatial": 0.0, "drift_guard": guard, "drift_budget": budget}
    p = hd.digits_prompt("flux", digits="0123456789", steps=len(UNIFORM), sampler="dpmpp_2m", scheduler="karras",
                         prefix=prefix, procache={"actions": UNIFORM, "selective": sel})
    entry = client.run(p, timeout=600)
    return load_latent(client.output_files(entry, "latents")[0]), hd.stats_text(entry) or ""


def blocks(text: str) -> float:
    return float(re.search(r"blocks computed ([\d.]+)% of full", text).group(1))


def test_drift_guard_reaches_the_run_and_repeats(comfy_server):
    off, off_text = run(comfy_server, "dg_off", 0.0)
    on, text = run(comfy_server, "dg_on", 1.5)
    again, _ = run(comfy_server, "dg_on2", 1.5)
    assert "drift guard" not in off_text, off_text
    m = re.search(r"drift guard x1\.5 \(at most (\d+)\): (\d+) extra full", text)
    assert m and int(m.group(1)) == 2 and 0 <= int(m.group(2)) <= 2, text
    assert blocks(text) > blocks(off_text)          # the probe (and any extra full step) is counted
    assert torch.equal(on, again)
    assert not torch.equal(on, off)


def test_bad_drift_guard_is_refused_by_name(comfy_server):
    from comfy_client import PromptError

    try:
        entry = comfy_server.run(hd.digits_prompt("flux", digits="0", steps=4, prefix="dg_bad", procache={
            "actions": "FCCC", "selective": {"enabled": False, "depth_fraction": 1.0, "ratio": 0.3, "w_staleness": 1.0,
                                             "w_input_change": 0.0, "w_output_norm": 0.0, "w_spatial": 0.0,
                                             "drift_guard": 0.5}}), timeout=300, raise_on_error=False)
        text = str(entry["status"])
    except PromptError as e:
        text = str(e)
    assert "drift_guard" in text, text[:600]
    ok, _ = run(comfy_server, "dg_after", 0.0)
    assert ok.shape[0] == 10
